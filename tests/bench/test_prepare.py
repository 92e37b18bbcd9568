import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from cslaws.bench import prepare as prep
from cslaws.bench.prepare import INDEX, Source, TokenizerSpec, is_validation, prepare, read_index
from cslaws.errors import BenchError


def lines_of(files: list[str]) -> list[str]:
    """The rows the `text` loader makes: one per line, files in order (read here independently)."""
    return [line for f in files for line in Path(f).read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def prepared(small_corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "corpus"
    return prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(None, 512), out, num_proc=1, progress=False)


def test_index_and_files_are_a_direct_tokenization_of_the_documents(prepared, small_corpus) -> None:
    index = read_index(prepared)
    rows = lines_of(small_corpus)
    val_rows = [i for i, t in enumerate(rows) if t and is_validation(t, 0, 0.02)]
    assert index["split"]["val_documents"] == val_rows
    assert 0.01 < len(val_rows) / sum(map(bool, rows)) < 0.03
    assert index["documents"] == sum(map(bool, rows)) and index["dtype"] == "uint16" and index["vocab_size"] == 512
    tok = Tokenizer.from_file(str(prepared / "tokenizer.json"))
    eot = tok.token_to_id("<|endoftext|>")
    expect = {"train": [], "val": []}
    for i, text in enumerate(rows):
        if text:
            expect["val" if i in set(val_rows) else "train"] += tok.encode(text, add_special_tokens=False).ids + [eot]
    for split in ("train", "val"):
        got = np.fromfile(prepared / f"{split}.bin", dtype=np.uint16)
        assert got.tolist() == expect[split] and index["tokens"][split] == len(expect[split])
    counts = np.bincount(np.array(expect["train"]))
    p = counts[counts > 0] / counts.sum()
    assert index["train_unigram_entropy"] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)


def test_workers_write_the_same_files_as_one_process(prepared, small_corpus, tmp_path) -> None:
    out = prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(prepared / "tokenizer.json"), tmp_path / "c",
                  num_proc=2, progress=False)
    for name in ("train.bin", "val.bin"):
        assert (out / name).read_bytes() == (prepared / name).read_bytes()
    a, b = read_index(out), read_index(prepared)
    assert a["corpus_fingerprint"] == b["corpus_fingerprint"] and a["split"] == b["split"]


def test_bpe_never_sees_the_validation_documents(tmp_path) -> None:
    """A word that occurs only in validation documents gets no token; the same kind of word in training does."""
    odd = (f"{i} " + "zqxvbk " * 50 for i in range(10_000))
    val = [t for t in odd if is_validation(t, 0, 0.05)][:30]
    common = (f"{i} " + "wjfypg " * 50 for i in range(10_000))
    train = [t for t in common if not is_validation(t, 0, 0.05)][:30]
    rows = [f"the plain line number {i} of some ordinary text" for i in range(540)] + val + train
    f = tmp_path / "c.txt"
    f.write_text("\n".join(rows))
    out = prepare(Source("text", data_files=(str(f),)), TokenizerSpec(None, 400), tmp_path / "p", val_fraction=0.05,
                  num_proc=1, progress=False)
    vocab = Tokenizer.from_file(str(out / "tokenizer.json")).get_vocab()
    assert any("wjfypg" in t for t in vocab)
    assert not any("zqx" in t or "vbk" in t for t in vocab)


def test_copies_of_a_document_are_never_split_between_training_and_validation(tmp_path) -> None:
    """A text that occurs many times (a stage direction, a boilerplate line) is all validation or all training."""
    texts = [f"a repeated line of kind {k}" for k in range(60)]
    rows = [texts[(7 * i) % 60] for i in range(1200)]  # each text 20 times, its copies far apart
    f = tmp_path / "c.txt"
    f.write_text("\n".join(rows))
    out = prepare(Source("text", data_files=(str(f),)), TokenizerSpec(None, 300), tmp_path / "p", val_fraction=0.1,
                  num_proc=1, progress=False)
    index = read_index(out)
    val = {rows[i] for i in index["split"]["val_documents"]}
    assert index["split"]["rule"] == "text" and 0 < len(val) < 60
    assert sorted(index["split"]["val_documents"]) == [i for i, t in enumerate(rows) if t in val]  # every copy


def big_vocab_tokenizer(path: Path, words: list[str]) -> str:
    """A word-level tokenizer of 70,000 tokens whose real words have ids above 65535 (uint32 territory)."""
    vocab = {f"filler{i}": i for i in range(66_000)}
    vocab.update({w: 66_000 + i for i, w in enumerate(["<|endoftext|>", "[UNK]", *words])})
    vocab.update({f"tail{i}": i for i in range(len(vocab), 70_000)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return str(path)


def test_large_vocabulary_is_stored_as_uint32(tmp_path) -> None:
    # 120 distinct documents (orders of four of the five words), so that some are drawn for validation
    rows = [" ".join(p) for p in itertools.permutations(["alpha", "beta", "gamma", "delta", "omega"], 4)] * 2
    f = tmp_path / "c.txt"
    f.write_text("\n".join(rows))
    tok_path = big_vocab_tokenizer(tmp_path / "tok.json", ["alpha", "beta", "gamma", "delta", "omega"])
    out = prepare(Source("text", data_files=(str(f),)), TokenizerSpec(tok_path), tmp_path / "p", num_proc=1, progress=False)
    index = read_index(out)
    assert index["dtype"] == "uint32" and index["vocab_size"] == 70_000
    train = np.fromfile(out / "train.bin", dtype=np.uint32)
    first = [i for i, t in enumerate(rows) if not is_validation(t, 0, 0.02)][0]
    ids = {w: 66_002 + k for k, w in enumerate(["alpha", "beta", "gamma", "delta", "omega"])}
    assert train[:5].tolist() == [ids[w] for w in rows[first].split()] + [66_000]
    with pytest.raises(BenchError, match="vocab_size=512 does not match the tokenizer .* 70000 tokens"):
        TokenizerSpec(tok_path, 512).check()


def test_a_killed_prepare_leaves_nothing_that_looks_prepared(small_corpus, tmp_path, monkeypatch) -> None:
    calls = []

    def die(self, enc):
        calls.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(prep.Writer, "add", die)
    with pytest.raises(KeyboardInterrupt):
        prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(None, 300), tmp_path / "c", num_proc=1, progress=False)
    assert calls and list(tmp_path.iterdir()) == []


def test_incomplete_and_missing_corpora_are_refused(prepared, tmp_path) -> None:
    partial = tmp_path / ".c.partial-123"  # what a SIGKILLed prepare leaves: no index
    partial.mkdir()
    (partial / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(BenchError, match=r"\.c\.partial-123.* has no index.json .*bench data prepare SOURCE --out"):
        read_index(partial)
    with pytest.raises(BenchError, match="nowhere' does not exist; make it with: bench data prepare"):
        read_index(tmp_path / "nowhere")
    truncated = tmp_path / "t"
    truncated.mkdir()
    (truncated / INDEX).write_text((prepared / INDEX).read_text())
    (truncated / "train.bin").write_bytes((prepared / "train.bin").read_bytes()[:-2])
    (truncated / "val.bin").write_bytes((prepared / "val.bin").read_bytes())
    with pytest.raises(BenchError, match="train.bin is missing or not .* bytes as its index says"):
        read_index(truncated)
    with pytest.raises(BenchError, match="already holds a prepared corpus"):
        prepare(Source("text", data_files=("x",)), TokenizerSpec(None, 300), prepared)


def test_bad_sources_are_named(tmp_path) -> None:
    with pytest.raises(BenchError, match="data file .*nope.txt' does not exist"):
        Source("text", data_files=(str(tmp_path / "nope.txt"),)).check()
    with pytest.raises(BenchError, match="dataset path './no/such' is not a built-in corpus"):
        Source("./no/such").check()
    f = tmp_path / "d.csv"
    f.write_text("body,n\nhello there,1\n")
    with pytest.raises(BenchError, match=r"text column 'text' is not in the data set; its columns are \['body', 'n'\]"):
        prepare(Source("csv", data_files=(str(f),)), TokenizerSpec(None, 300), tmp_path / "p", num_proc=1, progress=False)
    assert not (tmp_path / "p").exists()


def test_cli_prepares_and_reports(small_corpus, tmp_path, capsys) -> None:
    from cslaws.bench.cli import main

    assert main(["data", "prepare", "text", "--data-files", ",".join(small_corpus[:1]), "--vocab-size", "300",
                 "--num-proc", "1", "--out", str(tmp_path / "c")]) == 0
    index = json.loads((tmp_path / "c" / INDEX).read_text())
    assert f"{index['tokens']['train']:,} training and {index['tokens']['val']:,} validation tokens" in capsys.readouterr().out


def bench_data(argv: list[str], capsys) -> str:
    """The error `bench data prepare ARGV` ends with (it must end with one)."""
    from cslaws.bench.cli import main

    assert main(["data", "prepare", *argv]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("num_proc", [0, 10**5])
def test_tokenizing_processes_are_one_to_this_machines_cores(num_proc, small_corpus, tmp_path, monkeypatch, capsys) -> None:
    """100,000 spawned over 1,000 workers on a 3,000-line file and hung; 0 meant all cores, unsaid."""
    monkeypatch.setattr(prep.os, "cpu_count", lambda: 4)
    err = bench_data(["text", "--data-files", small_corpus[0], "--out", str(tmp_path / "c"), "--num-proc", str(num_proc)], capsys)
    assert err.strip() == (f"bench: error: --num-proc {num_proc} is not allowed; give 1 to 4 (this machine's cores) "
                           "tokenizing processes, or leave it out for all cores")
    assert list(tmp_path.iterdir()) == []


def test_a_data_module_may_ask_for_more_processes_than_this_machine_has(small_corpus) -> None:
    """A sweep builds its cells' data modules to check them, on a machine that may be smaller than theirs."""
    from cslaws.bench.data import TextDataModule

    assert TextDataModule(path="text", data_files=small_corpus, num_proc=10**5).num_proc == 10**5
    with pytest.raises(BenchError, match="data.num_proc 0 is not allowed; give at least 1 tokenizing processes"):
        TextDataModule(path="text", data_files=small_corpus, num_proc=0)


def test_unknown_source_name_is_refused_with_what_is_allowed(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    err = bench_data(["nosuch", "--out", "c"], capsys)
    assert err.startswith("bench: error: dataset path 'nosuch' is not a built-in corpus (shakespeare, kjv, english), "
                          "a `datasets` loader (") and "csv, " in err and "text, " in err and "or an existing directory" in err
    assert list(tmp_path.iterdir()) == []


def test_loader_without_data_files_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """Without data files the loader would read every file of the working directory, binary ones too."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    err = bench_data(["text", "--out", "c"], capsys)
    assert "the `datasets` loader 'text' needs the files to read; give them to --data-files" in err
    assert [p.name for p in tmp_path.iterdir()] == ["blob.bin"]


def test_a_folder_as_a_data_file_is_refused(tmp_path, monkeypatch, capsys) -> None:
    """`datasets` failed on it with a FileNotFoundError traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("words\n")
    err = bench_data(["text", "--data-files", "texts", "--out", "c"], capsys)
    assert "data file 'texts' is a folder; give its files to --data_files, e.g. 'texts/*.txt'" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts"]


@pytest.mark.parametrize("vocab", ["256", str(2**20 + 1), "5000000000"])
def test_a_vocabulary_outside_what_a_bpe_trains_is_refused(vocab, small_corpus, tmp_path, capsys) -> None:
    """5e9 aborted the process in the BPE trainer's allocation (rc 134), leaving a partial folder."""
    err = bench_data(["text", "--data-files", small_corpus[0], "--out", str(tmp_path / "c"), "--vocab-size", vocab], capsys)
    assert f"vocab_size={vocab} is not allowed; a byte-level BPE trained here has from 257 to 1,048,576 tokens" in err
    assert list(tmp_path.iterdir()) == []


def test_out_under_or_at_a_file_is_refused(small_corpus, tmp_path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    for out in (notes, notes / "c"):
        with pytest.raises(BenchError, match=rf"--out '{out}' cannot be created: '{notes}' is a file, not a directory"):
            prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(None, 300), out, num_proc=1, progress=False)
    assert notes.read_text() == "keep me" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_unknown_split_is_refused_before_loading(small_corpus, tmp_path) -> None:
    with pytest.raises(BenchError, match=r"split 'nosuch' is not allowed: 'text' has no split 'nosuch'; its splits are "
                                         r"train; give one of them to --split"):
        Source("text", split="nosuch", data_files=tuple(small_corpus)).check()
    Source("text", split="train[:10%]", data_files=tuple(small_corpus)).check()
    for split in ("train", "test"):  # a directory's splits are its folders (or file names)
        (tmp_path / split).mkdir()
        (tmp_path / split / "a.txt").write_text("some text")
    Source(str(tmp_path), split="train[:50%]+test").check()
    with pytest.raises(BenchError, match="has no split 'validation'; its splits are train, test"):
        Source(str(tmp_path), split="train+validation").check()


def test_empty_directory_is_refused(tmp_path) -> None:
    with pytest.raises(BenchError, match=f"dataset directory '{tmp_path}' holds no data files"):
        Source(str(tmp_path)).check()


def test_sample_mb_must_be_a_positive_number() -> None:
    for mb in (-1.0, 0.0, math.nan, math.inf):
        with pytest.raises(BenchError, match=f"sample_mb={mb} is not allowed; .* a positive number"):
            TokenizerSpec(None, 300, mb).check()
    TokenizerSpec(None, 300, 0.5).check()


def test_builtin_corpus_refuses_options_it_would_ignore(small_corpus) -> None:
    for source in (Source("english", data_files=tuple(small_corpus[:1])), Source("kjv", name="x"), Source("kjv", split="test"),
                   Source("english", text_column="body")):  # the column was a KeyError traceback after loading
        with pytest.raises(BenchError, match="is a built-in corpus: it takes no data files or configuration name, and has "
                                             "one split, train, and one column, text; leave --data-files, --name, --split "
                                             "and --text-column out"):
            source.check()


def test_a_loader_refuses_a_configuration_name(small_corpus) -> None:
    """`datasets` takes any name for its file loaders, and reads the same rows: only the corpus's label changed."""
    with pytest.raises(BenchError, match="the `datasets` loader 'text' has no configurations: --name 'x'"):
        Source("text", name="x", data_files=tuple(small_corpus[:1])).check()


def test_a_missing_text_column_of_a_streamed_source_is_named(tmp_path, monkeypatch, capsys) -> None:
    """A streamed CSV tells its columns only as it is read: a KeyError traceback before."""
    monkeypatch.chdir(tmp_path)
    Path("a.csv").write_text("text,n\nsome words,1\n")
    err = bench_data(["csv", "--data-files", "a.csv", "--streaming", "--text-column", "body", "--out", "c"], capsys)
    assert err == "bench: error: text column 'body' is not in the data set; its columns are ['text', 'n']\n"
    assert not Path("c").exists()


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a folder no one may create in (Linux's /sys)")
def test_out_in_a_folder_that_cannot_be_written_is_refused(small_corpus, monkeypatch) -> None:
    """Refused before the source is read, as one error naming --out and the system's reason (sysfs refuses
    even root; the reason reads 'Operation not permitted', or 'Read-only file system' in some containers)."""
    monkeypatch.setattr(Source, "load", lambda *a: pytest.fail("the source was read"))
    with pytest.raises(BenchError, match=r"--out '/sys/cslaws-c' cannot be created: \w.* \(/sys/\.cslaws-c\.partial-\d+\); "
                                         "choose another --out, in a folder you can write to"):
        prepare(Source("text", data_files=tuple(small_corpus)), TokenizerSpec(None, 300), Path("/sys/cslaws-c"),
                num_proc=1, progress=False)


def test_unreadable_data_files_are_named_with_the_cause(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9\n")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bad.json").write_text('{"text": "a"\n')
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a.txt").write_bytes(b"caf\xe9\n")
    cases = [
        (["text", "--data-files", "latin.txt"], "data files 'latin.txt' could not be read: not UTF-8 text (UnicodeDecodeError: "
                                                "'utf-8' codec can't decode byte 0xe9 in position 3"),
        (["text", "--data-files", "empty.txt"], "data files 'empty.txt' could not be read: no rows (empty?) (SchemaInferenceError"),
        (["json", "--data-files", "bad.json"], "data files 'bad.json' could not be read: not valid JSON for the `datasets` "
                                               "loader 'json' (ArrowInvalid: JSON parse error"),
        (["latin"], "dataset directory 'latin' could not be read: not UTF-8 text (UnicodeDecodeError"),
    ]
    # streamed, a source is parsed only as its rows are read, after loading: the same error, from there
    streamed = [([*argv, "--streaming"], message) for argv, message in cases if argv[-1] != "empty.txt"]
    before = sorted(p.name for p in tmp_path.iterdir())
    for argv, message in cases + streamed:
        err = bench_data([*argv, "--out", "c", "--num-proc", "1", "--vocab-size", "300"], capsys)
        assert err.startswith(f"bench: error: {message}") and len(err.splitlines()) == 1, err  # the loader's log line too
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no partial folder


def test_directory_without_supported_data_files_is_refused(prepared, tmp_path, monkeypatch, capsys) -> None:
    """A folder of files `datasets` has no loader for (a results .db, a prepared corpus's .bin) is refused before
    any work, naming the loaders that read files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "results.db").write_bytes(b"SQLite format 3\0")
    err = bench_data(["d", "--out", "c"], capsys)
    assert err == "bench: error: dataset directory 'd' holds no data files that a `datasets` loader reads (arrow, csv, " \
                  "json, pandas, parquet, text, webdataset, xml files, by their extensions); give a directory of such " \
                  "files or one saved by `datasets`\n"
    # a README.md (a dataset card, read by `datasets` itself) does not make the folder readable: the same one line
    (tmp_path / "d" / "README.md").write_text("# my results\n")
    assert bench_data(["d", "--out", "c"], capsys) == err
    err = bench_data([str(prepared), "--out", "c"], capsys)
    assert f"it is a prepared corpus, which bench fit reads with --data.path {prepared};" in err
    assert [p.name for p in tmp_path.iterdir()] == ["d"]
