"""`bench store import`: QuEST's 104 runs into a store, each with its label's config, then fitted by
`bench law unified` (all 104: the sparse family's one format with its C and Lsat pinned)."""

import csv
import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore
from cslaws.laws.capacity import load_format_config

RUNS = Path(__file__).parents[1] / "data" / "quest" / "runs.csv"
CONFIGS = Path(__file__).parents[2] / "configs" / "formats" / "quest"
#: `bench store import` with QuEST's comparability key, which the importer has no default for
IMPORT = ["store", "import", "--dataset", "C4 (QuEST)", "--tokenizer", "GPT-2 BPE (QuEST, vocabulary padded to 50304)",
          "--val-set", "C4 validation (QuEST)"]


def test_imports_every_run_with_its_config(tmp_path: Path) -> None:
    store = tmp_path / "q.db"
    # the shipped copy, by its name under the package's data, as for `bench law fit` (from any folder)
    assert bench([*IMPORT, "--runs", "data/quest/runs.csv", "--configs", "formats/quest/", "--store", str(store)]) == 0
    runs = ResultsStore(store).runs()
    rows = list(csv.DictReader(RUNS.open()))
    assert len(runs) == len(rows) == 104
    specs = {}
    for f in CONFIGS.glob("*.yaml"):
        label, w, a = load_format_config(f)
        specs[label] = (None if w is None else w.spec(), None if a is None else a.spec())
    for r in runs:
        k = int(r.source.rsplit(" ", 1)[1])
        row = rows[k - 1]
        assert r.source == f"imported: runs.csv row {k}"
        assert (r.label, r.n_params, r.tokens, r.final_val_loss) == (row["format"], int(row["N"]), int(row["D"]), float(row["loss"]))
        assert (r.weight, r.activation) == specs[r.label]
    assert len({r.comparability for r in runs}) == 1
    dense = next(r for r in runs if r.label == "dense")
    assert dense.bits_per_value == 16.0 and {r.model for r in runs} == {"30M", "50M", "100M", "200M", "430M", "800M"}


def test_exclude_and_unknown_labels(tmp_path: Path, capsys) -> None:
    store = tmp_path / "q.db"
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", str(CONFIGS), "--store", str(store),
                  "--exclude", "w4a4-4:8", "dense"]) == 0
    assert len(ResultsStore(store).runs()) == 104 - 6 - 6
    # an option given twice adds to the first (the last one alone was kept: w4a4-4:8's runs were imported)
    again = tmp_path / "again.db"
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", str(CONFIGS), "--store", str(again),
                  "--exclude", "w4a4-4:8", "--exclude", "dense"]) == 0
    assert len(ResultsStore(again).runs()) == 104 - 6 - 6
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D,loss,format\n1000,2000,3.0,w9a9\n")
    assert bench([*IMPORT, "--runs", str(bad), "--configs", str(CONFIGS), "--store", str(tmp_path / "b.db")]) == 2
    assert "label 'w9a9' has no config" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists() or not ResultsStore(tmp_path / "b.db").runs()


def test_a_folder_of_other_configs_is_refused(tmp_path: Path, capsys) -> None:
    # the sweep matrices are configs, but no format's: a ValueError traceback before
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", "matrix/", "--store", str(tmp_path / "m.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and "has no `model:` section" in err and "Traceback" not in err
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("option", ["--dataset", "--tokenizer", "--val-set"])
def test_an_empty_comparability_field_is_refused(option, tmp_path: Path, capsys) -> None:
    """Runs of an empty key would be fitted beside any other store's: nothing is written."""
    argv = list(IMPORT)
    argv[argv.index(option) + 1] = " "
    assert bench([*argv, "--runs", str(RUNS), "--configs", str(CONFIGS), "--store", str(tmp_path / "e.db")]) == 2
    assert f"bench: error: {option} ' ' is empty" in capsys.readouterr().err
    assert not (tmp_path / "e.db").exists()


def test_all_104_imported_runs_fit_the_unified_law(tmp_path: Path, capsys) -> None:
    """`w4a4-4:8` alone is the sparse family (one GMSE): its C and Lsat pinned, its F is fitted with the rest."""
    store = tmp_path / "q.db"
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(store)]) == 0
    capsys.readouterr()
    assert bench(["law", "unified", "--store", str(store), "--fix", "sparse.C=1.39", "sparse.Lsat=1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    law = out["law"]
    assert law["runs"] == 104 and sum(r["runs"] for r in out["rows"]) == 104
    assert (law["family"]["sparse"]["C"], law["family"]["sparse"]["Lsat"]) == (1.39, 1.0)
    assert law["rmse_log"] < 0.02  # the law explains QuEST's losses to within 2% (RMS)
    eff = {r["label"]: r["eff_unified"] for r in out["rows"]}
    assert eff["w1a1"] < eff["w2a2"] < eff["w3a3"] < eff["w4a4"] < eff["w8a8"] < 1.0 and eff["w4a4-4:8"] < eff["w4a4"]


def test_importing_again_skips_the_runs_already_there(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("".join(RUNS.read_text().splitlines(keepends=True)[:4]))
    store = tmp_path / "q.db"
    argv = [*IMPORT, "--runs", str(runs), "--configs", "formats/quest/", "--store", str(store)]
    assert bench(argv) == 0
    capsys.readouterr()
    assert bench(argv) == 0
    out = capsys.readouterr().out
    assert "imported 0 runs" in out and "3 already there" in out
    assert len(ResultsStore(store).runs(None)) == 3, "a run imported twice is counted twice"
    assert all(r.capacity["weight"]["gmse"] > 0 for r in ResultsStore(store).runs(None) if r.label != "dense")
    # the same rows on another validation set are other runs, not the ones held
    assert bench([*argv, "--val-set", "C4 validation v2"]) == 0
    assert "imported 3 runs" in capsys.readouterr().out
    assert sorted(r.val_set for r in ResultsStore(store).runs(None)) == ["C4 validation (QuEST)"] * 3 + ["C4 validation v2"] * 3


def test_the_same_rows_under_another_name_or_with_rows_appended_are_not_imported_twice(tmp_path: Path, capsys) -> None:
    lines = RUNS.read_text().splitlines(keepends=True)
    first, copy = tmp_path / "runs.csv", tmp_path / "quest copy.csv"
    first.write_text("".join(lines[:4]))
    copy.write_text("".join([*lines[:6], lines[5]]))  # two rows appended, the second of them twice
    store = tmp_path / "q.db"
    for runs, said in [(first, "imported 3 runs"), (copy, "imported 3 runs"), (copy, "imported 0 runs")]:
        assert bench([*IMPORT, "--runs", str(runs), "--configs", "formats/quest/", "--store", str(store)]) == 0
        assert said in capsys.readouterr().out
    held = ResultsStore(store).runs(None)
    assert len(held) == 6, "a run imported again is counted twice"
    # the repeated row is two runs: a file that lists it twice holds two runs it cannot tell apart
    assert sorted(r.source for r in held if "copy" in r.source) == [f"imported: quest copy.csv row {k}" for k in (4, 5, 6)]


@pytest.mark.parametrize("csv_text, message", [
    ("N,D,loss,format\n1e6,-5,3.0,dense\n", "bad.csv row 1: D = '-5' is not a positive whole number"),
    ("N,D,loss,format\n0,1e9,3.0,dense\n", "bad.csv row 1: N = '0' is not a positive whole number"),
    ("N,D,loss,format\n1e6,inf,3.0,dense\n", "bad.csv row 1: D = 'inf' is not a positive whole number"),
    ("N,D,loss,format\n1e6,1e9,3.0,dense\nnan,1e9,3.0,dense\n", "bad.csv row 2: N = 'nan' is not a positive whole number"),
    ("N,D,loss,format,vocab_size\n1e6,1e9,3.0,dense,50k\n", "bad.csv row 1: vocab_size = '50k' is not a number"),
    ("N,D,loss,format,sequence_length\n1e6,1e9,3.0,dense,512.5\n",
     "bad.csv row 1: sequence_length = '512.5' is not a positive whole number"),
    ("N,D,loss,format\n1e6,1e9,0,dense\n", "bad.csv row 1: loss 0.0 is not a positive finite number"),
    # past SQLite's INTEGER, after a good row: it was an OverflowError with that row written
    ("N,D,loss,format\n1e6,1e9,3.0,dense\n1e6,1e30,3.0,dense\n",
     "bad.csv row 2: D = '1e30' is not a positive whole number of at most 9.22e+18"),
    ("N,D,loss,format\n1e6,9223372036854775808,3.0,dense\n", "bad.csv row 1: D = '9223372036854775808' is not a positive whole"),
    ("N,D,loss,format\n1e6,1e9,3.0,dense\n1e6,1e9,-3,dense\n", "bad.csv row 2: loss -3.0 is not a positive finite number"),
    ("format,N,D,loss\ndense,1e6,1e9\n", "bad.csv: row 1 after the header has 3 field(s), the header 4"),
    ("format,N,D,loss\ndense,1e6,1e9,3.0,w4a4\n", "bad.csv: row 1 after the header has 5 field(s), the header 4"),
    (None, "bad.csv': no such file, nor a shipped data set (data/chinchilla/"),
    (b"SQLite format 3\x00\xde\xad\xbe\xef", "bad.csv: not a CSV text file"),  # not text
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path: Path, capsys, csv_text, message) -> None:
    bad = tmp_path / "bad.csv"
    if isinstance(csv_text, str):
        bad.write_text(csv_text)
    elif csv_text is not None:
        bad.write_bytes(csv_text)
    store = tmp_path / "s.db"
    assert bench([*IMPORT, "--runs", str(bad), "--configs", "formats/quest/", "--store", str(store)]) == 2
    err = capsys.readouterr().err
    assert "bench: error: " in err and message in err
    assert not store.exists()


def test_a_format_that_cannot_compress_the_size_its_n_names_is_refused(tmp_path: Path, capsys) -> None:
    """N 13,944 is the suite's `14k`, whose rows of 24 no group of 32 divides: a ValueError traceback, once."""
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,loss,format\n13944,100000,5.0,mxfp4\n")
    assert bench([*IMPORT, "--runs", str(runs), "--configs", "formats", "--store", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err
    assert "runs.csv row 1: label 'mxfp4' with N = 13,944, the N of size '14k': the formats cannot be applied" in err
    assert "does not divide the row length 24" in err and not (tmp_path / "s.db").exists()


def test_digits_are_read_exactly(tmp_path: Path) -> None:
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,loss,format\n1000000,9007199254740993,3.0,dense\n")  # 2^53 + 1: a float reads 2^53
    assert bench([*IMPORT, "--runs", str(runs), "--configs", "formats/quest/", "--store", str(tmp_path / "s.db")]) == 0
    (run,) = ResultsStore(tmp_path / "s.db").runs()
    assert run.tokens == 2**53 + 1


def test_the_comparability_key_has_no_default(tmp_path: Path, capsys) -> None:
    """A default key would name QuEST's corpus for any file, and its runs would be fitted with QuEST's."""
    argv = ["store", "import", "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(tmp_path / "s.db")]
    assert bench(argv) == 2
    assert capsys.readouterr().err.strip() == ("bench: error: store import: the following arguments are required: --dataset, "
                                               "--tokenizer, --val-set (the options: bench store import --help)")
    assert not (tmp_path / "s.db").exists()


def test_exclude_names_the_labels_of_the_csv(tmp_path: Path, capsys) -> None:
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(tmp_path / "s.db"),
                  "--exclude", "dense", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "--exclude nosuch: no such label in" in err and "labels: dense, fp4, w1, w1a1," in err
    assert not (tmp_path / "s.db").exists()


def test_a_foreign_sqlite_store_is_refused_and_unchanged(tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "other.db"
    with closing(sqlite3.connect(foreign)) as db, db:
        db.execute("CREATE TABLE foo (x)")
    before = foreign.read_bytes()
    assert bench([*IMPORT, "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(foreign)]) == 2
    assert "SQLite database of another application (tables: foo)" in capsys.readouterr().err
    assert foreign.read_bytes() == before
