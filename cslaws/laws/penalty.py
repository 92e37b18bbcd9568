"""The penalty form: a format adds a loss term that may grow with D, after Chen et al. (2025), *Scaling Law
for Quantization-Aware Training* (arXiv 2505.14302):

    L(N, D) = A N^-alpha + B D^-beta + E + k_f (D / D0)^gamma_D (N / N0)^-gamma_N,      k_reference = 0

The compression form's penalty for a format, A N^-alpha (eff^-alpha - 1), is the case gamma_D = 0,
gamma_N = alpha: it does not move with D. Chen et al. measured a QAT penalty that grows with D and shrinks
with N (their delta_p(N, D, G) = k D^gamma_D (log2 G)^gamma_G / N^gamma_N, fitted on W4A4 runs); so does
this suite's CPU study (`bench law gaps`). Here every format has its own size k_f and the exponents are
shared: the growth has one shape, each format its own amount. N0 and D0 are the geometric means of the
runs' N and D, so k_f is the penalty in nats in the middle of the runs, and `implied_eff` turns it into
the multiplier the compression form would need there.

The fit reuses the compression fit's objective and solver (`fit._Problem`: Huber on log L, L-BFGS-B with the
analytic gradient); the penalty is a fourth log-sum-exp term. Starting points: the compression fit's shared
constants, a grid of exponents, and each format's k_f profiled on a 1-D grid (exact, as the objective
separates by format once the rest is fixed). Intervals come from the same stratified bootstrap of runs as
every other fit (`uncertainty.resample_weights`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import huber

from cslaws.laws.fit import (
    HUBER_DELTA, SHARED, FitError, Holdout, LawFit, Runs, _Model, _Problem, _check_runs, check_reference,
    fit_compression, holdout_check, label_index,
)
from cslaws.laws.gaps import implied_eff
from cslaws.laws.uncertainty import _refit, one_run_labels, percentile_interval, resample_weights

EXPONENTS = ("gamma_D", "gamma_N")
#: Both exponents may take either sign: the data say whether the penalty grows or shrinks with D and N.
_GAMMA_BOUND = 3.0
#: k_f, in nats at (N0, D0): from none (a format as good as the reference, such as int8) to far above any
#: penalty a format that trains at all could cost.
_K_MAX = 10.0
#: A k_f this close to 0 (nats) is at its bound, as `_Problem.at_bound` reads the other constants' ends.
_K_ZERO = 1e-6
_GRID_GAMMA_D = (0.0, 0.25, 0.5, 1.0)
_GRID_GAMMA_N = (-0.5, 0.0, 0.5)
_GRID_K = np.concatenate([[0.0], np.geomspace(1e-4, 1.0, 13)])
_N_STARTS = 4


class _Penalty(_Model):
    """theta = [a, b, e, alpha, beta, gamma_D, gamma_N, k_1 .. k_F]; no offset on the N term.

    k_f enters linearly (bounded below by 0), not as log k_f: a format as good as the reference fits k_f = 0,
    where the gradient in log k_f vanishes and a bootstrap refit could never leave it.
    """

    def __init__(self, runs: Runs, reference: str) -> None:
        self.names, self.idx, self.onehot = label_index(runs, reference)

    @property
    def n_extra(self) -> int:
        return 2 + len(self.names)

    def shift(self, theta: np.ndarray) -> np.ndarray:
        return np.zeros((len(theta), len(self.idx)))

    def shift_grad(self, g_run: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return np.zeros((len(theta), 5 + self.n_extra))

    def _shape(self, theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each run's k_f (0 for the reference) and gamma_D log(D / D0) - gamma_N log(N / N0); logn and logd
        come centred (`_Problem`)."""
        return theta[:, 7:] @ self.onehot.T, theta[:, 5:6] * logd - theta[:, 6:7] * logn

    def term(self, theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray:
        k, shape = self._shape(theta, logn, logd)
        with np.errstate(divide="ignore"):  # log 0 = -inf: no penalty, a zero weight in the log-sum-exp
            return np.log(k) + shape

    def term_grad(self, psi: np.ndarray, log_pred: np.ndarray, theta: np.ndarray, logn: np.ndarray,
                  logd: np.ndarray) -> np.ndarray:
        k, shape = self._shape(theta, logn, logd)
        dk = psi * np.exp(shape - log_pred)  # d log L / d k_f = (D/D0)^gamma_D (N/N0)^-gamma_N / L
        grad = np.zeros((len(theta), 5 + self.n_extra))
        grad[:, 5] = (dk * k * logd).sum(1)
        grad[:, 6] = -(dk * k * logn).sum(1)
        grad[:, 7:] = dk @ self.onehot
        return grad


@dataclass
class PenaltyFit:
    """A fitted penalty form. `k` has every non-reference label: its penalty in nats at (N0, D0)."""

    A: float
    B: float
    E: float
    alpha: float
    beta: float
    gamma_D: float
    gamma_N: float
    k: dict[str, float]
    N0: float
    D0: float
    rmse_log: float
    n_runs: int
    reference: str
    at_bound: list[str]
    holdout: Holdout | None = None
    holdout_note: str = ""
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    optima: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    problem: _Problem | None = field(default=None, repr=False)

    def penalty(self, label: str, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """The format's loss above the reference's at (N, D), in nats (0 for the reference)."""
        k = 0.0 if label == self.reference else self.k[label]
        return k * (np.asarray(d, dtype=np.float64) / self.D0) ** self.gamma_D * (
            np.asarray(n, dtype=np.float64) / self.N0) ** -self.gamma_N

    def predict(self, label: str, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
        return self.A * n ** -self.alpha + self.B * d ** -self.beta + self.E + self.penalty(label, n, d)

    @property
    def at_zero(self) -> list[str]:
        """The formats whose k_f sits at its lower bound 0: the form lets no format beat the reference, so for
        these the runs say only "no worse", and their eff at (N0, D0) is 1 by construction."""
        return [name for name, k in self.k.items() if k <= _K_ZERO]

    def eff_at_centre(self) -> dict[str, float]:
        """Each format's multiplier whose gap A N0^-alpha (eff^-alpha - 1), with this fit's A and alpha, equals
        its penalty at (N0, D0)."""
        return {s: float(implied_eff(self.A, self.alpha, self.N0, k)) for s, k in self.k.items()}

    def to_dict(self) -> dict:
        return {
            **{name: getattr(self, name) for name in (*SHARED, *EXPONENTS)}, "N0": self.N0, "D0": self.D0,
            "k": dict(self.k), "eff_at_centre": self.eff_at_centre(), "rmse_log": self.rmse_log,
            "runs": self.n_runs, "reference": self.reference, "at_bound": list(self.at_bound),
            "at_zero": self.at_zero,
            "holdout": None if self.holdout is None else vars(self.holdout).copy(), "holdout_note": self.holdout_note,
        }


def fit_penalty(runs: Runs, reference: str = "dense", *, holdout: bool = True,
                start: LawFit | None = None) -> PenaltyFit:
    """Fit the penalty form jointly over all labels (the reference's runs carry no penalty). `start`: the
    compression fit of the same runs, whose shared constants seed the search (fitted here when not given;
    a caller that shows both forms has it already)."""
    check_reference(runs, reference, "the penalties are relative to it, so the penalty form needs reference runs")
    model = _Penalty(runs, reference)
    if not model.names:
        raise FitError(f"every run has the reference label {reference!r}; the penalty form needs runs of a format")
    _check_runs(runs, 5 + model.n_extra, f"penalty form with {len(model.names)} non-reference label(s)")
    bounds = [(-_GAMMA_BOUND, _GAMMA_BOUND)] * 2 + [(0.0, _K_MAX)] * len(model.names)
    problem = _Problem(runs, model, bounds, EXPONENTS)  # the gammas' ends are named; k_f's 0 is `at_zero`
    if start is None:
        start = fit_compression(runs, reference, holdout=False)
    elif start.n_runs != len(runs) or start.reference != reference:
        raise FitError(f"the starting compression fit has {start.n_runs} runs and reference {start.reference!r}; "
                       f"the penalty form is fitted to {len(runs)} runs with reference {reference!r}")
    sol = problem.solve(_starts(problem, start))
    law = _law(sol.theta, sol.optima, problem, runs, reference)
    if holdout:
        law.holdout, law.holdout_note = holdout_check(runs, lambda r: fit_penalty(r, reference, holdout=False),
                                                      _predict_runs)
    return law


def try_fit_penalty(runs: Runs, reference: str = "dense", *, holdout: bool = True,
                    start: LawFit | None = None) -> tuple[PenaltyFit | None, str]:
    """`fit_penalty`, or None and why not: a page that shows the form beside another reports the reason."""
    try:
        return fit_penalty(runs, reference, holdout=holdout, start=start), ""
    except FitError as err:
        return None, str(err)


def _starts(problem: _Problem, compression: LawFit) -> np.ndarray:
    """The best grid points (raw coordinates): shared constants from the compression fit, exponents on a grid,
    each format's k_f profiled on `_GRID_K` for each pair of exponents."""
    logn, logd, logl = problem.data
    model = problem.model
    shared = problem.centre(np.concatenate([compression.theta[:5], np.zeros(model.n_extra)]))
    a, b, e, alpha, beta = shared[:5]
    base = np.logaddexp(np.logaddexp(a - alpha * logn, b - beta * logd), e)
    candidates = []
    for gd, gn in itertools.product(_GRID_GAMMA_D, _GRID_GAMMA_N):
        total = huber(HUBER_DELTA, base[model.idx < 0] - logl[model.idx < 0]).sum()
        ks = np.zeros(len(model.names))
        for j in range(len(model.names)):
            rows = model.idx == j
            pen = _GRID_K[:, None] * np.exp(gd * logd[rows] - gn * logn[rows])
            per_k = huber(HUBER_DELTA, np.log(np.exp(base[rows]) + pen) - logl[rows]).sum(axis=1)
            ks[j] = _GRID_K[per_k.argmin()]
            total += per_k.min()
        candidates.append((total, np.concatenate([compression.theta[:5], [gd, gn], ks])))
    candidates.sort(key=lambda c: c[0])
    return np.stack([t for _, t in candidates[:_N_STARTS]])


def _law(theta: np.ndarray, optima: np.ndarray, problem: _Problem, runs: Runs, reference: str) -> PenaltyFit:
    model = problem.model
    a, b, e, alpha, beta, gd, gn = (float(v) for v in theta[:7])
    names = problem.at_bound(theta)
    law = PenaltyFit(
        A=math.exp(a), B=math.exp(b), E=math.exp(e), alpha=alpha, beta=beta, gamma_D=gd, gamma_N=gn,
        k={name: float(theta[7 + j]) for j, name in enumerate(model.names)},
        N0=math.exp(problem.mu_n), D0=math.exp(problem.mu_d), rmse_log=0.0, n_runs=len(runs), reference=reference,
        at_bound=names, theta=theta, optima=optima, problem=problem,
    )
    law.rmse_log = float(np.sqrt(np.mean((np.log(_predict_runs(law, runs)) - np.log(runs.loss)) ** 2)))
    return law


def _predict_runs(law: PenaltyFit, runs: Runs) -> np.ndarray:
    """Each run's predicted loss; NaN for a label the law has no penalty for (one it was not fitted on)."""
    known = [s == law.reference or s in law.k for s in runs.label]
    return np.array([law.predict(str(s), n, d) if ok else np.nan
                     for s, n, d, ok in zip(runs.label, runs.n, runs.d, known)])


@dataclass
class PenaltyBootstrap:
    """Bootstrap samples of the exponents, each format's k_f and the multiplier it implies at (N0, D0)."""

    samples: dict[str, np.ndarray]
    k: dict[str, np.ndarray]
    eff: dict[str, np.ndarray]
    level: float
    #: formats of one run: every resample draws that run, so their k_f moves only with the shared constants,
    #: and a percentile interval of it would look like a measured one (as `Bootstrap.single`)
    single: frozenset[str] = frozenset()

    def interval(self, x: np.ndarray) -> tuple[float, float]:
        return percentile_interval(x, self.level)

    def to_dict(self) -> dict:
        return {
            "level": self.level, "resamples": len(self.samples["alpha"]),
            "ci": {name: list(self.interval(v)) for name, v in self.samples.items()},
            "k_ci": {name: list(self.interval(v)) for name, v in self.k.items() if name not in self.single},
            "eff_ci": {name: list(self.interval(v)) for name, v in self.eff.items() if name not in self.single},
        }


def bootstrap_penalty(law: PenaltyFit, runs: Runs, k: int = 100, seed: int = 0, level: float = 0.95) -> PenaltyBootstrap:
    """Refit `law` (from `fit_penalty` on `runs`) on k resamples of runs within each label."""
    problem = law.problem
    if problem is None or len(problem.logl) != len(runs):
        raise FitError(f"the law was fitted on {law.n_runs} runs but {len(runs)} were given; pass the same runs")
    thetas = np.stack([_refit(law, w) for w in resample_weights(runs.label, k, seed)])
    a, _, _, alpha, beta, gd, gn = thetas[:, :7].T
    samples = {"A": np.exp(a), "alpha": alpha, "beta": beta, "gamma_D": gd, "gamma_N": gn}
    ks = {name: thetas[:, 7 + j] for j, name in enumerate(problem.model.names)}
    effs = {name: implied_eff(np.exp(a), alpha, law.N0, v) for name, v in ks.items()}
    return PenaltyBootstrap(samples, ks, effs, level, one_run_labels(runs, list(ks)))


PENALTY_COLUMNS = ("format", "penalty k_f (nats)", "95% CI", "eff at (N0, D0)", "95% CI", "compression eff",
                   "95% CI")


def _ci(bounds: tuple[float, float] | None, digits: int) -> str:
    return "-" if bounds is None else f"[{bounds[0]:.{digits}f}, {bounds[1]:.{digits}f}]"


def _fit_line(name: str, rmse_log: float, holdout: Holdout | None, note: str, constants: int) -> str:
    check = (f"largest size N={holdout.n:.4g} held out: RMSE(log L) {holdout.rmse_log:.4f}, max rel. error "
             f"{holdout.max_rel_err:.2%}") if holdout is not None else note
    return f"{name}: {constants} constants, RMSE(log L) {rmse_log:.4f}; {check}"


def penalty_summary(law: PenaltyFit, intervals: PenaltyBootstrap | None, compression: LawFit) -> list[str]:
    """The lines under the table: the exponents with their intervals, and both forms' fit on the same runs."""
    ci = {} if intervals is None else {name: intervals.interval(v) for name, v in intervals.samples.items()}
    gamma = ", ".join(f"{name} = {getattr(law, name):.3f}" + (f" {_ci(ci[name], 3)}" if name in ci else "")
                      for name in EXPONENTS)
    lines = [
        f"L = {law.A:.4g} N^-{law.alpha:.4f} + {law.B:.4g} D^-{law.beta:.4f} + {law.E:.4g} + k_f (D / {law.D0:.4g})"
        f"^gamma_D (N / {law.N0:.4g})^-gamma_N; {gamma}: the penalty x{2 ** law.gamma_D:.3f} per doubling of D",
        _fit_line("penalty form", law.rmse_log, law.holdout, law.holdout_note, 7 + len(law.k)),
        _fit_line("compression form", compression.rmse_log, compression.holdout, compression.holdout_note,
                  5 + len(compression.eff) - 1),
    ]
    if law.at_bound:
        lines.append(f"penalty form at search bound (not determined by the runs): {', '.join(law.at_bound)}")
    if law.at_zero:
        lines.append(f"k_f at its bound 0 (this form lets no format beat {law.reference}: its eff at (N0, D0) is 1 by "
                     f"construction): {', '.join(law.at_zero)}")
    return lines


def penalty_rows(law: PenaltyFit, intervals: PenaltyBootstrap | None, compression: LawFit,
                 compression_ci: dict[str, tuple[float, float]]) -> list[list[str]]:
    """One row per format, sorted by its penalty (largest last), the same in the terminal and the README."""
    eff = law.eff_at_centre()
    rows = []
    for name in sorted(law.k, key=lambda s: (law.k[s], s)):
        c_eff = compression.eff.get(name)
        if intervals is None:
            cis = ["-", "-", _ci(compression_ci.get(name), 3)]
        elif name in intervals.single:
            cis = ["1 run: none"] * 3
        else:
            cis = [_ci(intervals.interval(intervals.k[name]), 4), _ci(intervals.interval(intervals.eff[name]), 3),
                   _ci(compression_ci.get(name), 3)]
        rows.append([name, f"{law.k[name]:.4f}", cis[0], f"{eff[name]:.3f}", cis[1],
                     "-" if c_eff is None else f"{c_eff:.3f}", cis[2]])
    return rows


def render_penalty(law: PenaltyFit, intervals: PenaltyBootstrap | None, compression: LawFit,
                   compression_ci: dict[str, tuple[float, float]]):
    from rich.markup import escape
    from rich.table import Table

    caption = (f"k_f: the format's loss above {law.reference}'s at N0 = {law.N0:,.0f}, D0 = {law.D0:,.0f} (the "
               "runs' geometric means); eff at (N0, D0): the multiplier whose gap A N0^-alpha (eff^-alpha - 1), with this "
               "fit's A and alpha, equals k_f. "
               + " ".join(f"{line}." for line in penalty_summary(law, intervals, compression)))
    table = Table(title=f"Penalty form (Chen et al. 2025) against the compression form, {law.n_runs} runs",
                  caption=escape(caption))
    for name in PENALTY_COLUMNS:
        table.add_column(name, justify="left" if name == "format" else "right")
    for row in penalty_rows(law, intervals, compression, compression_ci):
        table.add_row(*(escape(c) for c in row))
    return table
