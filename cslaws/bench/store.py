"""The results store: one SQLite file (WAL mode) holding every run and its loss curve.

A run row records everything needed to refit a law from the store alone, years later: model size and N,
tokens D (optimizer steps actually trained x tokens per step), the passes over the training split
(`epochs`), the weight and activation formats in full (class_path and init_args), the bits per value
each costs on the model's own layer shapes and their Gaussian errors (GMSE, of each capacity part too),
seed, data set, tokenizer, vocabulary, sequence length and validation set (together the run's
comparability key: losses in nats under different tokenizers or on different validation sets are not
comparable), the code version, the resolved config, status and
timestamps. Its loss curve sits in `points` (step, tokens, train loss, validation loss). Every write is one
transaction, so a crash leaves a run `running` or `failed`, never half-written and counted as `finished`;
the store refuses to mark a run finished without a finite loss.

Stores written by older versions are migrated in place when opened for writing (missing columns are added
as NULL); commands that only read a store leave it as it is.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import UnionType
from typing import Any, Callable, Iterator, Sequence, TypeVar, get_args, get_origin, get_type_hints

from cslaws.bench.cli import check_can_create
from cslaws.errors import BenchError

STATUSES = ("running", "finished", "failed")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    label TEXT NOT NULL,
    model TEXT NOT NULL,
    n_params INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    bits_per_value REAL NOT NULL,
    activation_bits REAL,
    steps INTEGER,
    tokens_per_step INTEGER,
    epochs REAL,
    seq_len INTEGER,
    vocab_size INTEGER,
    val_set TEXT,
    source TEXT,
    host TEXT,
    pid INTEGER,
    weight TEXT,
    activation TEXT,
    capacity TEXT,
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

#: Columns added after the first schema, with their SQL types: `ResultsStore` adds them to older stores.
ADDED_COLUMNS = {
    "activation_bits": "REAL", "steps": "INTEGER", "tokens_per_step": "INTEGER", "epochs": "REAL",
    "seq_len": "INTEGER", "vocab_size": "INTEGER", "val_set": "TEXT", "source": "TEXT",
    "host": "TEXT", "pid": "INTEGER", "capacity": "TEXT",
}


def default_store_path() -> Path:
    """`$CSLAWS_STORE`, else `runs/results.db` under the working directory."""
    path = os.environ.get("CSLAWS_STORE", "runs/results.db")
    if not path.strip():  # Path("") is the working directory
        raise BenchError(f"$CSLAWS_STORE={path!r} is no path; set it to a results store's file, or unset it for "
                         "runs/results.db")
    return Path(path)


@dataclass
class RunRecord:
    """One training run as the store keeps it. `weight`/`activation` are format specs (None = dense).

    `tokens` is D as trained (`steps` x `tokens_per_step`); `bits_per_value` is the weight format's storage
    cost and `activation_bits` the activation format's, both averaged over the model's compressed linears
    on their real shapes; `epochs` is the passes over the training split; `dataset`, `tokenizer`,
    `vocab_size`, `seq_len` and `val_set` (validation-set fingerprint) make up the comparability key;
    `capacity` is the formats' Gaussian errors as measured when the run was stored (`laws.capacity.run_capacity`:
    each side's GMSE and its capacity parts' family and GMSE), so the unified law refits from the store alone;
    `source` is None for runs trained here, else where an imported run came from; `host` and `pid` name the
    process that trains a `running` run (so that a sweep can tell a live run from one whose process died).
    """

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
    capacity: dict[str, Any] | None = None
    activation_bits: float | None = None
    steps: int | None = None
    tokens_per_step: int | None = None
    epochs: float | None = None
    seq_len: int | None = None
    vocab_size: int | None = None
    val_set: str | None = None
    source: str | None = None
    host: str | None = None
    pid: int | None = None
    cell: str | None = None
    status: str = "running"
    final_val_loss: float | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    run_id: int | None = None

    @property
    def comparability(self) -> tuple[str, str, int | None, int | None, str | None]:
        """Runs may be fitted together only when these agree: corpus, tokenizer, vocabulary, sequence length
        and validation set (None where an older store did not record it)."""
        return (self.dataset, self.tokenizer, self.vocab_size, self.seq_len, self.val_set)


    @property
    def imported(self) -> bool:
        return self.code_version == "imported"

    @property
    def import_identity(self) -> tuple:
        """An imported run as importing its row again would record it: its CSV row's text (every column),
        label, N, D, loss and comparability key, not its file's name nor the time of the import, so that a
        second import (of the file under another name, or with rows appended) or a merge of two stores that
        imported it does not count a run twice."""
        return (self.config, self.label, self.n_params, self.tokens, self.final_val_loss, *self.comparability)


_JSON_FIELDS = ("weight", "activation", "capacity")


def _to_row(record: RunRecord) -> dict[str, Any]:
    row = asdict(record)
    for k in _JSON_FIELDS:
        row[k] = None if row[k] is None else json.dumps(row[k], sort_keys=True)
    row.pop("run_id")
    return row


def _kinds(hint: Any) -> tuple[type, ...]:
    """The Python types a column of type `hint` (`int`, `float | None`, `dict[str, Any] | None`) reads as."""
    base = next(t for t in (get_args(hint) if get_origin(hint) is UnionType else (hint,)) if t is not type(None))
    base = get_origin(base) or base
    return (int, float) if base is float else (base,)


#: What each column of a run holds once read (SQLite keeps whatever a hand edit put there).
_KINDS = {name: _kinds(hint) for name, hint in get_type_hints(RunRecord).items()}


def _damaged(path: Path, data: dict[str, Any], what: str) -> BenchError:
    return BenchError(f"store {str(path)!r}: run {data.get('run_id')} has {what}; the file was edited or damaged: "
                      "restore it from a copy")


def _from_row(row: sqlite3.Row, path: Path) -> RunRecord:
    data = dict(row)
    for k in _JSON_FIELDS:
        try:
            data[k] = None if data.get(k) is None else json.loads(data[k])
        except json.JSONDecodeError as err:  # a store edited by hand, or damaged: say where, not only what
            raise _damaged(path, data, f"a {k!r} that is not JSON ({err})") from None
    # the readers divide by N, D and bits and read a capacity's keys: a wrong kind was a TypeError deep in a fit
    for name, kinds in _KINDS.items():
        value = data.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise _damaged(path, data, f"{name}={value!r}, which is not {' or '.join(k.__name__ for k in kinds)}")
    for name in ("bits_per_value", "activation_bits"):
        if data.get(name) is not None and not (math.isfinite(data[name]) and data[name] > 0):
            raise _damaged(path, data, f"{name}={data[name]!r}; storage bits are positive")
    # a store read without migrating (ResultsStore(create=False)) may lack the columns added later
    return RunRecord(**{f.name: data.get(f.name) for f in fields(RunRecord) if f.name in data or f.name in ADDED_COLUMNS})


def insert_run(db: sqlite3.Connection, record: RunRecord,
               curve: Sequence[tuple[int, int, float | None, float | None]] = ()) -> int:
    """Insert `record` as a new run row, and its curve points, in the caller's transaction (so that a run is
    written whole or not at all); the new row's run_id. `record.run_id` is left as it is: a merge copies runs
    whose ids belong to another store."""
    row = _to_row(record)
    cur = db.execute(f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))
    db.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)", [(cur.lastrowid, *p) for p in curve])
    return cur.lastrowid


def process_gone(record: RunRecord, host: str) -> bool:
    """Whether a `running` row's process is known to be dead: same host and its pid is not alive, or no
    host/pid recorded. A process of another host cannot be checked and counts as alive."""
    if record.host is None or record.pid is None:
        return True
    if record.host != host:
        return False
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False


def check_loss(loss: float | None, what: str) -> None:
    """A finished run's loss is a finite number; anything else is a failed run, never a finished one."""
    if loss is None or not math.isfinite(loss):
        raise ValueError(f"a finished run needs a finite final_val_loss; got {loss!r} for {what}")


T = TypeVar("T")


def read_sqlite(path: Path, read: Callable[[sqlite3.Connection], T]) -> T:
    """`read(db)` on a read-only connection to the SQLite file `path`, leaving nothing beside the file.

    A read-only connection to a WAL-mode file creates its -wal and -shm and cannot remove them on closing.
    A file with no -wal or -journal beside it (no process has it open, nothing uncommitted or unmerged) is
    therefore read as immutable, which creates neither. An immutable read takes no locks, so when a writer
    appeared meanwhile (a sidecar now exists, or the file changed) its result is not trusted and the file is
    read again under SQLite's locks.
    """
    uri = f"{path.resolve().as_uri()}?mode=ro"
    sidecars = [path.with_name(path.name + suffix) for suffix in ("-wal", "-journal")]

    def untouched() -> tuple[int, int, int] | None:
        """The file's identity and last change, or None while a process has it open."""
        st = path.stat()
        return None if any(p.exists() for p in sidecars) else (st.st_ino, st.st_size, st.st_mtime_ns)

    before = untouched()
    if before is not None:
        try:
            with closing(sqlite3.connect(f"{uri}&immutable=1", uri=True)) as db:
                result = read(db)
        except sqlite3.DatabaseError:
            if untouched() == before:
                raise
        else:
            if untouched() == before:
                return result
    with closing(sqlite3.connect(uri, uri=True)) as db:
        return read(db)


def _first_schema_columns() -> frozenset[str]:
    """The columns of `runs` in every results store, however old: the schema's, less those added later."""
    with closing(sqlite3.connect(":memory:")) as db:
        db.executescript(SCHEMA)
        return frozenset(r[1] for r in db.execute("PRAGMA table_info(runs)")) - set(ADDED_COLUMNS)


STORE_COLUMNS = _first_schema_columns()


def _tables(path: Path) -> dict[str, set[str]]:
    """The tables of the SQLite file at `path` and their columns, read only; a file that is not SQLite is a
    BenchError."""
    def read(db: sqlite3.Connection) -> dict[str, set[str]]:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {name: {r[1] for r in db.execute(f'PRAGMA table_info("{name}")')} for name in names}

    try:
        return read_sqlite(path, read)
    except sqlite3.DatabaseError as err:
        raise BenchError(f"{path} is not a results store: {err} (a store is a SQLite file that bench writes)") from err


def _check_runs_table(path: Path, tables: dict[str, set[str]]) -> None:
    """A `runs` table of another application (its own columns) is not a store's."""
    missing = STORE_COLUMNS - tables["runs"]
    if missing:
        raise BenchError(f"{path} has a `runs` table without a results store's columns ({', '.join(sorted(missing))}): "
                         "another application's database, not a results store written by bench")


def given_store_path(path: str | None, option: str) -> Path:
    """The results store that `option` names: `path`, or without one `default_store_path()`. An empty path is
    refused: `Path("")` is the working directory."""
    if path is None:
        return default_store_path()
    if not path.strip():
        raise BenchError(f"{option} {path!r} is not a path; give the results store's file (or leave {option} out "
                         "for $CSLAWS_STORE or runs/results.db)")
    return Path(path)


def refuse_folder(path: Path) -> None:
    """A store is a file: a folder given for one is named as a folder (not as a missing store)."""
    if path.is_dir():
        raise BenchError(f"the results store {path} is a folder; a store is a file (such as {path / 'results.db'})")


def check_is_store(path: Path) -> None:
    """Refuse a path that is not an existing results store, reading it only (read-only connection), so that
    neither a missing store is created nor a foreign file (text, another SQLite database) is modified."""
    refuse_folder(path)
    if not path.is_file():
        # `bench store merge` reads stores too, and has no --store: the advice names none
        raise BenchError(f"no results store at {path}; train runs into it first (bench fit, bench sweep), or give the "
                         "path of one")
    tables = _tables(path)
    if "runs" not in tables:
        raise BenchError(f"{path} is a SQLite file without a `runs` table, not a results store written by bench")
    _check_runs_table(path, tables)


def check_can_hold_store(path: Path) -> None:
    """Refuse a path that a store must not be written into, reading it only: a folder, a path in a folder that
    cannot be written (SQLite writes its journal beside the store), a file that is not SQLite, or another
    application's database. A results store, an empty file (0 bytes, or SQLite without tables) or a new path
    may hold one."""
    refuse_folder(path)
    check_can_create(path.parent, f"the results store {path}")
    if path.is_file() and path.stat().st_size > 0:
        tables = _tables(path)
        if tables and "runs" not in tables:
            raise BenchError(f"{path} is a SQLite database of another application (tables: {', '.join(sorted(tables))}), "
                             "not a results store; a store goes into a results store, an empty file or a new path")
        if tables:
            _check_runs_table(path, tables)


class ResultsStore:
    """Runs and loss curves in one SQLite file. Safe to share between processes (WAL, short transactions)."""

    def __init__(self, path: str | Path | None = None, create: bool = True) -> None:
        """Open the store at `path` (default: `default_store_path()`), creating it when `create`.

        Commands that read results pass `create=False`: a mistyped path is then an error, not a new empty
        store, and a file that is not a results store is refused before anything is written to it. A path
        that cannot hold a store (not SQLite, another application's database, unreadable, a directory in the
        way) is a BenchError either way.
        """
        self.path = Path(path) if path is not None else default_store_path()
        self.read_only = not create
        if not create:
            # reading only: an older store is read as it is (columns it lacks read as None), not migrated
            check_is_store(self.path)
            return
        check_can_hold_store(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._tx() as db:
                db.executescript(SCHEMA)
                have = {r[1] for r in db.execute("PRAGMA table_info(runs)")}
                for name, kind in ADDED_COLUMNS.items():
                    if name not in have:
                        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
        except (sqlite3.DatabaseError, OSError) as err:
            raise BenchError(f"cannot open the results store {self.path}: {err} (a store is a SQLite file that bench writes)") from err

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=60)) as db:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            with db:
                yield db

    def start_run(self, record: RunRecord) -> int:
        record.status = "running"
        with self._tx() as db:
            record.run_id = insert_run(db, record)
        return record.run_id

    def add_finished(self, *records: RunRecord, curve: list[tuple[int, int, float | None, float | None]] = ()) -> int | None:
        """Write complete runs (and a curve, the same for each) in one transaction, all or none: for imports and
        tests. The last run's id (None for no runs)."""
        for record in records:
            check_loss(record.final_val_loss, repr(record.label))
            record.status = "finished"
            record.finished_at = record.finished_at or time.time()
        with self._tx() as db:
            for record in records:
                record.run_id = insert_run(db, record, curve)
        return records[-1].run_id if records else None

    def log_point(self, run_id: int, step: int, tokens: int, train_loss: float | None = None, val_loss: float | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO points VALUES (?, ?, ?, ?, ?)", (run_id, step, tokens, train_loss, val_loss))

    def finish(self, run_id: int, final_val_loss: float) -> None:
        """Mark a run finished with its final validation loss, which must be a finite number."""
        check_loss(final_val_loss, f"run {run_id}")
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='finished', final_val_loss=?, finished_at=? WHERE run_id=?",
                (final_val_loss, time.time(), run_id),
            )

    def fail(self, run_id: int, error: str) -> None:
        """Mark a run failed with what stopped it. A finished run stays finished: nothing after `finish` can
        turn it into a failed one."""
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET status='failed', error=?, finished_at=? WHERE run_id=? AND status != 'finished'",
                (error, time.time(), run_id),
            )

    def set_trained(self, run_id: int, steps: int, tokens: int, epochs: float) -> None:
        """Record what the run has trained so far: optimizer steps, tokens (D) and passes over the training split."""
        with self._tx() as db:
            db.execute("UPDATE runs SET steps=?, tokens=?, epochs=? WHERE run_id=?", (steps, tokens, epochs, run_id))

    def resume_run(self, run_id: int, step: int, host: str, pid: int) -> None:
        """Reopen a run that resumes from its checkpoint at `step`: `running` again under the new process, its
        curve cut to the points up to `step` (the resumed run logs the later ones again; Lightning does not
        repeat a validation at the checkpoint's own step)."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is None:
                raise BenchError(f"the checkpoint belongs to run {run_id}, which is not in the store {self.path}")
            if row["status"] == "finished":
                raise BenchError(f"run {run_id} in {self.path} is already finished; there is nothing to resume")
            db.execute(
                "UPDATE runs SET status='running', error=NULL, finished_at=NULL, host=?, pid=? WHERE run_id=?",
                (host, pid, run_id),
            )
            db.execute("DELETE FROM points WHERE run_id=? AND step > ?", (run_id, step))

    def _select(self, query: str, args: tuple = ()) -> list[sqlite3.Row]:
        """The rows of a query; a store opened to read (`create=False`) is read on a read-only connection,
        so that reading neither changes the file (its journal mode) nor needs it writable (an archive)."""
        if not self.read_only:
            with self._tx() as db:
                return db.execute(query, args).fetchall()

        def read(db: sqlite3.Connection) -> list[sqlite3.Row]:
            db.row_factory = sqlite3.Row
            return db.execute(query, args).fetchall()

        return read_sqlite(self.path, read)

    def runs(self, status: str | None = "finished") -> list[RunRecord]:
        """Runs with the given status (None: all), oldest first."""
        if status is not None and status not in STATUSES:
            raise ValueError(f"unknown status {status!r}; allowed: {', '.join(STATUSES)} or None")
        query, args = ("SELECT * FROM runs WHERE status=? ORDER BY run_id", (status,)) if status else ("SELECT * FROM runs ORDER BY run_id", ())
        return [_from_row(r, self.path) for r in self._select(query, args)]

    def record(self, run_id: int) -> RunRecord | None:
        """The run `run_id` as stored (any status); None when the store has no such run."""
        rows = self._select("SELECT * FROM runs WHERE run_id=?", (run_id,))
        return _from_row(rows[0], self.path) if rows else None

    def curve(self, run_id: int) -> list[tuple[int, int, float | None, float | None]]:
        rows = self._select("SELECT step, tokens, train_loss, val_loss FROM points WHERE run_id=? ORDER BY step", (run_id,))
        return [tuple(r) for r in rows]

    def finished_cells(self) -> set[str]:
        rows = self._select("SELECT DISTINCT cell FROM runs WHERE status='finished' AND cell IS NOT NULL")
        return {r[0] for r in rows}
