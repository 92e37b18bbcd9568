"""`bench store merge`: runs folded without duplicates, conflicts refused before anything is written, and
the input stores never changed."""

from __future__ import annotations

import hashlib
from contextlib import closing
from pathlib import Path

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.bench.store_cli import read_store


def _record(cell: str, started_at: float, loss: float = 3.0) -> RunRecord:
    return RunRecord(label="int4", model="nano", n_params=26784, tokens=131072, bits_per_value=4.42, seed=0,
                     dataset="d", tokenizer="t", code_version="v", cell=cell, started_at=started_at,
                     final_val_loss=loss, finished_at=started_at + 10, host="h", pid=7)


def _store(path: Path, runs: list[tuple[str, float, float]]) -> Path:
    store = ResultsStore(path)
    for cell, start, loss in runs:
        store.add_finished(_record(cell, start, loss), curve=[(1, 100, 4.0, None), (2, 200, 3.5, loss)])
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_merge_folds_parts_without_duplicates(tmp_path, capsys) -> None:
    a = _store(tmp_path / "a.db", [("c1", 1.0, 3.0), ("c2", 2.0, 3.1)])
    b = _store(tmp_path / "b.db", [("c2", 2.0, 3.1), ("c3", 3.0, 3.2)])  # c2: the same run, copied
    ResultsStore(b).start_run(_record("c4", 4.0))
    before = {p: _digest(p) for p in (a, b)}
    out = tmp_path / "out.db"
    assert bench(["store", "merge", str(out), str(a), str(b)]) == 0
    assert "merged 4 run(s) from 2 store(s)" in capsys.readouterr().out
    merged = read_store(out)
    assert sorted((r.record.cell, r.record.status) for r in merged) == [
        ("c1", "finished"), ("c2", "finished"), ("c3", "finished"), ("c4", "running")]
    c3 = next(r for r in merged if r.record.cell == "c3")
    assert c3.curve == [(1, 100, 4.0, None), (2, 200, 3.5, 3.2)] and c3.record.final_val_loss == 3.2
    assert c3.record.finished_at == 13.0 and c3.record.host == "h"  # as recorded, not re-stamped
    assert {p: _digest(p) for p in (a, b)} == before, "inputs are never changed"
    # merging again adds nothing
    assert bench(["store", "merge", str(out), str(a), str(b)]) == 0
    assert "merged 0 run(s)" in capsys.readouterr().out and len(read_store(out)) == 4


def test_conflicting_rows_are_refused_and_nothing_is_written(tmp_path, capsys) -> None:
    a = _store(tmp_path / "a.db", [("c1", 1.0, 3.0), ("c2", 2.0, 3.1)])
    b = _store(tmp_path / "b.db", [("c2", 2.0, 3.9), ("c3", 3.0, 3.2)])  # c2: same run, other result
    out = _store(tmp_path / "out.db", [("c0", 0.5, 3.0)])
    before = _digest(out)
    assert bench(["store", "merge", str(out), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "bench: error: 1 run(s) are recorded differently in two stores; nothing was merged" in err
    assert "(cell c2, label int4) differ in final_val_loss, loss curve" in err
    assert _digest(out) == before


@pytest.mark.parametrize("argv, message", [
    (["store"], "bench store needs an action, one of merge, import"),
    (["store", "merge", "OUT", "OUT"], "is also an input"),
    (["store", "merge", "OUT", "missing.db"], "no results store at missing.db; train runs into it first (bench fit, "
                                              "bench sweep), or give the path of one"),
    (["store", "merge", "OUT", "notsqlite.db"], "notsqlite.db is not a results store"),
    # argparse's own refusals, in bench's one line (they were its usage block and `bench store merge: error:`)
    (["store", "merge", "OUT"], "bench: error: store merge: the following arguments are required: inputs (the options: "
                                "bench store merge --help)"),
    (["data", "prepare"], "bench: error: data prepare: the following arguments are required: source, --out"),
])
def test_bad_merge_input(tmp_path, monkeypatch, capsys, argv, message) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notsqlite.db").write_text("hello")
    _store(tmp_path / "OUT", [])
    assert bench(argv) == 2
    assert message in capsys.readouterr().err


def test_merge_leaves_nothing_beside_its_inputs(tmp_path, capsys) -> None:
    """Opening a WAL-mode store read-only creates its -wal and -shm; inputs are read without them."""
    a = _store(tmp_path / "a.db", [("c1", 1.0, 3.0)])
    (tmp_path / "notes.txt").write_text("not a store\n")
    files = sorted(p.name for p in tmp_path.iterdir())
    assert bench(["store", "merge", str(tmp_path / "notes.txt"), str(a)]) == 2
    assert "notes.txt is not a results store" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert bench(["store", "merge", str(tmp_path / "out.db"), str(a)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(files + ["out.db"])


def _imported(row: str, started_at: float, source: str) -> RunRecord:
    return RunRecord(label="w4a4", model="30M", n_params=30_000_000, tokens=3_000_000_000, bits_per_value=4.0, seed=0,
                     dataset="C4", tokenizer="gpt2", code_version="imported", config=row, source=source,
                     started_at=started_at, final_val_loss=3.1, finished_at=started_at)


def test_stores_that_imported_the_same_file_merge_into_one_copy(tmp_path, capsys) -> None:
    """Two imports of one CSV (other file names, other times) are the same runs; a row the file lists twice
    is two runs, in the merge as in the import."""
    rows = ["N: 30M\nloss: 3.1", "N: 30M\nloss: 3.1", "N: 50M\nloss: 3.0"]
    for name, t in (("a", 100.0), ("b", 200.0)):
        store = ResultsStore(tmp_path / f"{name}.db")
        for k, row in enumerate(rows, 1):
            store.add_finished(_imported(row, t + k, f"imported: {name}.csv row {k}"))
    out = tmp_path / "out.db"
    assert bench(["store", "merge", str(out), str(tmp_path / "a.db"), str(tmp_path / "b.db")]) == 0
    assert "merged 3 run(s)" in capsys.readouterr().out
    assert sorted(r.record.config for r in read_store(out)) == sorted(rows)
    # the same rows under another comparability key are other runs
    other = _imported(rows[2], 300.0, "imported: c.csv row 3")
    other.val_set = "C4 validation v2"
    ResultsStore(tmp_path / "c.db").add_finished(other)
    assert bench(["store", "merge", str(out), str(tmp_path / "c.db")]) == 0
    assert len(read_store(out)) == 4


def test_a_later_record_of_a_run_replaces_the_one_merged_before(tmp_path, capsys) -> None:
    """A store copied while its run was running, then again after it finished: the finished record replaces
    the running one. A record older than the one held (a stale copy) is skipped."""
    a = ResultsStore(tmp_path / "a.db")
    run_id = a.start_run(_record("c1", 1.0))
    a.set_trained(run_id, 10, 2560, 0.01)
    a.log_point(run_id, 10, 2560, 4.2)
    stale = tmp_path / "stale.db"
    stale.write_bytes((tmp_path / "a.db").read_bytes())
    out = tmp_path / "out.db"
    assert bench(["store", "merge", str(out), str(tmp_path / "a.db")]) == 0
    a.fail(run_id, "killed")
    a.resume_run(run_id, 10, "h", 8)
    a.set_trained(run_id, 20, 5120, 0.02)
    a.log_point(run_id, 20, 5120, 3.9, 3.8)
    a.finish(run_id, 3.8)
    capsys.readouterr()
    assert bench(["store", "merge", str(out), str(tmp_path / "a.db")]) == 0
    assert "1 held run(s) replaced" in capsys.readouterr().out
    (merged,) = read_store(out)
    assert merged.record.status == "finished" and merged.record.steps == 20 and merged.record.final_val_loss == 3.8
    assert merged.curve == [(10, 2560, 4.2, None), (20, 5120, 3.9, 3.8)]
    before = _digest(out)
    assert bench(["store", "merge", str(out), str(stale)]) == 0
    assert "1 earlier record(s)" in capsys.readouterr().out
    assert _digest(out) == before


@pytest.mark.parametrize("order", ["running first", "failed first"])
def test_a_run_failed_at_the_step_it_was_copied_running_is_failed_whatever_the_order(tmp_path, order, capsys) -> None:
    """A process killed at step 10 leaves its row `running`; a copy is taken; a later run on its host fails the
    row, at the same step. Merged in either order, the store holds the failed record, not a run that runs forever."""
    a = ResultsStore(tmp_path / "a.db")
    run_id = a.start_run(_record("c1", 1.0))
    a.set_trained(run_id, 10, 2560, 0.01)
    running = tmp_path / "running.db"
    running.write_bytes((tmp_path / "a.db").read_bytes())
    a.fail(run_id, "its process ended without recording why (killed)")
    inputs = [running, tmp_path / "a.db"] if order == "running first" else [tmp_path / "a.db", running]
    assert bench(["store", "merge", str(tmp_path / "out.db"), *map(str, inputs)]) == 0
    (merged,) = read_store(tmp_path / "out.db")
    assert (merged.record.status, merged.record.steps, merged.record.error) == ("failed", 10, "its process ended without recording why (killed)")


def test_merge_into_an_empty_file_or_a_folder(tmp_path, capsys) -> None:
    """An empty file may hold a store (as `bench fit` takes it); a folder may not, and is named as one (it was
    'no results store at ...; ... or pass --store PATH', an option merge does not have)."""
    _store(tmp_path / "a.db", [("c1", 1.0, 3.0)])
    (tmp_path / "empty.db").touch()
    assert bench(["store", "merge", str(tmp_path / "empty.db"), str(tmp_path / "a.db")]) == 0
    assert [r.record.cell for r in read_store(tmp_path / "empty.db")] == ["c1"]
    (tmp_path / "folder").mkdir()
    assert bench(["store", "merge", str(tmp_path / "folder"), str(tmp_path / "a.db")]) == 2
    assert f"the results store {tmp_path / 'folder'} is a folder; a store is a file" in capsys.readouterr().err


def test_a_store_locked_by_another_writer_is_one_error_and_stays_as_it_was(tmp_path, monkeypatch, capsys) -> None:
    import sqlite3

    _store(tmp_path / "a.db", [("c1", 1.0, 3.0)])
    _store(tmp_path / "out.db", [("c0", 0.5, 3.0)])
    before = _digest(tmp_path / "out.db")
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, **{**k, "timeout": 0.05}) if "timeout" in k else connect(*a, **k))
    with closing(connect(tmp_path / "out.db", isolation_level=None)) as writer:
        writer.execute("BEGIN EXCLUSIVE")
        assert bench(["store", "merge", str(tmp_path / "out.db"), str(tmp_path / "a.db")]) == 2
        writer.execute("ROLLBACK")
    err = capsys.readouterr().err
    assert f"could not write {tmp_path / 'out.db'}: database is locked; nothing was merged" in err and "Traceback" not in err
    assert _digest(tmp_path / "out.db") == before


def test_store_help_lists_its_actions(capsys) -> None:
    assert bench(["store", "--help"]) == 0
    out = capsys.readouterr().out
    assert "bench store merge OUT IN" in out and "bench store import" in out
