"""Each format's loss gap to the reference, measured run against run, and whether it depends on D.

The compression law L = A (N eff)^-alpha + B D^-beta + E gives a format the gap to the reference
A N^-alpha (eff^-alpha - 1): a constant multiplier makes the gap the same at every token budget. The fit
cannot see a gap that changes with D (it averages it into one eff, and the bootstrap turns the spread into a
wide interval), so `gap_growth` measures it directly, without any fitted constant: at each model size trained
at two or more budgets, the slope of the format's gap (seeds averaged, paired with the reference's runs of the
same size and budget) against log2 of the tokens per parameter, that is the gap's change per doubling of D at
fixed N. The law says 0. Its mean over the sizes gets a Student-t interval across the sizes: it covers
seed noise and the spread between sizes (a trend with N widens it, so it is conservative).

`cell_effs` turns each cell's measured gap into the multiplier it implies under a fitted law: the eff whose law
gap at that N equals the measured one. A constant multiplier makes them all equal; a gap that grows with D makes
them fall with D, and their spread is what a fit averages into one eff.

`cell_residuals` is the other half of a fit's misfit: at each cell, how far the reference's own loss lies from the
law, and the same averaged over every label trained there (each at its fitted eff). That part is shared by all the
formats of a cell (same size, budget, seeds); it cancels in a cell's gap but not in a bootstrap resample that
draws a format's runs from other cells than the reference's, so a large shared misfit widens every interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from cslaws.laws.fit import LawFit, Runs, budget_clusters, check_reference


@dataclass
class Gap:
    """Measured loss differences of one format to the reference: per (N, budget) cell, seeds averaged."""

    n: np.ndarray
    tokens_per_param: np.ndarray
    diff: np.ndarray


def _cell_means(runs: Runs, values: np.ndarray) -> dict[tuple[str, float, int], tuple[float, float]]:
    """Per (label, N, token budget) cell: the mean of `values` (one per run) over the cell's runs, its seeds,
    and their mean D."""
    budget = budget_clusters(runs.n, runs.d)
    cells: dict[tuple[str, float, int], list[tuple[float, float]]] = {}
    for label, n, d, b, value in zip(runs.label, runs.n, runs.d, budget, values):
        cells.setdefault((str(label), float(n), int(b)), []).append((float(value), float(d)))
    return {key: (float(np.mean([v for v, _ in rows])), float(np.mean([d for _, d in rows])))
            for key, rows in cells.items()}


def measured_gaps(runs: Runs, reference: str) -> dict[str, Gap]:
    """Each format's mean loss minus the reference's mean loss at the same size and token budget, with the
    cell's own tokens per parameter (its runs' mean D / N)."""
    check_reference(runs, reference, "the gaps are measured against its runs")
    means = _cell_means(runs, runs.loss)
    out: dict[str, list[tuple[float, float, float]]] = {}
    for (label, n, b), (loss, d) in means.items():
        ref = means.get((reference, n, b))
        if label != reference and ref is not None:
            out.setdefault(label, []).append((n, d / n, loss - ref[0]))
    return {label: Gap(*(np.array(col) for col in zip(*sorted(pts)))) for label, pts in out.items()}


def law_gap(A, alpha, eff, n):
    """The compression law's loss gap to the reference, A N^-alpha (eff^-alpha - 1): the same at every D.
    Broadcasts, so bootstrap samples of A, alpha and eff give one curve each."""
    return A * n ** -alpha * (eff ** -alpha - 1.0)


def implied_eff(A, alpha, n, gap):
    """The multiplier whose law gap at size `n` is `gap` (`law_gap` solved for eff):
    (1 + gap / (A n^-alpha))^(-1 / alpha). NaN where no multiplier gives that gap (gap <= -A n^-alpha: the
    format would beat the reference by more than the whole N term)."""
    ratio = 1.0 + np.asarray(gap, dtype=np.float64) / (A * np.asarray(n, dtype=np.float64) ** -alpha)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ratio > 0.0, ratio ** (-1.0 / alpha), np.nan)


@dataclass
class CellEff:
    """One format at one (N, budget) cell: its measured gap (seeds averaged) and the multiplier it implies."""

    label: str
    n: float
    tokens_per_param: float
    tokens: float
    gap: float
    implied_eff: float | None


def cell_effs(runs: Runs, law: LawFit) -> list[CellEff]:
    """Every cell's measured gap to the law's reference and the eff it implies under `law` (sorted by label,
    then N, then D)."""
    out = []
    for label, gap in sorted(measured_gaps(runs, law.reference).items()):
        effs = implied_eff(law.A, law.alpha, gap.n, gap.diff)
        for n, tpp, diff, eff in zip(gap.n, gap.tokens_per_param, gap.diff, effs):
            out.append(CellEff(label, float(n), float(tpp), float(n * tpp), float(diff),
                               None if np.isnan(eff) else float(eff)))
    return out


@dataclass
class CellResidual:
    """The fitted law's misfit at one (N, budget) cell, in nats: the reference's loss minus the law (seeds
    averaged), and the mean of that over every label trained at the cell, each at its fitted eff."""

    n: float
    tokens_per_param: float
    tokens: float
    reference: float
    mean: float
    labels: int


def cell_residuals(runs: Runs, law: LawFit) -> list[CellResidual]:
    """Every (N, budget) cell where the law's reference has runs, sorted by N then D (`law` fitted on `runs`)."""
    eff = np.array([law.eff[str(s)] for s in runs.label])
    residual = runs.loss - law.predict(runs.n, runs.d, eff)
    cells: dict[tuple[float, int], dict[str, tuple[float, float]]] = {}
    for (label, n, b), mean in _cell_means(runs, residual).items():
        cells.setdefault((n, b), {})[label] = mean
    out = []
    for (n, _), means in cells.items():
        if law.reference in means:
            d = float(np.mean([rd[1] for rd in means.values()]))
            out.append(CellResidual(n, d / n, d, means[law.reference][0],
                                    float(np.mean([rd[0] for rd in means.values()])), len(means)))
    return sorted(out, key=lambda c: (c.n, c.tokens))


@dataclass
class GapGrowth:
    """One format: its mean gap over all cells, and the gap's change per doubling of D at fixed N, per size
    (N -> nats) and averaged over the sizes with its interval (None with fewer than two sizes)."""

    label: str
    mean_gap: float
    per_size: dict[float, float]
    growth: float | None
    lo: float | None
    hi: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"per_size": [[n, g] for n, g in self.per_size.items()]}


def gap_growth(runs: Runs, reference: str, level: float = 0.95) -> list[GapGrowth]:
    """Per format (sorted by label): the gap's least-squares slope against log2(D/N) at each size with two or
    more budgets, and the mean of those slopes with its Student-t interval at `level`."""
    out = []
    for label, gap in sorted(measured_gaps(runs, reference).items()):
        per_size = {}
        for n in np.unique(gap.n):
            rows = gap.n == n
            x = np.log2(gap.tokens_per_param[rows])
            if len(x) >= 2:
                per_size[float(n)] = float(np.polyfit(x, gap.diff[rows], 1)[0])
        slopes = np.array(list(per_size.values()))
        growth = lo = hi = None
        if len(slopes):
            growth = float(slopes.mean())
        if len(slopes) >= 2:
            half = stats.t.ppf(0.5 + level / 2, len(slopes) - 1) * slopes.std(ddof=1) / np.sqrt(len(slopes))
            lo, hi = growth - float(half), growth + float(half)
        out.append(GapGrowth(label, float(gap.diff.mean()), per_size, growth, lo, hi))
    return out


GROWTH_COLUMNS = ("format", "mean gap", "gap change per doubling of D", "95% CI", "per size (N: change)", "sizes")


def growth_cells(row: GapGrowth) -> list[str]:
    """One table row, the same in the terminal and in the report page."""
    signed = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    interval = "-" if row.lo is None else f"[{row.lo:+.4f}, {row.hi:+.4f}]"
    per_size = ", ".join(f"{n:,.0f}: {g:+.4f}" for n, g in row.per_size.items()) or "-"
    return [row.label, signed(row.mean_gap), signed(row.growth), interval, per_size, str(len(row.per_size))]


def growth_caption(reference: str) -> str:
    return (f"Loss minus {reference}'s loss at the same N and token budget (nats, seeds averaged). The compression "
            "law's gap does not depend on D (change 0); an interval that excludes 0 marks a format whose gap the "
            "law's constant eff does not describe.")


def render_growth(rows: list[GapGrowth], reference: str):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"Loss gap to {reference} and its change per doubling of D at fixed N",
                  caption=escape(growth_caption(reference)))
    for name in GROWTH_COLUMNS:
        table.add_column(name, justify="left" if name in ("format", "per size (N: change)") else "right")
    for r in rows:
        table.add_row(*(escape(c) for c in growth_cells(r)))
    return table


CELL_COLUMNS = ("format", "N", "D/N", "D", "gap", "implied eff")


def render_cells(rows: list[CellEff], law: LawFit):
    from rich.markup import escape
    from rich.table import Table

    caption = (f"Each cell's loss minus {law.reference}'s (nats, seeds averaged) and the eff whose law gap "
               f"A N^-alpha (eff^-alpha - 1) equals it, with the compression fit's A = {law.A:.4g}, alpha = "
               f"{law.alpha:.4g}. A constant multiplier gives every cell of a format the same eff.")
    table = Table(title="The multiplier each cell implies", caption=escape(caption))
    for name in CELL_COLUMNS:
        table.add_column(name, justify="left" if name == "format" else "right")
    for r in rows:
        eff = "-" if r.implied_eff is None else f"{r.implied_eff:.3f}"
        table.add_row(escape(r.label), f"{r.n:,.0f}", f"{r.tokens_per_param:.3g}", f"{r.tokens:,.0f}",
                      f"{r.gap:+.4f}", eff)
    return table


RESIDUAL_COLUMNS = ("N", "D/N", "D", "reference", "mean over labels", "labels")


def render_residuals(rows: list[CellResidual], law: LawFit):
    from rich.markup import escape
    from rich.table import Table

    caption = (f"Loss minus the compression fit's prediction (nats, seeds averaged): {law.reference}'s, and the mean "
               "over the labels trained at the cell, each at its fitted eff. The formats of a cell share this misfit; "
               "it cancels in their gaps to the reference, not in a resample that draws their runs from other cells.")
    table = Table(title="The law's misfit at each cell", caption=escape(caption))
    for name in RESIDUAL_COLUMNS:
        table.add_column(name, justify="right")
    for r in rows:
        table.add_row(f"{r.n:,.0f}", f"{r.tokens_per_param:.3g}", f"{r.tokens:,.0f}", f"{r.reference:+.4f}",
                      f"{r.mean:+.4f}", str(r.labels))
    return table
