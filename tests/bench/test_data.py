import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cslaws.bench.data import TextDataModule, TrainWindows, ValWindows
from cslaws.bench.prepare import Source, TokenizerSpec, prepare
from cslaws.errors import BenchError


def make(small_corpus, **kw) -> TextDataModule:
    args = dict(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=4, val_sequences=40)
    args.update(kw)
    dm = TextDataModule(**args)
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def prepared(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    return prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(None, 512), out, num_proc=1, progress=False)


def test_training_windows_are_a_permutation_and_shorter_runs_are_prefixes() -> None:
    tokens = np.arange(10 * 6 + 3, dtype=np.uint16)  # distinct ids stand for positions in the file
    data = TrainWindows(tokens, seq_len=6, length=25, seed=3)
    rows = [data[i].tolist() for i in range(25)]
    assert sorted(r[0] for r in rows[:10]) == list(range(0, 60, 6))  # one pass: every window once
    assert all(r == list(range(r[0], r[0] + 7)) for r in rows)  # seq_len + 1 consecutive tokens
    assert rows[10:20] == rows[:10]  # a second pass repeats the order
    shorter = TrainWindows(tokens, seq_len=6, length=5, seed=3)
    assert [shorter[i].tolist() for i in range(5)] == rows[:5]
    assert [TrainWindows(tokens, 6, 10, seed=4)[i].tolist() for i in range(10)] != rows[:10]


def test_unprepared_source_is_prepared_once_into_the_cache(small_corpus, prepared) -> None:
    dm = make(small_corpus)
    cached = sorted(Path(os.environ["CSLAWS_CACHE"], "corpora").glob("text-*/train.bin"))
    assert cached and any(p.read_bytes() == (prepared / "train.bin").read_bytes() for p in cached)
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    again = make(small_corpus)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp
    assert again.provenance == dm.provenance and set(dm.provenance) == {"dataset", "tokenizer", "val_set"}


def test_validation_set_is_the_same_documents_whatever_seq_len_and_batch_size(prepared) -> None:
    a = make(None, path=str(prepared), seq_len=32, batch_size=4)
    b = make(None, path=str(prepared), seq_len=16, batch_size=8, val_sequences=80)
    c = make(None, path=str(prepared), seq_len=32, batch_size=5)
    val = np.fromfile(prepared / "val.bin", dtype=np.uint16)
    batches = lambda dm: torch.cat(list(dm.val_dataloader()))  # noqa: E731
    for dm, seq_len, count in ((a, 32, 40), (b, 16, 80)):
        got = batches(dm)
        # Which window of the file each scored sequence is, found by search: they are spread over the whole
        # file, from its first window to within one stride of its last, in strides of floor or ceil(n / count).
        n = (len(val) - 1) // seq_len
        starts = [next(j for j in range(n) if val[j * seq_len: j * seq_len + seq_len + 1].tolist() == w.tolist()) for w in got]
        assert len(got) == count and starts[0] == 0 and n - 1 - starts[-1] < n / count
        assert set(np.diff(starts)) <= {n // count, -(-n // count)} and n > 2 * count
    assert torch.equal(batches(a), batches(c))
    assert a.provenance["val_set"] == c.provenance["val_set"] != b.provenance["val_set"]  # seq_len is part of the key
    assert a.provenance["dataset"] == b.provenance["dataset"]


def test_batches_are_next_token_windows_of_the_training_file(prepared) -> None:
    dm = make(None, path=str(prepared))
    batch = next(iter(dm.train_dataloader()))
    train = np.fromfile(prepared / "train.bin", dtype=np.uint16)
    assert batch.shape == (4, 33) and batch.dtype == torch.int64
    for row in batch:
        starts = range(0, len(train) - 32, 32)  # the windows of the file
        assert any(train[s:s + 33].tolist() == row.tolist() for s in starts)


def test_budget_beyond_one_pass_is_refused_unless_allowed(prepared) -> None:
    dm = make(None, path=str(prepared))
    n = dm.train_windows
    assert dm.epochs_for(n // 2) == pytest.approx(0.5)
    dm.set_train_sequences(n)
    with pytest.raises(BenchError, match=rf"needs 1\.\d+ passes .*{len(dm.train_tokens):,} training tokens.*"
                                         rf"{(n + 8) * 32:,} tokens.*--data.max_epochs 1\.\d+"):
        dm.set_train_sequences(n + 8)
    dm = make(None, path=str(prepared), max_epochs=2)
    dm.set_train_sequences(n + 8)
    loader = dm.train_dataloader()
    assert len(loader) == (n + 8) // 4 and torch.equal(loader.dataset[n], loader.dataset[0])


def test_prepared_corpus_must_match_the_run(prepared, tmp_path) -> None:
    with pytest.raises(BenchError, match="vocab_size=1024 does not match prepared corpus .* give --data.vocab_size 512"):
        TextDataModule(path=str(prepared), vocab_size=1024)
    (tmp_path / "o.txt").write_text("".join(f"another corpus, another tokenizer {i}\n" for i in range(300)))
    other = prepare(Source("text", data_files=(str(tmp_path / "o.txt"),)), TokenizerSpec(None, 300), tmp_path / "o",
                    val_fraction=0.2, num_proc=1, progress=False)
    with pytest.raises(BenchError, match="was tokenized with another tokenizer .*leave --data.tokenizer out"):
        TextDataModule(path=str(prepared), vocab_size=512, tokenizer=str(other / "tokenizer.json"))
    TextDataModule(path=str(prepared), vocab_size=512, tokenizer=str(prepared / "tokenizer.json"))
    with pytest.raises(BenchError, match="split_seed=1 is not allowed with prepared corpus .* split_seed=0"):
        TextDataModule(path=str(prepared), vocab_size=512, split_seed=1)
    incomplete = tmp_path / "half"
    incomplete.mkdir()
    (incomplete / "train.bin").write_bytes(b"")
    with pytest.raises(BenchError, match="half' is not a complete prepared corpus"):
        TextDataModule(path=str(incomplete))


def test_validation_windows_sample_every_part_of_the_file() -> None:
    """A validation file of two sources in turn (as `english`: Shakespeare, then the Bible) is scored on both, in
    proportion to their tokens; the first windows alone would be the first source's."""
    tokens = np.array([1] * 3001 + [2] * 1000, np.uint16)
    windows = ValWindows(tokens, 10, 40)
    sources = [set(windows[i].tolist()) for i in range(len(windows))]
    assert sources.count({1}) == 30 and sources.count({2}) == 9 and sources.count({1, 2}) == 1


def test_too_few_validation_windows_are_refused(prepared) -> None:
    with pytest.raises(BenchError, match="val_sequences=100000 needs more: lower --data.val_sequences"):
        make(None, path=str(prepared), val_sequences=100_000)


def test_missing_data_file_is_named(tmp_path) -> None:
    with pytest.raises(BenchError, match="nope.txt"):
        TextDataModule(path="text", data_files=[str(tmp_path / "nope.txt")])


def test_sources_that_cannot_be_read_are_refused_before_training(small_corpus) -> None:
    for kw, message in (({"path": "nosuchcorpus"}, "dataset path 'nosuchcorpus' is not a built-in corpus"),
                        ({"path": "text"}, "loader 'text' needs the files to read; .*--data.data_files"),
                        ({"path": "text", "data_files": small_corpus, "split": "nosuch"}, "split 'nosuch' is not allowed"),
                        ({"path": "english", "data_files": small_corpus}, "'english' is a built-in corpus: .*--data.data_files")):
        with pytest.raises(BenchError, match=message):
            TextDataModule(**kw)


def test_builtin_corpora_are_the_installed_texts() -> None:
    from cslaws.bench.corpora import kjv_chapters, kjv_database, shakespeare_files

    files = shakespeare_files()
    assert len(files) == 38 and sum(os.path.getsize(f) for f in files) > 5_000_000
    chapters = list(kjv_chapters(kjv_database()))
    assert len(chapters) == 1189  # the chapters of the 66 books
    assert chapters[0]["text"].startswith("Genesis 1\nIn the beginning God created the heavens and the earth. And the earth")
    assert chapters[-1]["text"].endswith("The grace of our Lord Jesus Christ be with you all. Amen.")


DDP_SCRIPT = """
import sys, torch, lightning as L
from cslaws.bench.data import TextDataModule

class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(512, 512)
    def training_step(self, batch, i):
        torch.save(batch, f"{sys.argv[2]}/train-{self.global_rank}-{i}.pt")
        return torch.nn.functional.cross_entropy(self.emb(batch[:, :-1]).flatten(0, 1), batch[:, 1:].flatten())
    def validation_step(self, batch, i):
        torch.save(batch, f"{sys.argv[2]}/val-{self.global_rank}-{i}.pt")
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

devices = int(sys.argv[3])
dm = TextDataModule(path=sys.argv[1], vocab_size=512, seq_len=16, batch_size=8 // devices, val_sequences=16)
trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_epochs=1,
                    limit_train_batches=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, num_sanity_val_steps=0)
dm.setup("fit")
dm.set_train_sequences(24)
trainer.fit(Tiny(), datamodule=dm)
"""


@pytest.mark.slow
def test_one_and_two_gloo_processes_see_the_same_global_batches_and_validation(prepared, tmp_path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))

    def run(devices: int) -> tuple[list[set], set]:
        out = tmp_path / f"d{devices}"
        out.mkdir()
        subprocess.run([sys.executable, str(script), str(prepared), str(out), str(devices)], check=True, cwd=tmp_path,
                       capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        rows = lambda name: {tuple(r.tolist()) for r in torch.load(out / name)}  # noqa: E731
        steps = [set().union(*(rows(f"train-{r}-{i}.pt") for r in range(devices))) for i in range(3)]
        val = set().union(*(rows(p.name) for p in out.glob("val-*.pt")))
        return steps, val

    one, two = run(1), run(2)
    assert one[0] == two[0] and all(len(s) == 8 for s in one[0])
    assert one[1] == two[1] and len(one[1]) == 16


@pytest.mark.parametrize("n, world", [(15, 2), (16, 2), (7, 3), (5, 1)])
def test_validation_shards_score_every_window_once(n, world) -> None:
    """Over the ranks of a DDP run, each validation window is scored exactly once (torch's own distributed
    sampler would repeat windows to even the ranks out when n is not a multiple of the world size)."""
    from cslaws.bench.data import ExactShards

    shards = [list(ExactShards(range(n), num_replicas=world, rank=r)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert [len(ExactShards(range(n), num_replicas=world, rank=r)) for r in range(world)] == [len(s) for s in shards]
