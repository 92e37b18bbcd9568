import re
import sqlite3
from contextlib import closing

import pytest

from cslaws.bench.store import ADDED_COLUMNS, SCHEMA, ResultsStore, RunRecord, check_is_store, read_sqlite
from cslaws.errors import BenchError


def record(**kw) -> RunRecord:
    args = dict(label="int4", model="nano", n_params=26784, tokens=1000, bits_per_value=4.125, seed=0,
                dataset="d", tokenizer="t", code_version="0", weight={"class_path": "x.Int", "init_args": {"bits": 4}})
    args.update(kw)
    return RunRecord(**args)


def test_run_lifecycle_and_curve(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    rid = store.start_run(record())
    assert store.runs() == [] and store.runs("running")[0].run_id == rid
    store.log_point(rid, 10, 1000, 5.0, None)
    store.log_point(rid, 20, 2000, None, 4.5)
    store.finish(rid, 4.5)
    (run,) = store.runs()
    assert run.final_val_loss == 4.5 and run.weight == {"class_path": "x.Int", "init_args": {"bits": 4}}
    assert run.activation is None and run.finished_at >= run.started_at
    assert store.curve(rid) == [(10, 1000, 5.0, None), (20, 2000, None, 4.5)]


def test_a_spec_that_is_not_json_is_an_error_naming_the_store_and_the_run(tmp_path) -> None:
    from cslaws.bench.store_cli import read_store

    store = ResultsStore(tmp_path / "r.db")
    store.finish(store.start_run(record()), 4.5)
    rid = store.start_run(record(seed=1))
    store.finish(rid, 4.4)
    with closing(sqlite3.connect(tmp_path / "r.db")) as db, db:
        db.execute("UPDATE runs SET weight = '{bad' WHERE run_id = ?", (rid,))
    for read in (lambda: ResultsStore(tmp_path / "r.db", create=False).runs(), lambda: read_store(tmp_path / "r.db")):
        with pytest.raises(BenchError, match=f"store '.*r.db': run {rid} has a 'weight' that is not JSON .*restore it"):
            read()


@pytest.mark.parametrize("column, value, said", [("n_params", "'abc'", "n_params='abc', which is not int"),
                                                ("capacity", "'[]'", "capacity=[], which is not dict"),
                                                ("bits_per_value", "0", "bits_per_value=0.0; storage bits are positive"),
                                                ("tokens", "2.5", "tokens=2.5, which is not int")])
def test_a_value_of_the_wrong_kind_is_an_error_naming_the_store_and_the_run(tmp_path, column, value, said) -> None:
    """Each was a TypeError or ZeroDivisionError deep in the leaderboard's fit."""
    store = ResultsStore(tmp_path / "r.db")
    rid = store.start_run(record())
    store.finish(rid, 4.5)
    with closing(sqlite3.connect(tmp_path / "r.db")) as db, db:
        db.execute(f"UPDATE runs SET {column} = {value} WHERE run_id = ?", (rid,))
    with pytest.raises(BenchError, match=f"store '.*r.db': run {rid} has {re.escape(said)}; the file was edited or damaged"):
        ResultsStore(tmp_path / "r.db", create=False).runs()


def test_failed_runs_are_not_finished(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    rid = store.start_run(record(cell="c1"))
    store.fail(rid, "boom")
    assert store.runs() == [] and store.runs("failed")[0].error == "boom"
    assert store.finished_cells() == set()


def test_store_is_wal_and_rejects_unknown_status(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError, match="unknown status 'done'"):
        store.runs("done")


def test_add_finished_needs_a_loss(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    with pytest.raises(ValueError, match="finite final_val_loss"):
        store.add_finished(record())
    store.add_finished(record(final_val_loss=3.0), curve=[(1, 100, 4.0, 3.9)])
    (run,) = store.runs()
    assert store.curve(run.run_id) == [(1, 100, 4.0, 3.9)]


def test_resume_reopens_the_row_and_cuts_its_curve_at_the_checkpoint(tmp_path) -> None:
    store = ResultsStore(tmp_path / "r.db")
    rid = store.start_run(record(pid=1, host="a"))
    for step in (4, 8, 12):
        store.log_point(rid, step, step * 100, 5.0, None)
    store.log_point(rid, 8, 800, None, 4.9)
    store.fail(rid, "killed")
    store.resume_run(rid, 8, host="b", pid=2)
    (run,) = store.runs("running")
    assert (run.run_id, run.host, run.pid, run.error, run.finished_at) == (rid, "b", 2, None, None)
    assert store.curve(rid) == [(4, 400, 5.0, None), (8, 800, 5.0, None), (8, 800, None, 4.9)]
    store.set_trained(rid, 20, 2000, 0.5)
    store.finish(rid, 4.0)
    (run,) = store.runs()
    assert (run.steps, run.tokens, run.epochs) == (20, 2000, 0.5)
    with pytest.raises(ValueError, match="already finished; there is nothing to resume"):
        store.resume_run(rid, 8, host="c", pid=3)
    with pytest.raises(ValueError, match="run 99, which is not in the store"):
        store.resume_run(99, 8, host="c", pid=3)


def test_a_foreign_sqlite_file_is_refused_and_left_as_it_was(tmp_path) -> None:
    foreign = tmp_path / "other.db"
    with closing(sqlite3.connect(foreign)) as db, db:
        db.execute("CREATE TABLE foo (x)")
    before = foreign.read_bytes()
    with pytest.raises(BenchError, match=r"other.db is a SQLite database of another application \(tables: foo\)"):
        ResultsStore(foreign)
    assert foreign.read_bytes() == before
    # a table named `runs` does not make a store: its columns must be a store's
    with closing(sqlite3.connect(foreign)) as db, db:
        db.execute("CREATE TABLE runs (x)")
        db.execute("INSERT INTO runs VALUES (1)")
    before = foreign.read_bytes()
    for create in (True, False):
        with pytest.raises(BenchError, match=r"other.db has a `runs` table without a results store's columns \(activation, bits_per_value"):
            ResultsStore(foreign, create=create)
    assert foreign.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]
    # an empty file, an empty SQLite file and a new path become stores
    (tmp_path / "zero.db").touch()
    with closing(sqlite3.connect(tmp_path / "empty.db")) as db:
        db.execute("PRAGMA journal_mode=WAL")
    for name in ("zero.db", "empty.db", "new.db"):
        ResultsStore(tmp_path / name).add_finished(record(final_val_loss=3.0))
        assert len(ResultsStore(tmp_path / name, create=False).runs()) == 1


def test_reading_leaves_no_files_beside_the_store_and_sees_a_writer_s_commits(tmp_path) -> None:
    path = tmp_path / "r.db"
    ResultsStore(path).add_finished(record(final_val_loss=3.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]
    check_is_store(path)
    assert read_sqlite(path, lambda db: db.execute("SELECT count(*) FROM runs").fetchone()[0]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db"], "a read-only open left a -wal or -shm"
    # a process holding the store open, its last commit still in the -wal only: read under SQLite's locks
    with closing(sqlite3.connect(path)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        with writer:
            writer.execute("UPDATE runs SET final_val_loss=2.5")
        assert read_sqlite(path, lambda db: db.execute("SELECT final_val_loss FROM runs").fetchone()[0]) == 2.5


def test_a_store_opened_to_read_is_not_written(tmp_path) -> None:
    """Reading (`create=False`) neither turns a rollback-journal store into WAL nor needs the file writable."""
    path = tmp_path / "r.db"
    store = ResultsStore(path)
    run_id = store.add_finished(RunRecord(label="dense", model="nano", n_params=26784, tokens=1000, bits_per_value=16.0,
                                          seed=0, dataset="d", tokenizer="t", code_version="v", cell="c", final_val_loss=3.0),
                                curve=[(1, 1000, 3.5, 3.0)])
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
    before = path.read_bytes()
    reader = ResultsStore(path, create=False)
    assert [r.final_val_loss for r in reader.runs()] == [3.0] and reader.curve(run_id) == [(1, 1000, 3.5, 3.0)]
    assert reader.finished_cells() == {"c"}
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["r.db"]


def test_a_store_of_an_older_schema_reads_as_it_is_and_migrates_when_written(tmp_path) -> None:
    """A store from before the columns of ADDED_COLUMNS: read without them (None), migrated when opened to write."""
    path = tmp_path / "old.db"
    first_schema = SCHEMA
    for column, kind in ADDED_COLUMNS.items():
        first_schema = first_schema.replace(f"    {column} {kind},\n", "")
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(first_schema)
        db.execute("INSERT INTO runs (label, model, n_params, tokens, bits_per_value, weight, activation, seed, dataset, "
                   "tokenizer, code_version, config, status, final_val_loss, started_at) VALUES ('int4', 'nano', 26784, "
                   "1000, 4.4, NULL, NULL, 0, 'd', 't', 'v', '', 'finished', 3.0, 1.0)")
    with closing(sqlite3.connect(path)) as db:
        have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    assert not have & set(ADDED_COLUMNS), "the test builds the first schema"
    (run,) = ResultsStore(path, create=False).runs()
    assert (run.final_val_loss, run.capacity, run.activation_bits, run.val_set) == (3.0, None, None, None)
    ResultsStore(path)  # opened to write: migrated
    with closing(sqlite3.connect(path)) as db:
        assert set(ADDED_COLUMNS) <= {r[1] for r in db.execute("PRAGMA table_info(runs)")}
    assert ResultsStore(path).runs()[0].final_val_loss == 3.0
