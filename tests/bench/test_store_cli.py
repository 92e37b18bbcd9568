"""`bench store merge`: runs folded without duplicates, conflicts refused before anything is written, and
the input stores never changed."""

from __future__ import annotations

import hashlib
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
        store.add_finished(_record(cell, start, loss), [(1, 100, 4.0, None), (2, 200, 3.5, loss)])
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
    (["store", "merge", "OUT", "missing.db"], "no results store at missing.db"),
    (["store", "merge", "OUT", "notsqlite.db"], "notsqlite.db is not a results store"),
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
