"""`bench store`: operations on results stores.

    bench store merge OUT IN [IN ...]     fold the runs of stores IN into OUT (created if missing)
    bench store import ...                runs published elsewhere into a store (`cslaws.bench.importer`)

Merge: the array tasks of `bench sweep --emit slurm` each write their own store; merge folds them (or any
stores) into one. A run's identity is (cell, label, model, seed, code_version, started_at): the start time
is taken when the run is created and survives a resume, so the same run copied twice is recognised. An
imported run's identity is the importer's (its CSV row, label, N, D, loss and comparability key: two stores
that imported the same file hold the same runs) and, for a row a file lists twice, which copy it is.
A run whose identity OUT (or an earlier input) already holds is skipped when everything recorded about it is
the same (every stored field but the row id and the training process's host and pid, and, for an imported
run, the file name and time of its import; and its whole loss curve). When the records differ, a finished
record supersedes an unfinished one (a copy taken while the run was `running`, or had `failed` before it
was resumed), and of two unfinished ones the one that trained more steps supersedes the other (at equal
steps a `failed` record a `running` one, and a later failure an earlier one, whichever input comes first); two
finished records that differ conflict, and the merge refuses with the list of conflicts before writing
anything. The inputs are opened read-only and never changed; OUT is written in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from cslaws.bench.cli import path_argument
from cslaws.bench.store import (ADDED_COLUMNS, ResultsStore, RunRecord, _from_row, _tables, check_can_hold_store, check_is_store,
                                 insert_run, read_sqlite)
from cslaws.console import console
from cslaws.errors import BenchError, BenchParser

IDENTITY = ("cell", "label", "model", "seed", "code_version", "started_at")
#: Not results: the row number differs between stores, host and pid name whichever process trained last.
BOOKKEEPING = ("run_id", "host", "pid")
#: Not results of an imported run either: the file's name and the time it was imported.
IMPORT_BOOKKEEPING = ("source", "started_at", "finished_at")

Curve = list[tuple[int, int, float | None, float | None]]


@dataclass
class StoredRun:
    record: RunRecord
    curve: Curve
    path: Path
    #: Which copy of its import identity this run is in its store (a file may list a row twice).
    copy: int = 0

    @property
    def identity(self) -> tuple:
        if self.record.imported:
            return ("imported", *self.record.import_identity, self.copy)
        return tuple(getattr(self.record, k) for k in IDENTITY)

    def content(self) -> tuple[dict, Curve]:
        skip = BOOKKEEPING + (IMPORT_BOOKKEEPING if self.record.imported else ())
        data = {k: v for k, v in asdict(self.record).items() if k not in skip}
        return data, self.curve

    def supersedes(self, other: "StoredRun") -> bool | None:
        """Whether this record of a run replaces `other`, a different record of the same run: a finished
        record replaces an unfinished one, and of two unfinished ones the one trained further, then a `failed`
        one a `running` one (a process killed at that step, found dead later), then the later failure; None
        when neither can (two finished records that differ conflict). The order of the inputs never decides."""
        mine, theirs = self.record.status == "finished", other.record.status == "finished"
        if mine and theirs:
            return None
        if mine != theirs:
            return mine
        return self._progress() > other._progress()

    def _progress(self) -> tuple[int, bool, float]:
        record = self.record
        return record.steps or 0, record.status == "failed", record.finished_at or 0.0


def _runs_and_points(db: sqlite3.Connection) -> tuple[list[sqlite3.Row], list[sqlite3.Row]]:
    db.row_factory = sqlite3.Row
    return (db.execute("SELECT * FROM runs ORDER BY run_id").fetchall(),
            db.execute("SELECT run_id, step, tokens, train_loss, val_loss FROM points ORDER BY run_id, step").fetchall())


def read_store(path: Path) -> list[StoredRun]:
    """Every run of a store and its curve, opened read-only (nothing is migrated or written)."""
    check_is_store(path)
    try:
        rows, points = read_sqlite(path, _runs_and_points)
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{path} is not a results store (SQLite with a runs table): {err}") from err
    curves: dict[int, Curve] = {}
    for p in points:
        curves.setdefault(p[0], []).append(tuple(p[1:]))
    missing = {name: None for name in ADDED_COLUMNS}
    runs = [StoredRun(_from_row({**missing, **dict(r)}, path), curves.get(r["run_id"], []), path) for r in rows]
    copies: Counter = Counter()
    for run in runs:
        if run.record.imported:
            run.copy = copies[run.record.import_identity]
            copies[run.record.import_identity] += 1
    return runs


def _differences(a: StoredRun, b: StoredRun) -> list[str]:
    (da, ca), (db, cb) = a.content(), b.content()
    names = [k for k in da if da[k] != db[k]]
    return names + (["loss curve"] if ca != cb else [])


@dataclass
class MergePlan:
    """What a merge writes: runs to add, and held rows of OUT (by run_id) to replace by a later record of the
    same run; and the input records skipped, as the same record (`same`) or an earlier one (`earlier`)."""

    new: list[StoredRun]
    replace: dict[int, StoredRun]
    same: int
    earlier: int


def plan_merge(existing: list[StoredRun], inputs: list[StoredRun]) -> MergePlan:
    """The merge of `inputs` into a store holding `existing`; a BenchError lists every conflict."""
    seen = {r.identity: r for r in existing}
    held_id = {r.identity: r.record.run_id for r in existing}
    new: dict[tuple, StoredRun] = {}
    replace: dict[int, StoredRun] = {}
    same = earlier = 0
    conflicts: list[str] = []
    for run in inputs:
        key = run.identity
        other = seen.get(key)
        if other is None:
            seen[key] = new[key] = run
            continue
        diff = _differences(other, run)
        if not diff:
            same += 1
            continue
        later = run.supersedes(other)
        if later is None:
            conflicts.append(f"  run {run.record.run_id} of {run.path} and run {other.record.run_id} of {other.path} "
                             f"(cell {run.record.cell}, label {run.record.label}) differ in {', '.join(diff)}")
            continue
        earlier += 1  # one of the two records is dropped
        if later:
            seen[key] = run
            if key in held_id:
                replace[held_id[key]] = run
            else:
                new[key] = run
    if conflicts:
        shown = conflicts[:10] + ([f"  ... and {len(conflicts) - 10} more"] if len(conflicts) > 10 else [])
        raise BenchError(f"{len(conflicts)} run(s) are recorded differently in two stores; nothing was merged:\n"
                         + "\n".join(shown))
    return MergePlan(list(new.values()), replace, same, earlier - len(replace))


def merge(out: Path, inputs: Sequence[Path]) -> MergePlan:
    """Fold the runs of `inputs` into `out`."""
    if not inputs:
        raise BenchError("bench store merge needs at least one input store: bench store merge OUT IN [IN ...]")
    resolved = {p.resolve() for p in inputs}
    if out.resolve() in resolved:
        raise BenchError(f"the output store {out} is also an input; merge into a store that is not read from")
    check_can_hold_store(out)  # a folder, a text file, another application's database: before anything is read
    runs = [run for path in inputs for run in read_store(path)]
    # an empty file (0 bytes, or SQLite without tables) holds no runs yet, as a new path
    existing = read_store(out) if out.is_file() and "runs" in _tables(out) else []
    plan = plan_merge(existing, runs)
    try:
        ResultsStore(out)  # creates the store, or migrates an older schema
        with closing(sqlite3.connect(out, timeout=60)) as db, db:  # one transaction: all runs or none
            for run_id in plan.replace:
                db.execute("DELETE FROM points WHERE run_id=?", (run_id,))
                db.execute("DELETE FROM runs WHERE run_id=?", (run_id,))
            for run in [*plan.replace.values(), *plan.new]:
                insert_run(db, run.record, run.curve)
    except sqlite3.OperationalError as err:  # locked by another writer for 60 s, a full disk: rolled back
        raise BenchError(f"could not write {out}: {err}; nothing was merged, and {out} is as it was") from err
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{out} is not a results store (SQLite with a runs table): {err}") from err
    return plan


def _merge(argv: list[str]) -> int:
    p = BenchParser(prog="bench store merge", description="Fold results stores into one, without "
                                "duplicating runs; refuses runs recorded differently in two stores.")
    p.add_argument("out", type=path_argument, help="the store to merge into (created if missing)")
    p.add_argument("inputs", type=path_argument, nargs="+", help="stores to read (never changed)")
    args = p.parse_args(argv)
    plan = merge(args.out, args.inputs)
    console().print(f"merged {len(plan.new)} run(s) from {len(args.inputs)} store(s) into {args.out}; "
                    f"{len(plan.replace)} held run(s) replaced by a later record of the same run (finished, or "
                    f"trained further); skipped: {plan.same} already there (same run, same record), "
                    f"{plan.earlier} earlier record(s) of a run held or merged in a later state")
    return 0


ACTIONS = ("merge", "import")


def main(argv: list[str]) -> int:
    """`bench store ACTION ...`; argv starts with "store"."""
    rest = argv[1:]
    if rest[:1] in (["-h"], ["--help"]):
        print(__doc__.split("\n\n")[1])  # the actions' lines; each action's --help lists its options
        return 0
    if not rest or rest[0] not in ACTIONS:
        raise BenchError(f"bench store needs an action, one of {', '.join(ACTIONS)}; got {rest[:1] or 'nothing'}")
    if rest[0] == "import":
        from cslaws.bench.importer import main as import_main  # the importer's dependencies load only when asked

        return import_main(rest[1:])
    return _merge(rest[1:])
