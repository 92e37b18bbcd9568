"""Training data: next-token windows read from a prepared corpus (memory-mapped token files).

`--data.path` names the corpus:
- a prepared corpus directory (`bench data prepare ... --out DIR`; see `cslaws.bench.prepare`), read as is;
- a built-in corpus (`english`, the default: Shakespeare and the King James Bible; `shakespeare`; `kjv`;
  see `cslaws.bench.corpora`), or what `datasets.load_dataset` takes (a loader such as `text`, `json`,
  `parquet` with `--data.data_files`, or a local data set directory): prepared on first use into the cache
  (`$CSLAWS_CACHE`, default ~/.cache/cslaws) and read from there by every later run.

The validation documents are chosen when the corpus is prepared, by document, before tokenizing; a run scores
`val_sequences` windows of seq_len + 1 tokens spread evenly over the whole validation file, whatever its
batch_size. The file keeps the corpus's order, so for a corpus of several sources in turn (`english`:
Shakespeare, then the Bible) the first windows would be the first source's alone; spread, they sample each
source in proportion to its validation tokens. Under DDP each window is scored once, by one rank (`ExactShards`).
A window is seq_len + 1 tokens (inputs and their next-token targets) starting at a multiple of seq_len, so
that one pass over the windows trains on each token of the file once (the last token of a window is the
first of the next, as a target in one and an input in the other). Training windows are visited in an order drawn by `seed`
(an affine permutation i -> (a i + b) mod n, so that a run's start-up reads nothing of the corpus and a
longer run sees the shorter run's windows first); a budget that needs more than `max_epochs` passes is
refused before training.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

from cslaws.bench.prepare import (
    INDEX, Source, TokenizerSpec, cached_prepare, check_num_proc, corpora, load_tokenizer, read_index,
    tokenizer_fingerprint,
)
from cslaws.errors import BenchError

DEFAULT_CORPUS = "english"
DEFAULT_VAL_FRACTION = 0.02


def is_prepared(path: str) -> bool:
    """Whether `path` is (or was meant to be) a prepared corpus: a directory with our index or token files,
    or the hidden partial directory of a prepare in progress."""
    p = Path(path)
    return p.is_dir() and (any((p / f).exists() for f in (INDEX, "train.bin", "val.bin")) or ".partial-" in p.name)


def window_order(n: int, seed: int) -> tuple[int, int]:
    """(a, b) of the permutation i -> (a i + b) mod n of the training windows: a coprime to n, drawn by `seed`."""
    rng = np.random.default_rng(seed)
    if n == 1:
        return 1, 0
    while math.gcd(a := int(rng.integers(1, n)), n) != 1:
        pass
    return a, int(rng.integers(n))


class TrainWindows(Dataset):
    """`length` training windows of seq_len + 1 tokens, as int64 tensors, in the seeded affine order; past
    the end of the file the order repeats (further passes, allowed by `max_epochs`)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, length: int, seed: int) -> None:
        self.tokens, self.seq_len, self.length = tokens, seq_len, length
        self.n = count_windows(len(tokens), seq_len)
        self.a, self.b = window_order(self.n, seed)

    def __len__(self) -> int:
        return self.length

    def window(self, i: int) -> int:
        """Which window of the file the i-th training sequence is."""
        return (self.a * (i % self.n) + self.b) % self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return window(self.tokens, self.window(i), self.seq_len)


#: Which validation windows a run scores: part of the validation set's key (`val_set`), so that runs scored on
#: the first windows of the file (the rule before 2026-12-03) are never compared with runs scored on these.
VAL_WINDOWS = "spread"


class ValWindows(Dataset):
    """`length` windows of seq_len + 1 tokens of the validation file, evenly spread over it: the i-th is
    window floor(i n / length) of the file's n (all n when length = n)."""

    def __init__(self, tokens: np.ndarray, seq_len: int, length: int) -> None:
        self.tokens, self.seq_len, self.length = tokens, seq_len, length
        self.n = count_windows(len(tokens), seq_len)

    def __len__(self) -> int:
        return self.length

    def window(self, i: int) -> int:
        """Which window of the file the i-th validation sequence is."""
        return i * self.n // self.length

    def __getitem__(self, i: int) -> torch.Tensor:
        return window(self.tokens, self.window(i), self.seq_len)


def count_windows(n_tokens: int, seq_len: int) -> int:
    """Windows of seq_len + 1 tokens at strides of seq_len in `n_tokens` tokens."""
    return max(0, (n_tokens - 1) // seq_len)


def window(tokens: np.ndarray, i: int, seq_len: int) -> torch.Tensor:
    """The i-th window: tokens i seq_len .. (i + 1) seq_len, inclusive, as int64."""
    return torch.from_numpy(tokens[i * seq_len: (i + 1) * seq_len + 1].astype(np.int64))


class ExactShards(DistributedSampler):
    """Rank r of w scores windows r, r + w, r + 2w, ...: each validation window once over all ranks. Lightning
    would put torch's DistributedSampler here, which evens the ranks out by scoring some windows twice; the
    loss is a token-weighted mean synced over ranks (`MeanMetric`), so unequal shares need no evening out."""

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class TextDataModule(L.LightningDataModule):
    """Packed next-token windows of a prepared corpus.

    Args:
        path: a prepared corpus directory; or a built-in corpus (`english`, `shakespeare`, `kjv`); or what
            `datasets.load_dataset` takes (a loader name such as `text`, `json`, `parquet` with `data_files`,
            or a local data set directory), prepared into the cache on first use.
        name: the data set's configuration name, if it has several.
        split: which split of the source to read.
        text_column: the column that holds the text.
        data_files: local files for a loader such as `text`.
        tokenizer: a `tokenizer.json` (of the `tokenizers` library) to tokenize with; by default a byte-level
            BPE of `vocab_size` is trained on the training documents. With a prepared corpus it must be the
            tokenizer the corpus was prepared with (it is checked), and may be left out.
        vocab_size: the vocabulary; must equal the tokenizer's (a file's or a prepared corpus's).
        seq_len: tokens per training sequence.
        batch_size: sequences per step on each device.
        val_sequences: validation windows scored (spread evenly over the validation documents).
        val_fraction: fraction of documents held out for validation when preparing (default 0.02); a
            prepared corpus keeps its own, and giving another is an error.
        split_seed: draws the validation documents when preparing (default 0); same rule.
        seed: order of the training windows.
        num_workers: DataLoader workers.
        num_proc: tokenizing processes when preparing (default: all cores).
        max_epochs: the most passes over the training windows a run may make; a budget that needs more is
            refused before training (repeating data changes the loss-vs-D law).
    """

    def __init__(
        self,
        path: str = DEFAULT_CORPUS,
        name: str | None = None,
        split: str = "train",
        text_column: str = "text",
        data_files: list[str] | None = None,
        tokenizer: str | None = None,
        vocab_size: int = 2048,
        seq_len: int = 128,
        batch_size: int = 32,
        val_sequences: int = 256,
        val_fraction: float | None = None,
        split_seed: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        num_proc: int | None = None,
        max_epochs: float = 1.0,
    ) -> None:
        super().__init__()
        for arg, value, low in (("seq_len", seq_len, 1), ("batch_size", batch_size, 1), ("val_sequences", val_sequences, 1),
                                ("num_workers", num_workers, 0)):
            if value < low:
                raise BenchError(f"{arg}={value} is not allowed; it must be at least {low}")
        if not max_epochs > 0:
            raise BenchError(f"max_epochs={max_epochs} is not allowed; it is the most passes over the training split, > 0")
        self.vocab_size, self.seq_len, self.batch_size = vocab_size, seq_len, batch_size
        self.val_sequences, self.seed, self.num_workers = val_sequences, seed, num_workers
        check_num_proc(num_proc, "data.num_proc", here=False)  # the cores are checked where it prepares
        self.num_proc, self.max_epochs = num_proc, max_epochs
        self.tokenizer_spec = TokenizerSpec(tokenizer, vocab_size)
        if is_prepared(path):
            self.source, self.corpus_dir = None, Path(path)
            self.check_prepared(read_index(self.corpus_dir), tokenizer, val_fraction, split_seed)
        else:
            self.source = Source(path, name, split, text_column, tuple(data_files or ()))
            self.source.check()
            self.tokenizer_spec.check()
            self.corpus_dir = None
        self.val_fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        self.split_seed = 0 if split_seed is None else split_seed
        self.index: dict | None = None
        self.train_tokens: np.ndarray | None = None
        self.val_tokens: np.ndarray | None = None
        self.provenance: dict[str, str] = {}
        self.entropy = math.nan
        self.train_sequences: int | None = None

    def check_prepared(self, index: dict, tokenizer: str | None, val_fraction: float | None, split_seed: int | None) -> None:
        """A prepared corpus fits the run's arguments: same tokenizer, vocabulary and split, or an error."""
        where = str(self.corpus_dir)
        if tokenizer is not None:
            if not Path(tokenizer).is_file():
                raise BenchError(f"tokenizer file {tokenizer!r} does not exist; give a tokenizer.json of the `tokenizers` library")
            if tokenizer_fingerprint(load_tokenizer(tokenizer)) != index["tokenizer_fingerprint"]:
                raise BenchError(f"prepared corpus {where!r} was tokenized with another tokenizer ({index['tokenizer']}) than "
                                 f"{tokenizer!r}; leave --data.tokenizer out to use the corpus's, or prepare the corpus with this one")
        if self.vocab_size != index["vocab_size"]:
            raise BenchError(f"vocab_size={self.vocab_size} does not match prepared corpus {where!r}, whose vocabulary is "
                             f"{index['vocab_size']} ({index['tokenizer']}); give --data.vocab_size {index['vocab_size']}")
        split = index["split"]
        for arg, value, kept in (("val_fraction", val_fraction, split["val_fraction"]), ("split_seed", split_seed, split["seed"])):
            if value is not None and value != kept:
                raise BenchError(f"{arg}={value} is not allowed with prepared corpus {where!r}, whose split was made with "
                                 f"{arg}={kept}; leave it out, or prepare the corpus again with --{arg.replace('_', '-')} {value}")

    @property
    def tokens_per_batch(self) -> int:
        return self.batch_size * self.seq_len

    def prepared_dir(self) -> Path:
        """The prepared corpus: the one named, or the cache's copy of the source (prepared now if missing)."""
        if self.corpus_dir is not None:
            return self.corpus_dir
        return cached_prepare(self.source, self.tokenizer_spec, self.val_fraction, self.split_seed, self.num_proc)

    def prepare_data(self) -> None:
        self.prepared_dir()

    def setup(self, stage: str | None = None) -> None:
        if self.index is not None:
            return
        where = self.prepared_dir()
        index = read_index(where)
        dtype = np.dtype(index["dtype"])
        self.train_tokens = np.memmap(where / "train.bin", dtype=dtype, mode="r")
        self.val_tokens = np.memmap(where / "val.bin", dtype=dtype, mode="r")
        if count_windows(len(self.val_tokens), self.seq_len) < self.val_sequences:
            raise BenchError(f"the validation documents of {str(where)!r} hold {len(self.val_tokens):,} tokens, "
                             f"{count_windows(len(self.val_tokens), self.seq_len)} windows of seq_len={self.seq_len}; "
                             f"val_sequences={self.val_sequences} "
                             "needs more: lower --data.val_sequences, or prepare with a larger --val-fraction")
        if self.train_windows < 1:
            raise BenchError(f"the training documents of {str(where)!r} hold {len(self.train_tokens)} tokens, "
                             f"not one window of seq_len + 1 = {self.seq_len + 1}")
        self.index = index
        self.entropy = float(index["train_unigram_entropy"])
        val_set = json.dumps([index["corpus_fingerprint"], index["split"]["val_fingerprint"], index["tokenizer_fingerprint"],
                              self.seq_len, self.val_sequences, VAL_WINDOWS])
        self.provenance = {
            "dataset": f"{index['source']}@{index['corpus_fingerprint']}/split-{index['split']['val_fingerprint']}",
            "tokenizer": f"{index['tokenizer']}@{index['tokenizer_fingerprint']}",
            "val_set": hashlib.sha256(val_set.encode()).hexdigest()[:16],
        }

    @property
    def train_windows(self) -> int:
        """Windows of seq_len + 1 tokens at strides of seq_len in the training file: one pass."""
        return count_windows(len(self.train_tokens), self.seq_len)

    def epochs_for(self, sequences: int) -> float:
        """Passes over the training windows that `sequences` windows make."""
        return sequences / self.train_windows

    def set_train_sequences(self, n: int) -> None:
        """Size the training epoch to the run's budget: `n` sequences over all devices; refused when that needs
        more than `max_epochs` passes over the training split."""
        if self.index is None:
            raise RuntimeError("set_train_sequences needs the data set up first (TextDataModule.setup)")
        self.check_passes(n)
        self.train_sequences = n

    def check_passes(self, n: int) -> None:
        """Refuse a budget of `n` sequences that needs more than `max_epochs` passes over the training split."""
        passes = self.epochs_for(n)
        if passes > self.max_epochs:
            raise BenchError(
                f"the token budget needs {passes:.2f} passes over the training split of {self.index['source']!r} "
                f"({len(self.train_tokens):,} training tokens, {self.train_windows:,} windows of seq_len={self.seq_len}); "
                f"the budget is {n:,} sequences = {n * self.seq_len:,} tokens, and max_epochs={self.max_epochs:g}. "
                "Lower the budget (--model.tokens or --model.tokens_per_param) or the model size, use a larger corpus "
                f"(built in: {', '.join(corpora.BUILTINS)}; or `bench data prepare`), or allow repetition with "
                f"--data.max_epochs {math.ceil(passes * 100) / 100:g}"
            )

    def train_dataloader(self) -> StatefulDataLoader:
        # Our own sampler, in the fixed order and interleaved across ranks: Lightning's substitute would
        # reshuffle, and then 1-process and multi-process runs would not see the same global batches.
        # A StatefulDataLoader, because Lightning restores the position inside an epoch only for loaders
        # that checkpoint their state: a resumed run must continue with the next batch, not restart the epoch.
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        length = self.train_windows if self.train_sequences is None else self.train_sequences
        data = TrainWindows(self.train_tokens, self.seq_len, length, self.seed)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=False, drop_last=True)
        return StatefulDataLoader(data, batch_size=self.batch_size, sampler=sampler, drop_last=True, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        world, rank = (self.trainer.world_size, self.trainer.global_rank) if self.trainer else (1, 0)
        data = ValWindows(self.val_tokens, self.seq_len, self.val_sequences)
        return DataLoader(data, batch_size=self.batch_size, sampler=ExactShards(data, num_replicas=world, rank=rank),
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()
