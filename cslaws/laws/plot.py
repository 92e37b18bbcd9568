"""Figures of a leaderboard fit (matplotlib, Agg backend, PNG files).

- loss_vs_n.png: final loss against N per format, runs as points, the fitted law as curves, one per token
  budget (tokens per parameter, rounded to 2 significant digits) that the format's runs were trained at.
- eff_vs_gmse.png: fitted eff (bootstrap interval as error bars) against GMSE, with the published rho
  curve and, given 3 or more formats, the rho curve fitted to those points (F and C by least squares in
  log eff, Lsat = 1 as published for scalar quantization: three free constants would pass exactly
  through three points and extrapolate wildly). A format of several parts (weights and activations, or
  sparsity and quantization) is placed at its equivalent single-tensor GMSE under the published constants
  (the GMSE whose rho equals the product of its parts' rho).
- iso_memory.png: final loss against model memory in bits (N x bits per value) per format.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.optimize import least_squares  # noqa: E402

from cslaws.laws.fit import RHO_C, RHO_F, RHO_LSAT, Runs, rho, rho_inverse  # noqa: E402
from cslaws.laws.leaderboard import Leaderboard, Row  # noqa: E402


def fit_rho_curve(gmse: np.ndarray, eff: np.ndarray, Lsat: float = RHO_LSAT) -> tuple[float, float]:
    """(F, C) minimising the squared error of log rho(GMSE) against log eff, Lsat fixed."""

    def residual(p: np.ndarray) -> np.ndarray:
        # floor at the smallest double: the search may try constants that round rho to 0
        return np.log(np.maximum(rho(gmse, *np.exp(p), Lsat), np.finfo(float).tiny)) - np.log(eff)

    res = least_squares(residual, np.log([RHO_F, RHO_C]))
    F, C = np.exp(res.x)
    return float(F), float(C)


def _equivalent_gmse(row: Row) -> float | None:
    """The single-tensor GMSE whose published rho is the row's predicted capacity; None for dense."""
    if row.gmse_weight is None and row.gmse_activation is None:
        return None
    return float(rho_inverse(row.rho))


def _budgets(tokens_per_param: np.ndarray) -> list[float]:
    """The distinct token budgets, to 2 significant digits (D is whole steps, so D/N is never exact)."""
    return sorted({float(f"{r:.2g}") for r in tokens_per_param})


def plot_all(board: Leaderboard, runs: Runs, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    law = board.law
    colours = {r.label: plt.cm.tab10(i % 10) for i, r in enumerate(board.rows)}
    bits = {r.label: r.bits for r in board.rows}
    paths = []

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, colour in colours.items():
        rows = runs.label == label
        ax.scatter(runs.n[rows], runs.loss[rows], color=colour, s=18, label=label)
        n = np.geomspace(runs.n.min() / 1.5, runs.n.max() * 1.5, 100)
        for ratio in _budgets(runs.d[rows] / runs.n[rows]):
            ax.plot(n, law.predict(n, ratio * n, law.eff[label]), color=colour, lw=1)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final validation loss",
           title="Loss vs N (curves: fitted law at each token budget D/N)")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "loss_vs_n.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    pts = [(_equivalent_gmse(r), r) for r in board.rows]
    pts = [(g, r) for g, r in pts if g is not None]
    if pts:
        g = np.array([p[0] for p in pts])
        eff = np.array([p[1].eff for p in pts])
        err = np.array([[p[1].eff - p[1].eff_lo, p[1].eff_hi - p[1].eff] for p in pts]).T
        ax.errorbar(g, eff, yerr=err, fmt="o", ms=4, capsize=2, color="k")
        for gi, (_, r) in zip(g, pts):
            ax.annotate(r.label, (gi, r.eff), fontsize=7, xytext=(3, 3), textcoords="offset points")
        grid = np.geomspace(min(g.min() / 3, 1e-4), 1.0, 200)
        ax.plot(grid, rho(grid), "--", color="grey", label=f"published rho (F={RHO_F}, C={RHO_C}, Lsat={RHO_LSAT})")
        if len(pts) >= 3:
            F, C = fit_rho_curve(g, eff)
            ax.plot(grid, rho(grid, F, C), color="C0", label=f"fitted rho (F={F:.3g}, C={C:.3g}, Lsat={RHO_LSAT})")
        ax.legend(fontsize=8)
    ax.set(xscale="log", xlabel="GMSE (equivalent single tensor)", ylabel="eff", title="Effective-parameter multiplier vs GMSE")
    paths.append(_save(fig, out / "eff_vs_gmse.png"))

    fig, ax = plt.subplots(figsize=(7, 5))
    for label, colour in colours.items():
        rows = runs.label == label
        ax.scatter(runs.n[rows] * bits[label], runs.loss[rows], color=colour, s=18, label=label)
    ax.set(xscale="log", xlabel="model memory (bits) = N x bits per value", ylabel="final validation loss",
           title="Iso-memory comparison")
    ax.legend(fontsize=7, ncol=2)
    paths.append(_save(fig, out / "iso_memory.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
