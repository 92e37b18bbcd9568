"""Figures of the law fits (matplotlib, Agg backend): `bench plot` saves them as PNG files, `bench report`
embeds the same figures in its page as SVG.

- loss_vs_n: final loss against N per format, runs as points, the fitted law as curves, one per token
  budget that the format's runs were trained at: a D shared by the sizes, or else a D/N (`_budgets`).
- loss_gap: one panel per format, its loss minus the reference's (dense) against N. Points: measured
  differences, each format's runs paired with the reference runs of the same size and token budget (seeds
  averaged). Curve: the fitted law's difference A N^-alpha (eff^-alpha - 1), which does not depend on D,
  with its bootstrap band. At small scale the formats' loss-vs-N curves lie on top of each other; their
  differences to dense are what tells formats apart.
- gap_vs_d: one panel per format, the same measured differences against D, one line per model size joining
  its token budgets, beside the law's difference at that size, which is the same at every D (`gaps`), and
  the penalty form's, which may change with D (`penalty`; drawn where that form can be fitted).
- eff_vs_gmse: fitted eff (bootstrap interval as error bars) against GMSE, with the published rho curve
  and the unified law's rho per family (`heldout.fit_rho`) drawn only where its constants are determined by the
  runs, with a bootstrap band; otherwise the legend says why there is no curve. A format of several parts
  (weights and activations, or sparsity and quantization) is placed at its equivalent single-tensor GMSE
  under the published constants (the GMSE whose rho equals the product of its parts' rho). Held-out
  predictions (a format's eff predicted by a fit without it), where given, are drawn beside the measured.
- iso_memory: final loss against model memory in bits (N x bits per value) per format.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter  # noqa: E402

from cslaws.laws.fit import (  # noqa: E402
    FAMILY_PARAMS,
    constant_key,
    RHO_C,
    RHO_F,
    RHO_LSAT,
    Runs,
    rho,
    rho_inverse,
    unified_eff,
)
from cslaws.laws.gaps import law_gap, measured_gaps  # noqa: E402
from cslaws.laws.heldout import Prediction, RhoFit  # noqa: E402
from cslaws.laws.leaderboard import Leaderboard, Row  # noqa: E402
from cslaws.laws.penalty import PenaltyFit, try_fit_penalty  # noqa: E402

#: What `bench plot` and `bench report` pin when the user pins nothing: three free constants pass exactly
#: through three formats and extrapolate wildly; Lsat = 1 is the published value for scalar quantization.
DEFAULT_FIXED = {"Lsat": RHO_LSAT}


def _equivalent_gmse(row: Row, parts: list[tuple[str, float]], fit: RhoFit) -> tuple[float | None, bool]:
    """Where a format sits on the GMSE axis, and whether that place is under the fitted law: a format of one
    compressed tensor at its own GMSE; a composition of parts of one family where that family's fitted rho
    equals the product of its parts' fitted rho (so its prediction lies on the drawn curve); any other (mixed
    families, or a family the runs leave undetermined) where the published rho equals the published product,
    which the drawn fitted curves do not follow (False). None for dense."""
    if not parts:
        return None, True
    if len(parts) == 1:
        return parts[0][1], True
    law = fit.report.law if fit.report is not None else None
    families = {fam for fam, _ in parts}
    if law is not None and len(families) == 1 and not families & set(fit.undetermined) and families <= set(law.family):
        constants = law.family[next(iter(families))]
        return float(rho_inverse(unified_eff(parts, law.family), **constants)), True
    return float(rho_inverse(row.rho)), False


def _round2(values: np.ndarray) -> np.ndarray:
    """To 2 significant digits: D is whole steps, so neither D nor D/N is ever exactly the budget asked for."""
    return np.array([float(f"{v:.2g}") for v in np.asarray(values, dtype=np.float64)])


def _budgets(n: np.ndarray, d: np.ndarray) -> tuple[bool, np.ndarray]:
    """How the runs' token budgets were set, so that a curve or marker stands for one budget: True and each
    run's D when the sizes share a few D (a matrix of `tokens`), else False and each run's D/N (a matrix
    of `tokens_per_param`), both to 2 significant digits. Whichever has fewer distinct values is the one
    the runs were given."""
    per_d, per_ratio = _round2(d), _round2(np.asarray(d, dtype=np.float64) / n)
    fixed_d = len(np.unique(per_d)) < len(np.unique(per_ratio))
    return fixed_d, per_d if fixed_d else per_ratio


def _budget_d(fixed_d: bool, budget: float, n: np.ndarray) -> np.ndarray:
    """D along a law curve drawn at one budget."""
    return np.full_like(n, budget) if fixed_d else budget * n


def _budget_text(fixed_d: bool, budget: float) -> str:
    return f"D = {budget:,.0f}" if fixed_d else f"D/N = {budget:g}"


def _log_x(ax) -> None:
    """A log axis with ticks at 1, 2 and 5 times powers of ten, labelled 20k, 100k, 2M: over the decade or
    two that small models span, matplotlib's default labels the minor ticks in scientific notation and
    the labels run into each other."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.xaxis.set_minor_formatter(NullFormatter())


def colours(board: Leaderboard) -> dict[str, Any]:
    """One colour per format, in leaderboard order, the same in every figure."""
    return {r.label: plt.cm.tab10(i % 10) for i, r in enumerate(board.rows)}


def loss_vs_n_figure(board: Leaderboard, runs: Runs) -> Figure:
    law = board.law
    fig, ax = plt.subplots(figsize=(7, 5))
    fixed_d, budgets = _budgets(runs.n, runs.d)
    for label, colour in colours(board).items():
        rows = runs.label == label
        ax.scatter(runs.n[rows], runs.loss[rows], color=colour, s=18, label=label)
        n = np.geomspace(runs.n.min() / 1.5, runs.n.max() * 1.5, 100)
        for budget in np.unique(budgets[rows]):
            ax.plot(n, law.predict(n, _budget_d(fixed_d, budget, n), law.eff[label]), color=colour, lw=1)
    _log_x(ax)
    ax.set(xlabel="non-embedding parameters N", ylabel="final validation loss",
           title=f"Loss vs N (curves: fitted law at each token budget {'D' if fixed_d else 'D/N'})")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def gap_band(board: Leaderboard, label: str, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fitted loss difference to the reference A N^-alpha (eff^-alpha - 1) at `n`, and its bootstrap
    interval (the same resamples as the leaderboard's eff intervals)."""
    law, boot = board.law, board.intervals
    central = law_gap(law.A, law.alpha, law.eff[label], n)
    draws = law_gap(boot.samples["A"][:, None], boot.samples["alpha"][:, None], boot.eff_samples[label][:, None],
                    n[None, :])
    tail = 50.0 * (1.0 - boot.level)
    lo, hi = np.percentile(draws, [tail, 100.0 - tail], axis=0)
    return central, lo, hi


def _format_panels(count: int) -> tuple[Figure, list]:
    """A grid of one panel per format, up to 3 columns, sharing their axes; the spare panels hidden."""
    cols = min(3, max(1, count))
    nrows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols, 2.7 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    panels = list(axes.flat)
    for ax in panels[count:]:
        ax.set_visible(False)
    return fig, panels[:count]


def _label_panel(ax, label: str) -> None:
    ax.axhline(0.0, color="k", lw=0.6)
    ax.set_title(label, fontsize=9)
    _log_x(ax)
    ax.tick_params(labelsize=7)


def _finish_panels(fig: Figure, handles: list, xlabel: str, reference: str, title: str) -> None:
    """The shared legend below the panels, the axis labels and the title."""
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=7, frameon=False)
    fig.supxlabel(xlabel, fontsize=8, y=0.06)
    fig.supylabel(f"loss - loss of {reference}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))


def loss_gap_figure(board: Leaderboard, runs: Runs) -> Figure:
    reference = board.law.reference
    labels = [r.label for r in board.rows if r.label != reference]
    gaps = measured_gaps(runs, reference)
    fixed_d = _budgets(runs.n, runs.d)[0]
    fig, panels = _format_panels(len(labels))
    n = np.geomspace(runs.n.min() / 1.3, runs.n.max() * 1.3, 100)
    colour = colours(board)
    markers = {}
    for ax, label in zip(panels, labels):
        central, lo, hi = gap_band(board, label, n)
        ax.fill_between(n, lo, hi, color=colour[label], alpha=0.2, lw=0)
        ax.plot(n, central, color=colour[label], lw=1.2)
        gap = gaps.get(label)
        if gap is not None:
            budgets = _round2(gap.n * gap.tokens_per_param if fixed_d else gap.tokens_per_param)
            for budget in np.unique(budgets):
                rows = budgets == budget
                marker = markers.setdefault(budget, "osD^v"[len(markers) % 5])
                ax.scatter(gap.n[rows], gap.diff[rows], color=colour[label], marker=marker, s=16)
        _label_panel(ax, label)
    handles = [plt.Line2D([], [], color="grey", marker=m, ls="", label=f"measured, {_budget_text(fixed_d, b)}")
               for b, m in markers.items()]
    handles.append(plt.Line2D([], [], color="grey", lw=1.2, label=f"fitted law, {100 * board.intervals.level:.0f}% "
                              "bootstrap band"))
    _finish_panels(fig, handles, "non-embedding parameters N", reference,
                   f"Loss difference to {reference} vs N (above 0: worse than {reference})")
    return fig


def gap_vs_d_figure(board: Leaderboard, runs: Runs, penalty: PenaltyFit | None = None) -> Figure:
    """One panel per format: its measured gap to the reference against D, one line per model size joining its
    token budgets, beside the law's gap at that size (dashed), which is the same at every D, and the penalty
    form's (dotted; `penalty.py`), which may change with D."""
    law = board.law
    labels = [r.label for r in board.rows if r.label != law.reference]
    gaps = measured_gaps(runs, law.reference)
    sizes = np.unique(runs.n)
    shade = {n: plt.cm.viridis(i / max(1, len(sizes) - 1) * 0.9) for i, n in enumerate(sizes)}
    fig, panels = _format_panels(len(labels))
    for ax, label in zip(panels, labels):
        gap = gaps.get(label)
        for n in [] if gap is None else np.unique(gap.n):
            rows = gap.n == n
            d = n * gap.tokens_per_param[rows]
            ax.plot(d, gap.diff[rows], color=shade[n], marker="o", ms=3, lw=1.2)
            flat = law_gap(law.A, law.alpha, law.eff[label], n)
            ax.plot([d.min(), d.max()], [flat, flat], color=shade[n], ls="--", lw=0.9)
            if penalty is not None and label in penalty.k:
                curve = np.geomspace(d.min(), d.max(), 20)
                ax.plot(curve, penalty.penalty(label, n, curve), color=shade[n], ls=":", lw=1.2)
        _label_panel(ax, label)
    handles = [plt.Line2D([], [], color=shade[n], marker="o", ms=3, label=f"N = {n:,.0f}") for n in sizes]
    handles.append(plt.Line2D([], [], color="grey", ls="--", lw=0.9, label="fitted law (the same at every D)"))
    if penalty is not None:
        handles.append(plt.Line2D([], [], color="grey", ls=":", lw=1.2, label="penalty form (Chen et al. 2025)"))
    _finish_panels(fig, handles, "training tokens D", law.reference,
                   f"Loss difference to {law.reference} vs D at fixed N (solid: measured, seeds averaged)")
    return fig


def _legend_note(text: str) -> str:
    return textwrap.fill(text, 70)


def eff_vs_gmse_figure(board: Leaderboard, fit: RhoFit, parts: dict[str, list[tuple[str, float]]],
                       predictions: Sequence[Prediction] = ()) -> Figure:
    """Measured eff against GMSE, with the published and fitted rho and the held-out predictions. `parts`:
    each label's compressed parts (`format_parts`), which place a composition on the GMSE axis."""
    fig, ax = plt.subplots(figsize=(7, 5))
    placed = [(_equivalent_gmse(r, parts[r.label], fit), r) for r in board.rows]
    pts = [(g, r, fitted) for (g, fitted), r in placed if g is not None]
    if pts:
        g = np.array([p[0] for p in pts])
        # a percentile interval need not contain the full-data estimate: clip, as errorbar takes no negative lengths
        for fitted, label in ((True, "measured eff (free fit, 95% CI)"),
                              (False, "measured eff of a composition placed by the published rho (95% CI)")):
            sel = [p for p in pts if p[2] == fitted]
            if sel:
                # a format of one run has no interval: no bar (NaN), rather than one that looks exact
                err = np.maximum(np.array([[np.nan, np.nan] if r.eff_lo is None else [r.eff - r.eff_lo, r.eff_hi - r.eff]
                                           for _, r, _ in sel]).T, 0.0)
                ax.errorbar([p[0] for p in sel], [r.eff for _, r, _ in sel], yerr=err, fmt="o" if fitted else "s",
                            mfc="k" if fitted else "none", ms=4, capsize=2, color="k", label=label)
        for gi, (_, r, _) in zip(g, pts):
            ax.annotate(r.label, (gi, r.eff), fontsize=7, xytext=(3, 3), textcoords="offset points")
        grid = np.geomspace(min(g.min() / 3, 1e-4), 1.0, 200)
        ax.plot(grid, rho(grid), "--", color="grey", label=f"published rho (F={RHO_F}, C={RHO_C}, Lsat={RHO_LSAT})")
        _draw_fitted_rho(ax, grid, fit)
        x_of = {r.label: gi for gi, r, _ in pts}
        shown = [p for p in predictions if p.predicted is not None and p.label in x_of]
        if shown:
            xs = np.array([x_of[p.label] for p in shown]) * 1.12  # beside the measured point, not on it
            ys = np.array([p.predicted for p in shown])
            yerr = np.array([[p.predicted - (p.predicted_lo if p.predicted_lo is not None else p.predicted),
                              (p.predicted_hi if p.predicted_hi is not None else p.predicted) - p.predicted]
                             for p in shown]).T.clip(min=0.0)
            ax.errorbar(xs, ys, yerr=yerr, fmt="D", mfc="none", ms=5, capsize=2, color="C3",
                        label="held out: predicted from GMSE by a fit without the format")
        # below the axes: the reasons for a missing curve take several lines and would cover the points
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.14))
    ax.set(xscale="log", xlabel="GMSE (a composition: where its family's fitted rho equals its parts' product)",
           ylabel="eff",
           title="Effective-parameter multiplier vs GMSE")
    fig.tight_layout()
    return fig


def _draw_fitted_rho(ax, grid: np.ndarray, fit: RhoFit) -> None:
    """The unified fit's rho per determined family, with its bootstrap band; for the others (or no fit at
    all) an empty legend entry that says why no curve is drawn."""
    if fit.report is None:
        ax.plot([], [], " ", label=_legend_note(f"no fitted rho: {fit.why_none}"))
        return
    law, boot = fit.report.law, fit.report.intervals
    for i, (fam, c) in enumerate(law.family.items()):
        if fam in fit.undetermined:
            ax.plot([], [], " ", label=_legend_note(f"no fitted rho for {fam}: {fit.undetermined[fam]}"))
            continue
        colour = f"C{i}"
        ax.plot(grid, rho(grid, **c), color=colour,
                label=f"fitted rho, {fam} (F={c['F']:.3g}, C={c['C']:.3g}, Lsat={c['Lsat']:.3g})")
        if boot is not None:
            draws = rho(grid[None, :], *(boot.samples[constant_key(p, fam)][:, None] for p in FAMILY_PARAMS))
            tail = 50.0 * (1.0 - boot.level)
            lo, hi = np.percentile(draws, [tail, 100.0 - tail], axis=0)
            ax.fill_between(grid, lo, hi, color=colour, alpha=0.15, lw=0)


def iso_memory_figure(board: Leaderboard, runs: Runs) -> Figure:
    fig, ax = plt.subplots(figsize=(7, 5))
    bits = {r.label: r.bits for r in board.rows}
    for label, colour in colours(board).items():
        rows = runs.label == label
        ax.scatter(runs.n[rows] * bits[label], runs.loss[rows], color=colour, s=18, label=label)
    _log_x(ax)
    ax.set(xlabel="model memory (bits) = N x the format's mean stored bits per value", ylabel="final validation loss",
           title="Iso-memory comparison")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def figures(board: Leaderboard, runs: Runs, fit: RhoFit,
            parts: dict[str, list[tuple[str, float]]]) -> dict[str, Callable[[], Figure]]:
    """The figures `bench plot` writes, by file stem; built on demand so one is open at a time."""
    return {
        "loss_vs_n": lambda: loss_vs_n_figure(board, runs),
        "loss_gap": lambda: loss_gap_figure(board, runs),
        "gap_vs_d": lambda: gap_vs_d_figure(
            board, runs, try_fit_penalty(runs, board.law.reference, holdout=False, start=board.law)[0]),
        "eff_vs_gmse": lambda: eff_vs_gmse_figure(board, fit, parts),
        "iso_memory": lambda: iso_memory_figure(board, runs),
    }


#: The file stems of `figures`, known before any fit: `bench plot` checks the paths it will write first.
FIGURES = ("loss_vs_n", "loss_gap", "gap_vs_d", "eff_vs_gmse", "iso_memory")


def figure_path(out: Path, stem: str) -> Path:
    """The PNG file of figure `stem` in the folder `out`."""
    return out / f"{stem}.png"


def plot_all(board: Leaderboard, runs: Runs, fit: RhoFit, parts: dict[str, list[tuple[str, float]]],
             out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, make in figures(board, runs, fit, parts).items():
        fig = make()
        path = figure_path(out, stem)
        fig.savefig(path, dpi=120, bbox_inches="tight")  # keeps a legend placed below the axes
        plt.close(fig)
        paths.append(path)
    return paths
