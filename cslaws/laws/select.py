"""Which stored runs a law is fitted to: the one place every law command, the sweep's leaderboard and the
end-of-run refit choose them.

From a store's finished runs, in this order:

1. rows whose final loss is missing or not finite (written by older versions, which marked diverged runs
   finished) are skipped, with a notice naming them;
2. `--where FIELD=VALUE` keeps the runs whose field equals the value (any `RunRecord` field, compared as
   text; `None` matches a missing value), `--min-params` the models of at least that many parameters;
3. `--max-epochs X` keeps the runs that made at most X passes over the training split; runs whose epochs
   are unknown (stores written before epochs were recorded) cannot be shown to qualify and are left out,
   with a notice;
4. finished duplicates of one sweep cell (same `cell`) count once: the latest (last finished);
5. comparability: losses under different corpora, tokenizers, vocabularies, sequence lengths or
   validation sets are not comparable, so the runs must share one `RunRecord.comparability` key. When
   several remain, `--group K` picks the K-th (numbered in order of their first run); without it the
   selection fails with a `BenchError` that lists the groups and how to pick one. Never fitted across keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.errors import BenchError

KEY_FIELDS = ("dataset", "tokenizer", "vocab_size", "seq_len", "val_set")


@dataclass
class Selection:
    """The runs to fit, and one-line notices of what was left out and why (for the user to read)."""

    records: list[RunRecord]
    notices: list[str] = field(default_factory=list)


def _ids(records: Sequence[RunRecord], limit: int = 10) -> str:
    ids = [str(r.run_id) for r in records[:limit]]
    return ", ".join(ids) + (f" and {len(records) - limit} more" if len(records) > limit else "")


def parse_where(items: Sequence[str]) -> list[tuple[str, str]]:
    """`FIELD=VALUE` pairs, FIELD a `RunRecord` field."""
    allowed = [f.name for f in fields(RunRecord)]
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in allowed:
            raise BenchError(f"--where takes FIELD=VALUE with FIELD one of {', '.join(allowed)}; got {item!r}")
        out.append((name, value))
    return out


def _matches(record: RunRecord, where: list[tuple[str, str]]) -> bool:
    return all(str(getattr(record, name)) == value for name, value in where)


def comparability_groups(records: Sequence[RunRecord]) -> list[list[RunRecord]]:
    """Runs grouped by comparability key, groups in the order of their first run."""
    groups: dict[tuple, list[RunRecord]] = {}
    for r in records:
        groups.setdefault(r.comparability, []).append(r)
    return list(groups.values())


def describe_group(index: int, runs: Sequence[RunRecord]) -> str:
    key = dict(zip(KEY_FIELDS, runs[0].comparability))
    text = ", ".join(f"{k}={v}" for k, v in key.items())
    return f"  group {index}: {len(runs)} run(s), {text}"


def select(
    records: Sequence[RunRecord],
    *,
    where: Sequence[str] = (),
    min_params: int = 0,
    max_epochs: float | None = None,
    group: int | None = None,
    source: str = "the store",
) -> Selection:
    """The runs to fit among finished `records` (see the module doc for the rules and their order)."""
    if min_params < 0:  # every run would pass it, which hides a typo'd sign
        raise BenchError(f"--min-params must be a non-negative number of parameters, got {min_params}")
    notices: list[str] = []
    bad = [r for r in records if r.final_val_loss is None or not math.isfinite(r.final_val_loss)]
    if bad:
        notices.append(f"skipped {len(bad)} finished run(s) without a finite final loss (run ids {_ids(bad)})")
    bad_ids = {id(r) for r in bad}
    runs = [r for r in records if id(r) not in bad_ids]
    conditions = parse_where(where)
    kept = [r for r in runs if _matches(r, conditions) and r.n_params >= min_params]
    if len(kept) < len(runs):
        notices.append(f"left out {len(runs) - len(kept)} run(s) by --where {' '.join(where) or '-'} / "
                       f"--min-params {min_params}")
    runs = kept
    if max_epochs is not None:
        if not (math.isfinite(max_epochs) and max_epochs > 0):
            raise BenchError(f"--max-epochs must be a positive number, got {max_epochs}")
        unknown = [r for r in runs if r.epochs is None]
        if unknown:
            notices.append(f"left out {len(unknown)} run(s) whose epochs were not recorded (run ids {_ids(unknown)}): "
                           f"they cannot be shown to stay within --max-epochs {max_epochs:g}")
        over = [r for r in runs if r.epochs is not None and r.epochs > max_epochs]
        if over:
            notices.append(f"left out {len(over)} run(s) over --max-epochs {max_epochs:g} (run ids {_ids(over)})")
        runs = [r for r in runs if r.epochs is not None and r.epochs <= max_epochs]
    latest: dict[str, RunRecord] = {}
    for r in runs:
        if r.cell is not None:
            old = latest.get(r.cell)
            if old is None or (r.finished_at or 0.0, r.run_id or 0) > (old.finished_at or 0.0, old.run_id or 0):
                latest[r.cell] = r
    dupes = [r for r in runs if r.cell is not None and latest[r.cell] is not r]
    if dupes:
        notices.append(f"counted {len(dupes)} earlier finished duplicate(s) of a sweep cell once, as the latest "
                       f"run (left out run ids {_ids(dupes)})")
        runs = [r for r in runs if r.cell is None or latest[r.cell] is r]
    if not runs:
        why = "; ".join(notices) or "none matched"
        raise BenchError(f"{source} has no finished runs to fit ({len(records)} finished in all; {why})")
    groups = comparability_groups(runs)
    if group is not None:
        if not 0 <= group < len(groups):
            raise BenchError(f"--group {group} does not exist; {source} has groups 0-{len(groups) - 1}:\n"
                             + "\n".join(describe_group(i, g) for i, g in enumerate(groups)))
        runs = groups[group]
    elif len(groups) > 1:
        raise BenchError(
            f"{source} holds runs of {len(groups)} comparability groups (losses under different corpora, "
            "tokenizers, vocabularies, sequence lengths or validation sets cannot be fitted together):\n"
            + "\n".join(describe_group(i, g) for i, g in enumerate(groups))
            + "\npick one with --group K, or narrow with --where FIELD=VALUE (e.g. --where seq_len=64)"
        )
    return Selection(runs, notices)


def select_from_store(store: ResultsStore, **options: Any) -> Selection:
    """`select` over a store's finished runs."""
    return select(store.runs(status="finished"), source=f"the store {store.path}", **options)


def runs_like(store: ResultsStore, run_id: int) -> Selection:
    """The runs a refit after run `run_id` uses: the store's runs comparable with that run (its group)."""
    records = store.runs(status="finished")
    mine = next((r for r in records if r.run_id == run_id), None)
    if mine is None:
        raise BenchError(f"run {run_id} is not a finished run of the store {store.path}")
    groups = comparability_groups([r for r in records if r.comparability == mine.comparability])
    return select(groups[0], source=f"the store {store.path}")
