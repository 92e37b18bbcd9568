"""The results store: one SQLite file (WAL mode) holding every run and its loss curve.

A run row records everything needed to refit a law from the store alone, years later: model size and N,
tokens D, the weight and activation formats in full (class_path and init_args), bits per value, seed, data
set and tokenizer, the code version, the resolved config, status and timestamps. Its loss curve sits in
`points` (step, tokens, train loss, validation loss). Every write is one transaction, so a crash leaves a
run `running` or `failed`, never half-written and counted as `finished`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

STATUSES = ("running", "finished", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    model TEXT NOT NULL,
    n_params INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    bits_per_value REAL NOT NULL,
    weight TEXT,
    activation TEXT,
    seed INTEGER NOT NULL,
    dataset TEXT NOT NULL,
    tokenizer TEXT NOT NULL,
    code_version TEXT NOT NULL,
    config TEXT NOT NULL,
    cell TEXT,
    status TEXT NOT NULL CHECK (status IN ('running', 'finished', 'failed')),
    final_val_loss REAL,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL
);
CREATE TABLE IF NOT EXISTS points (
    run_id INTEGER NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    train_loss REAL,
    val_loss REAL
);
CREATE INDEX IF NOT EXISTS points_run ON points(run_id, step);
CREATE INDEX IF NOT EXISTS runs_cell ON runs(cell, status);
"""


def default_store_path() -> Path:
    """`$CSLAWS_STORE`, else `runs/results.db` under the working directory."""
    return Path(os.environ.get("CSLAWS_STORE", "runs/results.db"))


@dataclass
class RunRecord:
    """One training run as the store keeps it. `weight`/`activation` are format specs (None = dense)."""

    label: str
    model: str
    n_params: int
    tokens: int
    bits_per_value: float
    seed: int
    dataset: str
    tokenizer: str
    code_version: str
    config: str = ""
    weight: dict[str, Any] | None = None
    activation: dict[str, Any] | None = None
    cell: str | None = None
    status: str = "running"
    final_val_loss: float | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    run_id: int | None = None


_JSON_FIELDS = ("weight", "activation")


def _to_row(record: RunRecord) -> dict[str, Any]:
    row = asdict(record)
    for k in _JSON_FIELDS:
        row[k] = None if row[k] is None else json.dumps(row[k], sort_keys=True)
    row.pop("run_id")
    return row


def _from_row(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    for k in _JSON_FIELDS:
        data[k] = None if data[k] is None else json.loads(data[k])
    return RunRecord(**{f.name: data[f.name] for f in fields(RunRecord)})


class ResultsStore:
    """Runs and loss curves in one SQLite file. Safe to share between processes (WAL, short transactions)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._tx() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db

    def start_run(self, record: RunRecord) -> int:
        record.status = "running"
        row = _to_row(record)
        cols = ", ".join(row)
        with self._tx() as db:
            cur = db.execute(f"INSERT INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            record.run_id = cur.lastrowid
        return record.run_id

    def add_finished(self, record: RunRecord, curve: list[tuple[int, int, float | None, float | None]] = ()) -> int:
        """Write a complete run (and its curve) in one transaction: for imports and tests."""
        if record.final_val_loss is None:
            raise ValueError(f"a finished run needs final_val_loss; got None for {record.label!r}")
        record.status = "finished"
        record.finished_at = record.finished_at or time.time()
        row = _to_row(record)
        with self._tx() as db:
            cur = db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
            record.run_id = cur.lastrowid
            db.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", [(record.run_id, *p) for p in curve])
        return record.run_id

    def log_point(self, run_id: int, step: int, tokens: int, train_loss: float | None = None, val_loss: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO points VALUES (?, ?, ?, ?, ?)", (run_id, step, tokens, train_loss, val_loss))

    def finish(self, run_id: int, final_val_loss: float) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='finished', final_val_loss=?, finished_at=? WHERE run_id=?",
                (final_val_loss, time.time(), run_id),
            )

    def fail(self, run_id: int, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status='failed', error=?, finished_at=? WHERE run_id=?", (error, time.time(), run_id))

    def runs(self, status: str | None = "finished") -> list[RunRecord]:
        """Runs with the given status (None: all), oldest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)} or None")
        query, args = ("SELECT * FROM runs WHERE status=? ORDER BY run_id", (status,)) if status else ("SELECT * FROM runs ORDER BY run_id", ())
        with self._tx() as db:
            return [_from_row(r) for r in db.execute(query, args)]

    def curve(self, run_id: int) -> list[tuple[int, int, float | None, float | None]]:
        with self._tx() as db:
            rows = db.execute("SELECT step, tokens, train_loss, val_loss FROM points WHERE run_id=? ORDER BY step", (run_id,))
            return [tuple(r) for r in rows]

    def finished_cells(self) -> set[str]:
        with self._tx() as db:
            return {r[0] for r in db.execute("SELECT DISTINCT cell FROM runs WHERE status='finished' AND cell IS NOT NULL")}
