"""The leaderboard: one compression-law fit over every finished run of a results store, one row per format.

Each row: the stored bits per value of the weights and of the activations (each run records them on its
own model's layer shapes, so they vary with the model size: the row shows their mean over the format's
runs and, where they differ, their range), the fitted multiplier eff with its bootstrap interval,
eff x 16 / bits (with the mean weight bits: the multiplier per bit, relative to 16-bit dense; above 1
means the format buys more than its memory saving), the most passes over the training split any of the
format's runs made (epochs; "-" where older stores did not record them),
the GMSE of the weight and activation formats (as each run stored it; measured from the stored specs for
runs of older stores), the capacity the unified
law predicts with the published constants, and the number of runs. Capacities multiply (Panferov et al.
2025): the prediction is the product of rho over the format's parts, a composition's sparsifier and
quantizer apart and weights apart from activations (`Format.capacity_parts`).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from cslaws.laws.capacity import stored_capacity, without_backend
from cslaws.laws.fit import FitError, LawFit, Runs, fit_compression, rho
from cslaws.laws.uncertainty import Bootstrap, bootstrap

DENSE_BITS = 16.0


@dataclass
class Row:
    label: str
    bits: float
    bits_min: float
    bits_max: float
    activation_bits: float | None
    epochs: float | None
    eff: float
    eff_lo: float | None  # None: a format of one run has no interval (`Bootstrap.single`)
    eff_hi: float | None
    eff_per_bit: float
    gmse_weight: float | None
    gmse_activation: float | None
    rho: float
    runs: int


@dataclass
class Leaderboard:
    law: LawFit
    intervals: Bootstrap
    rows: list[Row]

    def to_dict(self) -> dict[str, Any]:
        return {"law": self.law.to_dict(), "bootstrap": self.intervals.to_dict(), "rows": [asdict(r) for r in self.rows]}


def runs_of(records: Sequence[Any]) -> Runs:
    """The fit's view of stored runs: N = n_params, D = tokens, loss = final_val_loss, label."""
    if not records:
        raise FitError("the store has no finished runs; train some (bench fit / bench sweep) before fitting a law")
    # named by run id here: `Runs.of` can only count positions in the selection
    bad = [r.run_id for r in records if not all(math.isfinite(v) and v > 0 for v in (r.n_params, r.tokens, r.final_val_loss))]
    if bad:
        raise FitError(f"{len(bad)} run(s) of the store have a NaN, infinite or non-positive N, D or loss (run ids "
                       f"{bad[:10]}); N, D and loss must be finite and > 0")
    return Runs.of([r.n_params for r in records], [r.tokens for r in records],
                   [r.final_val_loss for r in records], [r.label for r in records])


def one_per_label(records: Iterable[Any], attr: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for r in records:
        value = getattr(r, attr)
        if r.label in seen and without_backend(seen[r.label]) != without_backend(value):
            raise FitError(
                f"label {r.label!r} has runs with different {attr} ({seen[r.label]!r} vs {value!r}); a label must "
                "name one format, so give differing formats different labels"
            )
        seen[r.label] = value
    return seen


def label_bits(records: Iterable[Any], attr: str = "bits_per_value") -> dict[str, tuple[float, float, float] | None]:
    """Per label: (mean, min, max) of a stored bits field over its runs; None where a run lacks it."""
    values: dict[str, list[float | None]] = {}
    for r in records:
        values.setdefault(r.label, []).append(getattr(r, attr))
    return {label: None if any(v is None for v in vs) else (float(np.mean(vs)), float(min(vs)), float(max(vs)))
            for label, vs in values.items()}


def _max_epochs(records: Iterable[Any]) -> dict[str, float | None]:
    """Per label: the most passes over the training split of any of its runs (None if one is unknown)."""
    out: dict[str, float | None] = {}
    for r in records:
        prev = out.get(r.label, 0.0)
        out[r.label] = None if prev is None or r.epochs is None else max(prev, float(r.epochs))
    return out


def label_capacity(records: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Per label, its formats' stored Gaussian errors (`stored_capacity`). A label names one format
    (`one_per_label`), and runs of one format whose stored GMSEs differ were measured by code versions that
    disagree: neither is fitted as one format."""
    one_per_label(records, "weight"), one_per_label(records, "activation")
    seen: dict[str, dict[str, Any]] = {}
    measured: dict[str, dict[str, Any]] = {}  # per label, for runs that stored none: one format, measured once
    for r in records:
        if r.capacity is None and r.label not in measured:
            measured[r.label] = stored_capacity(r)
        cap = r.capacity if r.capacity is not None else measured[r.label]
        if r.label in seen and not _same_capacity(seen[r.label], cap):
            raise FitError(f"label {r.label!r} has runs whose stored GMSEs differ ({seen[r.label]} vs {cap}): its "
                           "runs were measured by code versions that disagree; refit them apart")
        seen[r.label] = cap
    return seen


def _same_capacity(a: Any, b: Any) -> bool:
    """Equal structure, and GMSEs equal to float rounding (a sampled GMSE may differ in its last bits
    between machines)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_capacity(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_capacity(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def _side_gmse(side: dict[str, Any] | None) -> float | None:
    return None if side is None else side["gmse"]


def side_parts(capacity: dict[str, Any]) -> list[dict[str, Any]]:
    """A run's capacity parts: its weight format's, then its activation format's."""
    return [p for side in ("weight", "activation") if capacity[side] is not None for p in capacity[side]["parts"]]


def build(records: Sequence[Any], reference: str = "dense", k: int = 100, seed: int = 0) -> Leaderboard:
    """Fit the compression form over `records` (finished RunRecords), bootstrap it, and rank formats."""
    runs = runs_of(records)
    bits, act_bits, epochs = label_bits(records), label_bits(records, "activation_bits"), _max_epochs(records)
    capacities = label_capacity(records)
    law = fit_compression(runs, reference)
    intervals = bootstrap(law, runs, k=k, seed=seed)
    eff_ci = intervals.eff_ci
    rows = []
    for label, eff in law.eff.items():
        cap = capacities[label]
        gw, ga = _side_gmse(cap["weight"]), _side_gmse(cap["activation"])
        capacity = math.prod(float(rho(p["gmse"])) for p in side_parts(cap))
        lo, hi = eff_ci.get(label, (None, None))
        w_mean, w_min, w_max = bits[label]  # bits_per_value is a required field: never None
        a_bits = None if act_bits[label] is None else act_bits[label][0]
        rows.append(Row(label, w_mean, w_min, w_max, a_bits, epochs[label], eff, lo, hi, eff * DENSE_BITS / w_mean,
                        gw, ga, capacity, int(np.sum(runs.label == label))))
    rows.sort(key=lambda r: -r.eff_per_bit)
    return Leaderboard(law, intervals, rows)


COLUMNS = ("format", "bits w", "bits a", "eff", "eff 95% CI", "eff x 16/bits", "GMSE w", "GMSE a", "rho(GMSE)",
           "epochs", "runs")


def _bits_cell(r: Row) -> str:
    if r.bits_max - r.bits_min < 5e-4:
        return f"{r.bits:.3f}"
    return f"{r.bits:.3f} ({r.bits_min:.3f}-{r.bits_max:.3f})"


def _eff_interval(r: Row) -> str:
    return f"{r.runs} run: no interval" if r.eff_lo is None else f"[{r.eff_lo:.3f}, {r.eff_hi:.3f}]"


def _cells(r: Row) -> list[str]:
    g = lambda v, fmt="{:.4g}": "-" if v is None else fmt.format(v)  # noqa: E731
    return [r.label, _bits_cell(r), g(r.activation_bits, "{:.3f}"), f"{r.eff:.3f}", _eff_interval(r),
            f"{r.eff_per_bit:.3f}", g(r.gmse_weight), g(r.gmse_activation), f"{r.rho:.3f}", g(r.epochs, "{:.2f}"),
            str(r.runs)]


def law_summary(law: LawFit) -> str:
    c = law.constants()
    text = (f"L = {c['A']:.4g} (N eff)^-{c['alpha']:.4f} + {c['B']:.4g} D^-{c['beta']:.4f} + {c['E']:.4f}; "
            f"{law.n_runs} runs, RMSE(log L) = {law.rmse_log:.4f}")
    if law.holdout is not None:
        text += (f"; largest size N={law.holdout.n:.3g} held out: RMSE(log L) = {law.holdout.rmse_log:.4f}, "
                 f"max rel. error {law.holdout.max_rel_err:.2%}")
    else:
        text += f"; {law.holdout_note}"
    if law.at_bound:
        text += f"; at search bound (not determined by the runs): {', '.join(law.at_bound)}"
    if 0 < law.d_values < 3:
        # B D^-beta + E takes only as many values as there are D: a valley of equal fit, whether or not the
        # optimiser stopped at beta's bound. eff (the N term) is not affected; extrapolations in D (bench plan) are.
        text += f"; B, beta and E not determined by the runs: they have {law.d_values} value(s) of D"
    return text


def render_markdown(board: Leaderboard) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in board.rows]
    return "\n".join(lines) + f"\n\n{law_summary(board.law)}\n"


def render_csv(board: Leaderboard) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    names = list(asdict(board.rows[0]))
    writer.writerow(names)
    for r in board.rows:
        writer.writerow([asdict(r)[k] for k in names])
    return out.getvalue()


def render_table(board: Leaderboard):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Compression leaderboard (eff relative to dense; 95% bootstrap intervals)",
                  caption=escape(law_summary(board.law)))
    for name in COLUMNS:
        table.add_column(name, justify="left" if name == "format" else "right")
    for r in board.rows:
        table.add_row(*(escape(c) for c in _cells(r)))
    return table
