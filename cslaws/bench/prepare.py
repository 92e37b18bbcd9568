"""`bench data prepare`: a corpus once into memory-mapped token files, read by every run and every rank.

    bench data prepare english --out corpora/english                     # a built-in corpus
    bench data prepare text --data-files 'a.txt,b.txt' --out corpora/ab  # any `datasets` loader
    bench data prepare json --data-files 'c4/*.json.gz' --streaming --tokenizer gpt2/tokenizer.json \
        --num-proc 16 --out corpora/c4
    bench fit --data.path corpora/c4 --data.tokenizer gpt2/tokenizer.json --data.vocab_size 50257

A prepared corpus is a directory (nanoGPT-style):
- `train.bin`, `val.bin`: the token ids of the training and validation documents, each document followed
  by an end-of-text token, as raw uint16 (the vocabulary fits) or uint32;
- `tokenizer.json`: the tokenizer (`tokenizers` library) the ids are in;
- `index.json`, written last: token counts, dtype, tokenizer and its fingerprint, corpus fingerprint, the
  split (its rule, seed, fraction and the validation documents' row numbers) and the training tokens' unigram entropy.

Why this way:
- The validation split is chosen per document from a hash of the split seed and the document's text, before
  anything is tokenized: the same documents for every run, whatever its seq_len or batch_size; copies of one
  text fall on the same side, so no validation document is also trained on (`english` repeats stage directions
  such as "_Exeunt_" hundreds of times: split by row, 61 of its 799 validation documents had a copy in
  training); and the tokenizer is trained on a bounded sample of the training documents only.
- Documents are encoded by `wordcache.encoder`: a cache of words' ids for byte-level BPE tokenizers (exact,
  about 5-6x faster than the library on one core), the `tokenizers` library for any other. The ids travel as
  raw bytes of the output dtype, joined per batch: no Python int per token.
- Memory is bounded whatever the corpus size: documents stream from the `datasets` source (Arrow files are
  memory-mapped; `--streaming` never materialises the source) in batches of a few MB, at most two batches per
  worker in flight, and the ids are appended to the output files as they come back, in source order.
- Writes are atomic: everything goes to a hidden `.NAME.partial-PID` directory beside the output, is
  fsynced, and the directory is renamed into place with `index.json` inside; a killed prepare leaves no
  directory that looks prepared.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cslaws.bench import corpora
from cslaws.bench.cli import file_in_the_way
from cslaws.bench.wordcache import encoder
from cslaws.console import quiet_logs
from cslaws.errors import BenchError, BenchParser

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

INDEX = "index.json"
FORMAT_VERSION = 1
EOT = "<|endoftext|>"
# End-of-text tokens of common pretrained tokenizers (GPT-2, Llama 3, Llama 2 / Mistral, Gemma), in that order.
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>")
BATCH_BYTES = 4 << 20
# glibc's mallopt parameter for the size from which malloc maps memory of its own (and unmaps it when freed)
M_MMAP_THRESHOLD = -3


#: The largest BPE vocabulary trained here: 4x the largest in use (256k), and an allocation the trainer survives.
MAX_VOCAB = 2**20


def cache_root() -> Path:
    return Path(os.environ.get("CSLAWS_CACHE", Path.home() / ".cache" / "cslaws"))


#: How `is_validation` draws the documents: part of the cache key and of the index, so that a corpus split by
#: an older rule (by row number, before 2026-12-03) is neither reused from the cache nor mistaken for this one.
SPLIT_RULE = "text"


def quiet_loaders() -> AbstractContextManager[None]:
    """Quiet a `datasets` loader's own log of a file it cannot parse ("Failed to load JSON from file ..."),
    which `Source.unreadable` says once, and a dataset card's complaint about a local README.md without a card's
    metadata block, which is no fault. The loaders' loggers only, so the library's own warnings still show."""
    return quiet_logs("datasets.packaged_modules", "huggingface_hub.repocard", level=logging.CRITICAL)


def is_validation(text: str, split_seed: int, val_fraction: float) -> bool:
    """Whether a document is a validation document: a hash of (seed, its text) below the fraction.

    Per document and by content, so it is the same whatever the batching, the worker count, the corpus length or
    the document's position, and every copy of a text is on the same side."""
    h = hashlib.blake2b(f"{split_seed}:".encode(), digest_size=8)
    h.update(text.encode())
    return int.from_bytes(h.digest(), "little") < val_fraction * 2**64


@dataclass(frozen=True)
class Source:
    """What to read: a built-in corpus name, or what `datasets.load_dataset` takes (a loader such as `text`,
    `json`, `parquet` with `data_files`, or a local data set directory), with its split and text column."""

    path: str = "english"
    name: str | None = None
    split: str = "train"
    text_column: str = "text"
    data_files: tuple[str, ...] = ()
    streaming: bool = False

    @property
    def builtin(self) -> bool:
        return self.path in corpora.BUILTINS

    @property
    def label(self) -> str:
        parts = [self.path, self.name, None if self.builtin else self.split, *self.data_files]
        return ":".join(p for p in parts if p)

    def check(self) -> None:
        """Missing files and paths, sources `datasets` cannot read, options that would be ignored: before any work."""
        import glob

        for f in self.data_files:
            if not (Path(f).exists() or glob.glob(f)):
                raise BenchError(f"data file {f!r} does not exist; give existing files (globs allowed) to --data_files")
            if Path(f).is_dir():  # a loader reads files: `datasets` failed on it with a traceback
                raise BenchError(f"data file {f!r} is a folder; give its files to --data_files, e.g. '{f.rstrip('/')}/*.txt'")
        if self.builtin:
            if self.data_files or self.name or self.split != "train" or self.text_column != "text":
                raise BenchError(f"{self.path!r} is a built-in corpus: it takes no data files or configuration name, and "
                                 "has one split, train, and one column, text; leave --data-files, --name, --split and "
                                 "--text-column out (bench fit: --data.data_files, --data.name, --data.split, "
                                 "--data.text_column)")
        elif self.path in TEXT_LOADERS:
            # Without data files a loader reads every file of the working directory.
            if not self.data_files:
                raise BenchError(f"the `datasets` loader {self.path!r} needs the files to read; give them to --data-files "
                                 "(bench fit: --data.data_files), e.g. 'a.txt,b/*.txt'")
            if self.name:  # `datasets` takes any name for them, which changed only the corpus's label
                raise BenchError(f"the `datasets` loader {self.path!r} has no configurations: --name {self.name!r} "
                                 "(bench fit: --data.name) would change nothing it reads; leave it out")
        elif not Path(self.path).is_dir():
            raise BenchError(f"dataset path {self.path!r} is not a built-in corpus ({', '.join(corpora.BUILTINS)}), "
                             f"a `datasets` loader ({', '.join(TEXT_LOADERS)}) with data files, or an existing directory "
                             "(a data set, or for bench fit a prepared corpus)")
        splits = None if self.builtin else self.splits()  # a built-in's split is checked above
        if splits is not None and (unknown := [s for s in self.split_names() if s not in splits]):
            raise BenchError(f"split {self.split!r} is not allowed: {self.path!r} has no split {unknown[0]!r}; its splits "
                             f"are {', '.join(splits)}; give one of them to --split (bench fit: --data.split)")

    def split_names(self) -> list[str]:
        """The splits `split` names: a saved DatasetDict's key, or those of a `datasets.load_dataset` split
        specification (train and test of 'train[:10%]+test')."""
        if (Path(self.path) / "dataset_dict.json").exists():
            return [self.split]
        return [part.split("[")[0].strip() for part in self.split.split("+")]

    def splits(self) -> list[str] | None:
        """The split names of a non-built-in source, without reading it; None where only loading tells (a single
        saved dataset, or a directory whose dataset card may define its own)."""
        from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
        from datasets.exceptions import DataFilesNotFoundError
        from datasets.load import infer_module_for_data_files

        path = Path(self.path)
        if self.data_files:
            return ["train"]  # `datasets` names a list of data files "train"
        if (path / "dataset_dict.json").exists():
            return json.loads((path / "dataset_dict.json").read_text())["splits"]
        if (path / "state.json").exists() or (path / "README.md").exists():
            return None
        base = str(path.resolve())
        try:
            patterns = get_data_patterns(base)
            # `load_dataset` picks its loader by the files' extensions: files of no type it knows (a prepared
            # corpus's .bin files, a results .db) are the same dead end as no files, found here before any work.
            infer_module_for_data_files(DataFilesDict.from_patterns(patterns, base_path=base), path=self.path)
        except (EmptyDatasetError, DataFilesNotFoundError):
            raise self.no_data_files() from None
        return [str(s) for s in patterns]

    def no_data_files(self) -> BenchError:
        """The error for a dataset directory with no file that a `datasets` loader reads."""
        prepared = (f"; it is a prepared corpus, which bench fit reads with --data.path {self.path}"
                    if (Path(self.path) / INDEX).exists() else "")
        return BenchError(f"dataset directory {self.path!r} holds no data files that a `datasets` loader reads "
                          f"({', '.join(TEXT_LOADERS)} files, by their extensions){prepared}; give a directory of "
                          "such files or one saved by `datasets`")

    def unreadable(self, err: Exception) -> BenchError:
        """The error for files a `datasets` loader failed on, naming them and why: its own error names neither
        ('An error occurred while generating the dataset'), its cause says why but not where."""
        from datasets.arrow_writer import SchemaInferenceError

        cause = err.__cause__ or err
        files = f"data files {', '.join(map(repr, self.data_files))}" if self.data_files else f"dataset directory {self.path!r}"
        if isinstance(cause, UnicodeDecodeError):
            why = "not UTF-8 text"
        elif isinstance(cause, SchemaInferenceError):  # the writer's complaint when the files gave no row
            why = "no rows (empty?)"
        elif self.path in TEXT_LOADERS:
            why = f"not valid {self.path.upper()} for the `datasets` loader {self.path!r}"
        else:
            why = "not valid for the `datasets` loader their file types select"
        return BenchError(f"{files} could not be read: {why} ({type(cause).__name__}: {cause})")

    def stamp(self) -> list:
        """What identifies the source's content cheaply (for the cache of unprepared corpora): the built-ins'
        content hash, else the local files' paths, sizes and modification times."""
        import glob

        if self.builtin:
            return [corpora.fingerprint(self.path)]
        paths = sorted({p for f in self.data_files for p in (glob.glob(f) or [f])})
        if Path(self.path).exists():
            paths += sorted(str(p) for p in Path(self.path).rglob("*") if p.is_file())
        return [(str(Path(p).resolve()), os.path.getsize(p), os.stat(p).st_mtime_ns) for p in paths]

    def load(self, cache_dir: str):
        """The documents as a `datasets` Dataset (or IterableDataset when streaming) with the text column."""
        import datasets

        datasets.disable_progress_bars()  # its "Downloading data" bars show local copies, which reads as a download
        if self.builtin:
            ds = corpora.load_builtin(self.path, cache_dir)
            return ds.to_iterable_dataset() if self.streaming else ds
        if (Path(self.path) / "state.json").exists() or (Path(self.path) / "dataset_dict.json").exists():
            ds = datasets.load_from_disk(self.path)
            ds = ds[self.split] if isinstance(ds, datasets.DatasetDict) else ds
            ds = ds.to_iterable_dataset() if self.streaming else ds
        else:
            try:
                with quiet_loaders():
                    ds = datasets.load_dataset(self.path, self.name, split=self.split, data_files=list(self.data_files) or None,
                                               streaming=self.streaming, cache_dir=cache_dir)
            except datasets.exceptions.DatasetGenerationError as err:  # what the loaders raise for a file they cannot parse
                raise self.unreadable(err) from None
            except datasets.exceptions.DataFilesNotFoundError:  # a directory whose dataset card `splits` could not read first
                raise self.no_data_files() from None
        if ds.column_names is not None and self.text_column not in ds.column_names:
            raise BenchError(f"text column {self.text_column!r} is not in the data set; its columns are {ds.column_names}")
        return ds


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer file (`tokenizer.json` of the `tokenizers` library) or a byte-level BPE of `vocab_size`
    trained on a sample of `sample_mb` MB of the training documents."""

    file: str | None = None
    vocab_size: int | None = None
    sample_mb: float = 32.0

    def check(self) -> None:
        if self.file is not None:
            if not Path(self.file).is_file():
                raise BenchError(f"tokenizer file {self.file!r} does not exist; give a tokenizer.json of the `tokenizers` library")
            size = load_tokenizer(self.file).get_vocab_size(with_added_tokens=True)
            if self.vocab_size is not None and self.vocab_size != size:
                raise BenchError(f"vocab_size={self.vocab_size} does not match the tokenizer {self.file!r}, "
                                 f"whose vocabulary has {size} tokens; give vocab_size {size}")
        elif self.vocab_size is not None and not 257 <= self.vocab_size <= MAX_VOCAB:
            # the BPE trainer allocates for the whole vocabulary up front: 5e9 aborted the process (280 GB)
            raise BenchError(f"vocab_size={self.vocab_size} is not allowed; a byte-level BPE trained here has from 257 "
                             f"to {MAX_VOCAB:,} tokens")
        if not (math.isfinite(self.sample_mb) and self.sample_mb > 0):
            raise BenchError(f"sample_mb={self.sample_mb} is not allowed; it is the MB of training text the BPE is "
                             "trained on, a positive number")

    def stamp(self) -> list:
        if self.file is not None:
            return ["file", hashlib.sha256(Path(self.file).read_bytes()).hexdigest()]
        return ["bpe", self.vocab_size, self.sample_mb]


#: The `datasets` loaders that read rows with a text column from files (`load_dataset(name, data_files=...)`).
#: Its full list of loaders is private and holds image, audio and genome readers, which make no corpus.
TEXT_LOADERS = ("arrow", "csv", "json", "pandas", "parquet", "text", "webdataset", "xml")


def load_tokenizer(path: str):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the library raises a bare Exception for a file it cannot parse
        raise BenchError(f"tokenizer file {path!r} is not a tokenizer.json of the `tokenizers` library ({e})") from None


def tokenizer_fingerprint(tok) -> str:
    """What the ids mean: a hash of the tokenizer's full serialisation."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]


def end_of_text_id(tok, where: str) -> int:
    """The id that separates documents: the first of the usual end-of-text tokens the tokenizer has."""
    for token in EOT_CANDIDATES:
        if (i := tok.token_to_id(token)) is not None:
            return i
    raise BenchError(f"the tokenizer {where} has none of the end-of-text tokens {', '.join(EOT_CANDIDATES)}; "
                     "add one of them to it as a special token")


def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def rows(ds, source: Source) -> Iterator[tuple[int, list[str]]]:
    """(first row number, texts) batches of about BATCH_BYTES of the source's text, in source order."""
    import pyarrow
    from datasets.exceptions import DatasetGenerationError

    start, texts, size, row = 0, [], 0, 0
    try:
        # a streamed source is parsed only now, as it is read: a file its loader cannot parse raises here
        with quiet_loaders():
            for batch in ds.iter(batch_size=256):
                if source.text_column not in batch:  # a streamed source may tell its columns only now
                    raise BenchError(f"text column {source.text_column!r} is not in the data set; its columns are "
                                     f"{list(batch)}")
                for text in batch[source.text_column]:
                    texts.append(text or "")
                    size += len(texts[-1])
                    row += 1
                    if size >= BATCH_BYTES:
                        yield start, texts
                        start, texts, size = row, [], 0
    except (UnicodeDecodeError, pyarrow.ArrowInvalid, json.JSONDecodeError, DatasetGenerationError) as err:
        raise source.unreadable(err) from None
    if texts:
        yield start, texts


def training_sample(ds, source: Source, split_seed: int, val_fraction: float, max_bytes: float) -> Iterator[str]:
    """The first `max_bytes` of text of the training documents (never a validation one)."""
    taken = 0
    for _, texts in rows(ds, source):
        for text in texts:
            if text and not is_validation(text, split_seed, val_fraction):
                yield text
                taken += len(text)
                if taken >= max_bytes:
                    return


def train_bpe(texts: Iterator[str], vocab_size: int):
    """Byte-level BPE (GPT-2 style) with the end-of-text token as its one special token."""
    from tokenizers import ByteLevelBPETokenizer

    tok = ByteLevelBPETokenizer()
    tok.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOT], show_progress=False)
    return tok._tokenizer  # the plain `Tokenizer` inside the convenience wrapper


def _hand_back_freed_memory(arrow: bool) -> None:
    """Make freed batches go back to the system, so that memory does not grow with the corpus. glibc's malloc
    raises its mmap threshold after each large free, so later batches of text (a few MB) come from the heap and
    fragment it; and Arrow's default pool (mimalloc) keeps the pages the `datasets` loader freed. Measured on
    1.6 GB of text: the main process held 360 MiB with both, 165 MiB with a fixed threshold and Arrow's system
    pool. Where the C library has no `mallopt` (not glibc) its own policy stays.

    Only for processes that exist to prepare (the `bench data prepare` command, the pool's workers): a training
    process keeps glibc's adaptive threshold, which lets its multi-MB tensors reuse the heap."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    if arrow:
        import pyarrow

        pyarrow.set_memory_pool(pyarrow.system_memory_pool())


# Worker state: set once per process by `_init_worker`, so that batches carry only their texts.
_WORKER: dict = {}


def _init_worker(tokenizer_json: str, eot: int, dtype: str, split_seed: int, val_fraction: float) -> None:
    from tokenizers import Tokenizer

    dtype = np.dtype(dtype)
    _WORKER.update(encode=encoder(Tokenizer.from_str(tokenizer_json), dtype), eot=np.array([eot], dtype).tobytes(),
                   dtype=dtype, seed=split_seed, fraction=val_fraction)


def _start_worker(*init) -> None:
    """A pool worker's start: a process that only prepares (see `_hand_back_freed_memory`)."""
    _hand_back_freed_memory(arrow=False)
    _init_worker(*init)


@dataclass
class Encoded:
    """One batch, tokenized: the training and validation ids (each document closed by end-of-text), the
    validation rows, one content digest per non-empty document, and the batch's text size."""

    train: np.ndarray
    val: np.ndarray
    val_rows: list[int]
    digests: bytes
    n_bytes: int
    n_docs: int


def _encode(start: int, texts: list[str]) -> Encoded:
    w = _WORKER
    keep = [(start + i, t) for i, t in enumerate(texts) if t]
    train: list[bytes] = []
    val: list[bytes] = []
    val_rows, digests = [], []
    for (row, text), ids in zip(keep, w["encode"]([t for _, t in keep])):
        if is_validation(text, w["seed"], w["fraction"]):
            val += (ids, w["eot"])
            val_rows.append(row)
        else:
            train += (ids, w["eot"])
        digests.append(hashlib.blake2b(text.encode(), digest_size=16).digest())
    return Encoded(np.frombuffer(b"".join(train), w["dtype"]), np.frombuffer(b"".join(val), w["dtype"]), val_rows,
                   b"".join(digests), sum(len(t) for t in texts), len(texts))


@dataclass
class Writer:
    """Appends encoded batches to the output files, in order, and keeps the index's running figures."""

    out: Path
    vocab_size: int
    counts: np.ndarray = field(init=False)
    corpus: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    val_digest: "hashlib._Hash" = field(default_factory=hashlib.sha256)
    val_rows: list[int] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    documents: int = 0

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.vocab_size, np.int64)
        self.files = {s: open(self.out / f"{s}.bin", "wb") for s in ("train", "val")}

    def add(self, enc: Encoded) -> None:
        for split, ids in (("train", enc.train), ("val", enc.val)):
            self.files[split].write(ids.tobytes())
            self.tokens[split] += len(ids)
        self.counts += np.bincount(enc.train, minlength=self.vocab_size)[: self.vocab_size]
        self.corpus.update(enc.digests)
        self.val_rows += enc.val_rows
        self.documents += len(enc.digests) // 16
        for row in enc.val_rows:
            self.val_digest.update(row.to_bytes(8, "little"))

    def close(self) -> None:
        for f in self.files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()

    @property
    def entropy(self) -> float:
        p = self.counts[self.counts > 0] / max(1, self.counts.sum())
        return float(-(p * np.log(p)).sum())


def prepare(source: Source, tokenizer: TokenizerSpec, out: Path, *, val_fraction: float = 0.02, split_seed: int = 0,
            num_proc: int | None = None, progress: bool = True) -> Path:
    """Prepare `source` into the directory `out` (atomically; see the module docstring); returns `out`."""
    from tokenizers import Tokenizer

    if not 0 < val_fraction < 1:
        raise BenchError(f"val_fraction={val_fraction} is not allowed; it is the fraction of documents held out, in (0, 1)")
    out = Path(out)
    blocker = file_in_the_way(out)
    if blocker is not None:
        raise BenchError(f"--out {str(out)!r} cannot be created: {str(blocker)!r} is a file, not a directory; "
                         "choose another --out")
    if (out / INDEX).exists():
        raise BenchError(f"{str(out)!r} already holds a prepared corpus; remove it or choose another --out")
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"{str(out)!r} exists and is not empty; choose a new directory for --out")
    source.check()
    tokenizer.check()
    check_num_proc(num_proc, "--num-proc")
    num_proc = num_proc or os.cpu_count() or 1
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
    except OSError as err:  # a folder that is not ours to write (permissions, a read-only file system): before any work
        raise BenchError(f"--out {str(out)!r} cannot be created: {err.strerror} ({err.filename}); choose another --out, "
                         "in a folder you can write to") from None
    try:
        ds = source.load(str(tmp / "hf"))
        if tokenizer.file is not None:
            tok, kind = load_tokenizer(tokenizer.file), f"file:{Path(tokenizer.file).name}"
            vocab_size = tok.get_vocab_size(with_added_tokens=True)
        else:
            # The model's vocabulary is the size asked for; a small corpus may give the BPE fewer merges.
            vocab_size = tokenizer.vocab_size or 2048
            tok = train_bpe(training_sample(ds, source, split_seed, val_fraction, tokenizer.sample_mb * 1e6), vocab_size)
            kind = f"bytelevel-bpe-{vocab_size}"
        eot = end_of_text_id(tok, tokenizer.file or "trained here")
        tok.save(str(tmp / "tokenizer.json"))
        dtype = id_dtype(vocab_size)
        writer = Writer(tmp, vocab_size)
        started = time.perf_counter()
        init = (tok.to_str(), eot, dtype.str, split_seed, val_fraction)
        total = None if source.streaming else len(ds)
        bar = _progress(progress, total, source.label)
        with bar as advance:
            if num_proc == 1:
                _init_worker(*init)
                for start, texts in rows(ds, source):
                    writer.add(enc := _encode(start, texts))
                    advance(enc)
            else:
                # The workers inherit no tokenizer thread pool: one process per core does the parallelism.
                os.environ["TOKENIZERS_PARALLELISM"] = "false"
                with multiprocessing.get_context("spawn").Pool(num_proc, _start_worker, init) as pool:
                    pending: deque = deque()
                    for start, texts in rows(ds, source):
                        pending.append(pool.apply_async(_encode, (start, texts)))
                        while len(pending) >= 2 * num_proc or (pending and pending[0].ready()):
                            writer.add(enc := pending.popleft().get())
                            advance(enc)
                    while pending:
                        writer.add(enc := pending.popleft().get())
                        advance(enc)
        writer.close()
        if writer.tokens["train"] == 0 or writer.tokens["val"] == 0:
            raise BenchError(f"the corpus {source.label!r} gave {writer.tokens['train']} training and {writer.tokens['val']} "
                             f"validation tokens from {writer.documents} documents; it needs both: give more documents "
                             f"or another --val-fraction (now {val_fraction})")
        shutil.rmtree(tmp / "hf", ignore_errors=True)
        index = {
            "format": FORMAT_VERSION,
            "source": source.label,
            "corpus_fingerprint": writer.corpus.hexdigest()[:16],
            "documents": writer.documents,
            "text_bytes": bar.bytes,
            "tokens": writer.tokens,
            "dtype": dtype.name,
            "vocab_size": vocab_size,
            "tokenizer_vocab": tok.get_vocab_size(with_added_tokens=True),
            "eot_id": eot,
            "tokenizer": kind,
            "tokenizer_fingerprint": tokenizer_fingerprint(Tokenizer.from_file(str(tmp / "tokenizer.json"))),
            "split": {"rule": SPLIT_RULE, "seed": split_seed, "val_fraction": val_fraction, "val_fingerprint": writer.val_digest.hexdigest()[:16],
                      "val_documents": writer.val_rows},
            "train_unigram_entropy": writer.entropy,
            "seconds": round(time.perf_counter() - started, 3),
        }
        _write_synced(tmp / INDEX, json.dumps(index, indent=1))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / INDEX).exists():  # not a concurrent prepare of the same corpus that finished first
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        _fsync_dir(out.parent)
        return out
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _progress:
    """A rich progress bar over documents (with an ETA when the document count is known) and MB/s."""

    def __init__(self, enabled: bool, total: int | None, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self.bytes = 0

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from cslaws.console import console

            self.bar = Progress(TextColumn("[bold]prepare[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("docs {task.fields[mb]:.0f} MB {task.fields[rate]:.1f} MB/s"),
                                TimeElapsedColumn(), TimeRemainingColumn(), console=console())
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, mb=0.0, rate=0.0)
        self.started = time.perf_counter()

        def advance(enc: Encoded) -> None:
            self.bytes += enc.n_bytes
            if self.enabled:
                mb = self.bytes / 1e6
                self.bar.update(self.task, advance=enc.n_docs, mb=mb, rate=mb / max(1e-9, time.perf_counter() - self.started))

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)


def read_index(path: Path) -> dict:
    """The index of the prepared corpus at `path`; a BenchError naming the path when there is none."""
    path = Path(path)
    if not path.is_dir():
        raise BenchError(f"prepared corpus {str(path)!r} does not exist; make it with: bench data prepare SOURCE --out {path}")
    if not (path / INDEX).is_file():
        raise BenchError(f"{str(path)!r} is not a complete prepared corpus: it has no {INDEX} (a killed or unfinished "
                         f"`bench data prepare`?); remove it and prepare again: bench data prepare SOURCE --out {path}")
    index = json.loads((path / INDEX).read_text())
    if index.get("format") != FORMAT_VERSION:
        raise BenchError(f"prepared corpus {str(path)!r} is of format {index.get('format')}, this suite reads format "
                         f"{FORMAT_VERSION}; prepare it again")
    for split in ("train", "val"):
        expected = index["tokens"][split] * np.dtype(index["dtype"]).itemsize
        if not (path / f"{split}.bin").is_file() or (path / f"{split}.bin").stat().st_size != expected:
            raise BenchError(f"prepared corpus {str(path)!r}: {split}.bin is missing or not {expected} bytes as its index "
                             "says; prepare it again")
    return index


def check_num_proc(num_proc: int | None, option: str, *, here: bool = True) -> None:
    """Tokenizing processes: at least 1 (None: all cores; 0 silently meant that too) and, where they start on
    this machine (`here`), at most its cores: 100,000 spawned over 1,000 workers on a 3,000-line file and hung.
    A data module built to check a sweep's cells (`here` False) may run on a larger node."""
    cores = os.cpu_count() or 1
    if num_proc is None or (num_proc >= 1 and (not here or num_proc <= cores)):
        return
    allowed = f"1 to {cores} (this machine's cores)" if here else "at least 1"
    raise BenchError(f"{option} {num_proc} is not allowed; give {allowed} tokenizing processes, or leave it out for "
                     "all cores")


def cached_prepare(source: Source, tokenizer: TokenizerSpec, val_fraction: float, split_seed: int,
                   num_proc: int | None = None) -> Path:
    """The prepared corpus of an unprepared source, in the cache (`$CSLAWS_CACHE`, default ~/.cache/cslaws),
    prepared on first use; keyed by everything that defines its content."""
    key = json.dumps([FORMAT_VERSION, SPLIT_RULE, source.label, source.name, source.split, source.text_column, source.stamp(),
                      tokenizer.stamp(), val_fraction, split_seed])
    out = cache_root() / "corpora" / f"{source.path.replace('/', '_')[:40]}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if not (out / INDEX).exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        prepare(source, tokenizer, out, val_fraction=val_fraction, split_seed=split_seed, num_proc=num_proc)
    return out


def main(argv: list[str]) -> int:
    """`bench data prepare ...` (argv starts with "data")."""
    parser = BenchParser(prog="bench data", description="Prepared corpora: memory-mapped token files.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="tokenize a corpus into memory-mapped token files", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help=f"a built-in corpus ({', '.join(corpora.BUILTINS)}), a `datasets` loader "
                                  "(text, json, csv, parquet) with --data-files, or a local data set directory")
    p.add_argument("--out", required=True, type=Path, help="the directory to create")
    p.add_argument("--data-files", default="", help="comma-separated files or globs for a loader")
    p.add_argument("--name", default=None, help="the data set's configuration name")
    p.add_argument("--split", default="train", help="which split of the source to read (default: train)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--streaming", action="store_true", help="stream the source instead of converting it to Arrow first")
    p.add_argument("--tokenizer", default=None, help="a tokenizer.json to use; default: train a byte-level BPE")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary (default 2048); with --tokenizer, must match it")
    p.add_argument("--sample-mb", type=float, default=32.0, help="MB of training text the BPE is trained on")
    p.add_argument("--val-fraction", type=float, default=0.02, help="fraction of documents held out for validation")
    p.add_argument("--split-seed", type=int, default=0, help="draws the validation documents")
    p.add_argument("--num-proc", type=int, default=None, help="tokenizing processes (default: all cores)")
    args = parser.parse_args(argv[1:])
    source = Source(args.source, args.name, args.split, args.text_column,
                    tuple(f for f in args.data_files.split(",") if f), args.streaming)
    tokenizer = TokenizerSpec(args.tokenizer, args.vocab_size, args.sample_mb)
    _hand_back_freed_memory(arrow=True)
    out = prepare(source, tokenizer, args.out, val_fraction=args.val_fraction, split_seed=args.split_seed, num_proc=args.num_proc)
    index = read_index(out)
    print(f"{out}: {index['tokens']['train']:,} training and {index['tokens']['val']:,} validation tokens "
          f"({len(index['split']['val_documents'])} of {index['documents']} documents), {index['dtype']}, "
          f"{index['tokenizer']} vocab {index['vocab_size']}, {index['text_bytes'] / 1e6:.1f} MB of text in {index['seconds']:.1f} s")
    return 0
