"""Scaling-law fits: the Chinchilla form, the compression form (one multiplier per format) and the
unified form (multiplier predicted from the format's Gaussian MSE).

    Chinchilla (Hoffmann et al. 2022):      L(N, D) = A N^-alpha + B D^-beta + E
    compression (Frantar et al. 2025):      L(N, D) = A (N eff_f)^-alpha + B D^-beta + E,  eff_dense = 1
    unified (Panferov et al. 2025):         eff = prod over compressed tensors of rho_family(GMSE),
                                            rho(GMSE) = Lsat tanh(F log4(1 / GMSE))^C

The objective follows Hoffmann et al. (2022, appendix D.2) and the replication of Besiroglu et al. (2024):
the Huber loss (delta = 1e-3) between log L_obs and the log-sum-exp form of the prediction,
log L = LSE(a - alpha (log N + log eff), b - beta log D, e) with A = exp(a), B = exp(b), E = exp(e),
summed over runs. The fit evaluates the objective on a grid of starting points at once (numpy, the
per-format log-multipliers profiled out on a 1-D grid, which is exact because the objective separates by
format once the shared constants are fixed), then runs L-BFGS-B with the analytic gradient from the
best few grid points (a short run from each, the best two to convergence) and keeps the lowest optimum.
Internally a format's multiplier enters as the offset alpha log eff_f and log N, log D are centred
(see `_PerFormat`, `_Problem`): both keep the problem well conditioned.

Every fit reports its quality: the RMSE of the residuals in log loss, and a leave-largest-size-out check
(fit on the smaller models, predict the runs of the largest one).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from cslaws.errors import BenchError

HUBER_DELTA = 1e-3
#: Published unified-law constants for scalar quantization, Llama on C4 (Panferov et al. 2025).
RHO_F, RHO_C, RHO_LSAT = 0.41, 1.39, 1.0
SHARED = ("A", "B", "E", "alpha", "beta")
FAMILY_PARAMS = ("F", "C", "Lsat")


def constant_key(name: str, family: str) -> str:
    """How a family's constant is named in bootstrap samples and intervals and in `LawFit.at_bound`: "C[scalar]"."""
    return f"{name}[{family}]"

# Starting grid for the five shared log-parameters (a, b, e, alpha, beta), after Besiroglu et al. (2024)
# with a finer exponent axis; log-multipliers are profiled on _LOG_EFF_GRID.
_GRID_A = np.arange(0.0, 30.0, 5.0)
_GRID_E = np.arange(-1.0, 1.01, 0.5)
_GRID_EXP = np.array([0.1, 0.3, 0.6, 1.0, 2.0])
_LOG_EFF_GRID = np.linspace(-7.0, 1.0, 9)
_N_STARTS = 6
_N_FINAL = 2
_SCREEN_ITERS = 200
_LBFGS = {"maxiter": 5000, "maxfun": 20000, "ftol": 1e-15, "gtol": 1e-11}
_E_FLOOR = 5.0
_EXP_MIN = 1e-3
#: Above every exponent published for these laws (0.07-0.7) and the start grid. Without a cap, runs that
#: share two values of D (a matrix of `tokens`) leave B, beta and E a flat valley along which beta runs to
#: infinity and B = e^b overflows; capped, that is a boundary solution reported in `LawFit.at_bound`.
_EXP_MAX = 3.0
#: Search range of a free unified-law constant (F, C, Lsat), around the published 0.41, 1.39 and 1.0. Without
#: it, GMSEs that do not determine a constant let it run off (two INT formats: C to 3e8, with F following,
#: each bootstrap refit staying out there), which read as a narrow interval; at the range's end, it is a
#: boundary solution reported in `LawFit.at_bound` as not determined.
FAMILY_MIN, FAMILY_MAX = 1e-2, 1e2
#: Token budgets whose tokens per parameter D/N differ by less than this (relative) are one budget:
#: training whole optimizer steps moves D off the asked-for ratio by up to a few tenths of a percent (more
#: on the smallest models), which must not pass for a second budget.
BUDGET_TOLERANCE = 0.02


def distinct_values(x: np.ndarray, rtol: float) -> int:
    """How many distinct values `x` has, those within a relative `rtol` of their sorted neighbour counted as one."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    return int(len(v) > 0) + int(np.sum(v[1:] > v[:-1] * (1.0 + rtol)))


def rho(gmse: np.ndarray | float, F: float = RHO_F, C: float = RHO_C, Lsat: float = RHO_LSAT) -> np.ndarray:
    """Capacity predicted by the unified law from a Gaussian MSE (dense, GMSE = 0, gives Lsat).

    A GMSE of 1 or more (no better than storing zeros) gives capacity 0.
    """
    g = np.asarray(gmse, dtype=np.float64)
    with np.errstate(divide="ignore"):
        u = np.maximum(np.log(1.0 / g) / math.log(4.0), 0.0)
    return Lsat * np.tanh(F * u) ** C


def rho_inverse(capacity: np.ndarray | float, F: float = RHO_F, C: float = RHO_C, Lsat: float = RHO_LSAT) -> np.ndarray:
    """The Gaussian MSE whose predicted capacity is `capacity` (inverse of `rho`, for capacity < Lsat)."""
    r = np.asarray(capacity, dtype=np.float64)
    u = np.arctanh((r / Lsat) ** (1.0 / C)) / F
    return 4.0 ** (-u)


class FitError(BenchError):
    """The runs cannot support the fit that was asked for (a BenchError: `bench` prints it as one line)."""


@dataclass(frozen=True)
class Runs:
    """Training runs: non-embedding parameters N, tokens D, final loss, and a format label per run."""

    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    label: np.ndarray

    @classmethod
    def of(
        cls,
        n: Sequence[float] | np.ndarray,
        d: Sequence[float] | np.ndarray,
        loss: Sequence[float] | np.ndarray,
        label: Sequence[str] | None = None,
    ) -> "Runs":
        arrays = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in (("N", n), ("D", d), ("loss", loss))}
        size = len(arrays["N"])
        labels = np.asarray(["dense"] * size if label is None else [str(s) for s in label], dtype=object)
        for key, arr in [*arrays.items(), ("label", labels)]:
            if len(arr) != size:
                raise FitError(f"{key} has {len(arr)} values but N has {size}; every run needs N, D, loss and label")
        for key, arr in arrays.items():
            bad = np.flatnonzero(~np.isfinite(arr) | (arr <= 0))
            if len(bad):
                raise FitError(
                    f"{len(bad)} run(s) have a NaN, infinite or non-positive {key} (rows {bad[:10].tolist()}, "
                    f"values {arr[bad[:10]].tolist()}); N, D and loss must be finite and > 0"
                )
        return cls(arrays["N"], arrays["D"], arrays["loss"], labels)

    def __len__(self) -> int:
        return len(self.n)

    def subset(self, mask: np.ndarray) -> "Runs":
        return Runs(self.n[mask], self.d[mask], self.loss[mask], self.label[mask])


@dataclass(frozen=True)
class Holdout:
    """Leave-largest-size-out check: fit without the largest model, predict its runs."""

    n: float
    runs: int
    rmse_log: float
    max_rel_err: float


@dataclass
class LawFit:
    """A fitted law. `eff` has every label (the reference label at 1); `family` the unified constants."""

    form: str
    A: float
    B: float
    E: float
    alpha: float
    beta: float
    eff: dict[str, float]
    objective: float
    rmse_log: float
    n_runs: int
    reference: str
    family: dict[str, dict[str, float]] = field(default_factory=dict)
    holdout: Holdout | None = None
    holdout_note: str = ""
    at_bound: list[str] = field(default_factory=list)
    #: Distinct token counts among the runs (within BUDGET_TOLERANCE); below 3, B, beta and E are not
    #: determined wherever the optimiser stops (0: not counted).
    d_values: int = 0
    theta: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    optima: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    #: Unified form: a run index for each key of `eff` (runs with the same compressed tensors share one).
    eff_runs: dict[str, int] = field(default_factory=dict, repr=False)
    problem: "_Problem | None" = field(default=None, repr=False)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float, eff: np.ndarray | float = 1.0) -> np.ndarray:
        n_eff = np.asarray(n, dtype=np.float64) * np.asarray(eff, dtype=np.float64)
        return self.A * n_eff ** -self.alpha + self.B * np.asarray(d, dtype=np.float64) ** -self.beta + self.E

    def constants(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in SHARED}

    def to_dict(self) -> dict:
        out: dict = {**self.constants(), "objective": self.objective, "rmse_log": self.rmse_log, "runs": self.n_runs}
        if self.form != "chinchilla":
            out["eff"] = dict(self.eff)
        if self.family:
            out["family"] = {k: dict(v) for k, v in self.family.items()}
        out["holdout"] = None if self.holdout is None else vars(self.holdout).copy()
        if self.holdout is None:
            out["holdout_note"] = self.holdout_note
        out["at_bound"] = list(self.at_bound)
        out["d_values"] = self.d_values
        return out

    def family_eff(self, components: Sequence[tuple[str, float]]) -> float:
        """Unified form: eff of a run with these (family, GMSE) compressed tensors."""
        return unified_eff(components, self.family)


# ----------------------------------------------------------------------------------------------------
# Parametrisations of log eff. theta = [a, b, e, alpha, beta, *extra].


def first_repeated(labels: Sequence[str]) -> str | None:
    """The first label a list names a second time (None: each once)."""
    return next((label for i, label in enumerate(labels) if label in labels[:i]), None)


def label_index(runs: Runs, reference: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The non-reference labels (sorted), each run's index among them (-1: the reference), and the one-hot
    (runs, labels) matrix that maps per-label parameters onto runs."""
    names = sorted({str(s) for s in runs.label} - {reference})
    index = {name: j for j, name in enumerate(names)}
    idx = np.array([index.get(str(s), -1) for s in runs.label])
    onehot = np.zeros((len(runs), len(names)))
    rows = np.flatnonzero(idx >= 0)
    onehot[rows, idx[rows]] = 1.0
    return names, idx, onehot


class _Model:
    """What a parametrisation adds to the shared law: an offset on the N term (`shift`, `shift_grad`) and,
    for forms with one (`penalty.py`), a fourth additive term in log space (`term`, `term_grad`)."""

    def term(self, theta: np.ndarray, logn: np.ndarray, logd: np.ndarray) -> np.ndarray | None:
        """(P, runs) log of the form's own additive term (-inf where a run has none); None: no such term."""
        return None

    def term_grad(self, psi: np.ndarray, log_pred: np.ndarray, theta: np.ndarray, logn: np.ndarray,
                  logd: np.ndarray) -> np.ndarray:
        """(P, 5 + n_extra) gradient of sum psi x log-prediction through `term` (log_pred: the prediction)."""
        raise NotImplementedError  # only called where `term` returned an array


class _PerFormat(_Model):
    """One free parameter per non-reference label: its offset k_f = alpha log eff_f on the N term.

    The offset is what the runs pin down (A eff_f^-alpha); parametrising by log eff_f directly couples
    every multiplier to alpha and leaves L-BFGS a long curved valley to crawl along.
    """

    def __init__(self, runs: Runs, reference: str) -> None:
        self.names, self.idx, self.onehot = label_index(runs, reference)

    @property
    def n_extra(self) -> int:
        return len(self.names)

    def shift(self, theta: np.ndarray) -> np.ndarray:
        return theta[:, 5:] @ self.onehot.T

    def shift_grad(self, g_run: np.ndarray, theta: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((len(theta), 5)), g_run @ self.onehot], axis=1)

    def log_eff(self, theta: np.ndarray) -> np.ndarray:
        return theta[:, 5:] / theta[:, 3:4]


class _Unified(_Model):
    """log eff of a run = sum over its compressed tensors c of log Lsat_f + C_f log tanh(F_f u_c),
    u_c = log4(1 / GMSE_c); extra = [log F, log C, log Lsat] per family; shift = alpha log eff."""

    def __init__(self, n_runs: int, components: Sequence[Sequence[tuple[str, float]]]) -> None:
        flat = [(i, fam, g) for i, comps in enumerate(components) for fam, g in comps]
        self.families = sorted({fam for _, fam, _ in flat})
        fam_index = {f: j for j, f in enumerate(self.families)}
        self.run = np.array([i for i, _, _ in flat], dtype=np.int64)
        self.fam = np.array([fam_index[f] for _, f, _ in flat], dtype=np.int64)
        self.u = np.array([math.log(1.0 / g) / math.log(4.0) for _, _, g in flat])
        self.comp_to_run = np.zeros((len(flat), n_runs))
        self.comp_to_run[np.arange(len(flat)), self.run] = 1.0
        self.comp_to_fam = np.zeros((len(flat), len(self.families)))
        self.comp_to_fam[np.arange(len(flat)), self.fam] = 1.0

    @property
    def n_extra(self) -> int:
        return 3 * len(self.families)

    def _parts(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        p = theta[:, 5:].reshape(len(theta), len(self.families), 3)[:, self.fam, :]
        F, C, log_lsat = np.exp(p[..., 0]), np.exp(p[..., 1]), p[..., 2]
        z = F * self.u
        # a search that runs F off to 0 makes z underflow: log tanh -> -inf, an infinite objective that the
        # solver steps back from (and `solve` ranks last), not an error worth a warning
        with np.errstate(divide="ignore"):
            return z, C, log_lsat, np.log(np.tanh(z))

    def log_eff(self, theta: np.ndarray) -> np.ndarray:
        z, C, log_lsat, log_tanh = self._parts(theta)
        with np.errstate(invalid="ignore"):  # -inf x 0 where z underflowed (see `_parts`)
            return (log_lsat + C * log_tanh) @ self.comp_to_run

    def shift(self, theta: np.ndarray) -> np.ndarray:
        return theta[:, 3:4] * self.log_eff(theta)

    def shift_grad(self, g_run: np.ndarray, theta: np.ndarray) -> np.ndarray:
        z, C, _, log_tanh = self._parts(theta)
        alpha = theta[:, 3:4]
        g_comp = (alpha * g_run) @ self.comp_to_run.T
        # d log tanh(z) / d log F = z (1 - tanh^2 z) / tanh z = 2 z / sinh(2 z), written with exp(-2z)
        # so that a start far out in F does not overflow sinh
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where z underflowed (see `_parts`)
            d_logf = C * 4.0 * z * np.exp(-2.0 * z) / -np.expm1(-4.0 * z)
        d_logc = C * log_tanh
        extra = np.stack([(g_comp * d_logf) @ self.comp_to_fam, (g_comp * d_logc) @ self.comp_to_fam,
                          g_comp @ self.comp_to_fam], axis=-1).reshape(len(theta), -1)
        shared = np.zeros((len(theta), 5))
        shared[:, 3] = (g_run * self.log_eff(theta)).sum(1)
        return np.concatenate([shared, extra], axis=1)


def _objective(
    theta: np.ndarray, logn: np.ndarray, logd: np.ndarray, logl: np.ndarray, w: np.ndarray, model
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted sum of Huber(log-sum-exp prediction - log L) and its gradient, for each row of theta."""
    a, b, e, alpha, beta = (theta[:, k : k + 1] for k in range(5))
    t1 = a - alpha * logn - model.shift(theta)
    t4 = model.term(theta, logn, logd)
    terms = np.stack([t1, b - beta * logd, np.broadcast_to(e, t1.shape), *([] if t4 is None else [t4])])
    # log-sum-exp and its softmax weights from one exponential (scipy's versions cost more per call).
    top = terms.max(axis=0)
    ex = np.exp(terms - top)
    total = ex.sum(axis=0)
    soft = ex / total
    r = top + np.log(total) - logl
    f = huber(HUBER_DELTA, r) @ w
    psi = np.clip(r, -HUBER_DELTA, HUBER_DELTA) * w
    g1, g2, g3 = psi * soft[0], psi * soft[1], psi * soft[2]
    shared = np.concatenate(
        [g1.sum(1, keepdims=True), g2.sum(1, keepdims=True), g3.sum(1, keepdims=True),
         -(g1 * logn).sum(1, keepdims=True), -(g2 * logd).sum(1, keepdims=True)],
        axis=1,
    )
    grad = model.shift_grad(-g1, theta)
    grad[:, :5] += shared
    if t4 is not None:
        grad += model.term_grad(psi, r + logl, theta, logn, logd)
    return f, grad


# ----------------------------------------------------------------------------------------------------
# Starting points


def _shared_grid() -> np.ndarray:
    return np.array(list(itertools.product(_GRID_A, _GRID_A, _GRID_E, _GRID_EXP, _GRID_EXP)))


def _grid_starts(logn, logd, logl, model: _PerFormat, n_starts: int) -> np.ndarray:
    """The n_starts best grid points (n_starts, P), each format's offset profiled on its own 1-D grid.

    Given the shared constants the objective is a sum of independent per-format terms, so minimising each
    format's term over its 1-D log-multiplier grid gives the exact grid minimum over all parameters.
    """
    grid = _shared_grid()
    a, b, e, alpha, beta = (grid[:, k : k + 1] for k in range(5))
    t1, t2 = a - alpha * logn, b - beta * logd
    total = np.zeros(len(grid))
    best_k = np.zeros((len(grid), model.n_extra))
    dense = model.idx < 0
    if dense.any():
        pred = np.logaddexp(np.logaddexp(t1[:, dense], t2[:, dense]), e)
        total += huber(HUBER_DELTA, pred - logl[dense]).sum(axis=1)
    for j in range(model.n_extra):
        rows = model.idx == j
        t1_l = t1[:, None, rows] - alpha[:, :, None] * _LOG_EFF_GRID[None, :, None]
        pred = np.logaddexp(np.logaddexp(t1_l, t2[:, None, rows]), e[:, :, None])
        per_l = huber(HUBER_DELTA, pred - logl[rows]).sum(axis=2)  # (grid points, log-eff values)
        arg = per_l.argmin(axis=1)
        total += per_l[np.arange(len(grid)), arg]
        best_k[:, j] = alpha[:, 0] * _LOG_EFF_GRID[arg]
    order = np.argsort(total)[:n_starts]
    return np.concatenate([grid[order], best_k[order]], axis=1)


def _objective_rank(result: tuple[np.ndarray, float]) -> float:
    """Sort key of a solver result: its objective, a non-finite one last (NaN would break the sort)."""
    return result[1] if math.isfinite(result[1]) else math.inf


class _Problem:
    """Runs in centred log coordinates plus the search bounds, and the two-stage multi-start solver.

    Centring log N and log D (a' = a - alpha mean(log N), likewise b) removes the near-collinearity of
    a and alpha that otherwise makes L-BFGS crawl. E is bounded below by min(loss) e^-5 and the exponents
    to [1e-3, 3]: where the runs cannot separate E from a small alpha the optimum runs off to E -> 0, and
    the bound turns that into a reported boundary solution (`LawFit.at_bound`) instead of an endless
    search.
    """

    def __init__(self, runs: Runs, model, extra_bounds: list[tuple[float | None, float | None]] | None = None,
                 extra_names: Sequence[str] = ()) -> None:
        logn, logd, self.logl = _data(runs)
        self.mu_n, self.mu_d = float(logn.mean()), float(logd.mean())
        self.data = (logn - self.mu_n, logd - self.mu_d, self.logl)
        self.model = model
        self.e_min = math.log(float(runs.loss.min())) - _E_FLOOR
        extra = extra_bounds if extra_bounds is not None else [(None, None)] * model.n_extra
        self.bounds = [(None, None), (None, None), (self.e_min, None), (_EXP_MIN, _EXP_MAX), (_EXP_MIN, _EXP_MAX),
                       *extra]
        self.extra_names = list(extra_names)
        self.d_values = distinct_values(runs.d, BUDGET_TOLERANCE)

    def centre(self, theta: np.ndarray) -> np.ndarray:
        t = np.array(theta, dtype=np.float64)
        lo = np.array([-np.inf if b[0] is None else b[0] for b in self.bounds])
        hi = np.array([np.inf if b[1] is None else b[1] for b in self.bounds])
        t = np.clip(t, lo, hi)
        t[..., 0] -= t[..., 3] * self.mu_n
        t[..., 1] -= t[..., 4] * self.mu_d
        return t

    def raw(self, theta: np.ndarray) -> np.ndarray:
        t = np.array(theta, dtype=np.float64)
        t[..., 0] += t[..., 3] * self.mu_n
        t[..., 1] += t[..., 4] * self.mu_d
        return t

    def minimize(self, theta: np.ndarray, w: np.ndarray, maxiter: int) -> tuple[np.ndarray, float]:
        """L-BFGS-B from a raw-coordinate start; returns the raw optimum and the objective there."""

        # Divided by delta, the objective is about |residual| per run, a scale L-BFGS-B's tolerances suit.
        def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = _objective(t[None, :], *self.data, w, self.model)
            return f[0] / HUBER_DELTA, g[0] / HUBER_DELTA

        res = minimize(fun, self.centre(theta), jac=True, method="L-BFGS-B", bounds=self.bounds,
                       options=_LBFGS | {"maxiter": maxiter})
        return self.raw(res.x), float(res.fun) * HUBER_DELTA

    def solve(self, starts: np.ndarray, w: np.ndarray | None = None) -> "_Solution":
        """Short L-BFGS-B runs from every start, then the best few run to convergence."""
        w = np.ones(len(self.logl)) if w is None else w
        short = sorted((self.minimize(s, w, _SCREEN_ITERS) for s in starts), key=_objective_rank)
        full = sorted((self.minimize(t, w, _LBFGS["maxiter"]) for t, _ in short[:_N_FINAL]), key=_objective_rank)
        return _Solution(full[0][0], full[0][1], np.stack([t for t, _ in full]))

    def at_bound(self, theta: np.ndarray) -> list[str]:
        def pinned(x: float) -> bool:
            return x <= _EXP_MIN + 1e-9 or x >= _EXP_MAX - 1e-9

        names = ["E" if theta[2] <= self.e_min + 1e-6 else "", "alpha" if pinned(theta[3]) else "",
                 "beta" if pinned(theta[4]) else ""]
        # a free extra constant at an end of its range (a pinned one has lo == hi and is no finding)
        names += [name for name, x, (lo, hi) in zip(self.extra_names, theta[5:], self.bounds[5:])
                  if lo is not None and hi is not None and lo < hi and (x <= lo + 1e-6 or x >= hi - 1e-6)]
        return [n for n in names if n]


# ----------------------------------------------------------------------------------------------------
# Public fits


def _check_runs(runs: Runs, n_params: int, what: str) -> None:
    sizes = np.unique(runs.n)
    if len(sizes) < 2:
        raise FitError(
            f"all {len(runs)} runs have the same model size N={sizes[0]:.4g}; the {what} needs runs of at least "
            "2 model sizes (3 or more to check the fit on the largest)"
        )
    if len(runs) <= n_params:
        raise FitError(
            f"the {what} has {n_params} parameters but only {len(runs)} runs were given; it needs at least "
            f"{n_params + 1} runs"
        )
    _check_budgets(runs, what)


def budget_clusters(n: np.ndarray, d: np.ndarray) -> np.ndarray:
    """A token-budget index per run: runs whose D/N lie within BUDGET_TOLERANCE of a neighbour share one.

    Single linkage on the sorted log ratios, so a run of ratios each within the tolerance of the next is
    one budget, however the whole-step rounding scattered them.
    """
    ratio = np.log(np.asarray(d, dtype=np.float64) / np.asarray(n, dtype=np.float64))
    order = np.argsort(ratio, kind="stable")
    ids = np.empty(len(ratio), dtype=np.int64)
    ids[order] = np.concatenate([[0], np.cumsum(np.diff(ratio[order]) > math.log1p(BUDGET_TOLERANCE))])
    return ids


def _check_budgets(runs: Runs, what: str) -> None:
    """The N term and the D term separate only when D/N varies: at least two budgets, and one model size
    trained at two of them. With one D/N for every run (or each size at its own), log D is a function of
    log N and any alpha fits as well as any other."""
    ids = budget_clusters(runs.n, runs.d)
    ratios = runs.d / runs.n
    if ids.max() == 0:
        raise FitError(
            f"all {len(runs)} runs have one token budget (tokens per parameter D/N {ratios.min():.4g}-"
            f"{ratios.max():.4g}, one budget within {BUDGET_TOLERANCE:.0%}), so the {what} cannot tell the N term "
            "from the D term; add runs at a second token budget"
        )
    per_size = {float(size): len(np.unique(ids[runs.n == size])) for size in np.unique(runs.n)}
    if max(per_size.values()) < 2:
        budgets = ", ".join(f"N={size:.4g}: D/N {np.median(ratios[runs.n == size]):.3g}" for size in per_size)
        raise FitError(
            f"no model size was trained at two token budgets ({budgets}; budgets within {BUDGET_TOLERANCE:.0%} "
            f"count as one), so the {what} cannot tell the N term from the D term; train at least one size at a "
            "second tokens-per-parameter ratio"
        )


def _data(runs: Runs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.log(runs.n), np.log(runs.d), np.log(runs.loss)


def _rmse_log(theta: np.ndarray, runs: Runs, model) -> float:
    logn, logd, logl = _data(runs)
    f_terms = _predict_log(theta, logn, logd, model)
    return float(np.sqrt(np.mean((f_terms - logl) ** 2)))


def _predict_log(theta: np.ndarray, logn, logd, model) -> np.ndarray:
    a, b, e, alpha, beta = theta[:5]
    t1 = a - alpha * logn - model.shift(theta[None, :])[0]
    return logsumexp(np.stack([t1, b - beta * logd, np.full_like(logd, e)]), axis=0)


@dataclass
class _Solution:
    theta: np.ndarray
    objective: float
    optima: np.ndarray  # every local optimum found, best first (starting points for bootstrap refits)


def _solve_per_format(problem: _Problem, runs: Runs) -> _Solution:
    starts = _grid_starts(*_data(runs), problem.model, _N_STARTS)
    return problem.solve(starts)


def _law_from_solution(form: str, sol: _Solution, runs: Runs, problem: _Problem, reference: str) -> LawFit:
    theta, model = sol.theta, problem.model
    a, b, e, alpha, beta = (float(v) for v in theta[:5])
    if isinstance(model, _PerFormat):
        eff = {reference: 1.0} | {name: float(np.exp(theta[5 + j] / alpha)) for j, name in enumerate(model.names)}
        family = {}
    else:
        eff = {}
        family = {
            fam: dict(zip(FAMILY_PARAMS, (float(np.exp(v)) for v in theta[5 + 3 * j : 8 + 3 * j])))
            for j, fam in enumerate(model.families)
        }
    return LawFit(
        form=form, A=math.exp(a), B=math.exp(b), E=math.exp(e), alpha=alpha, beta=beta, eff=eff,
        objective=sol.objective, rmse_log=_rmse_log(theta, runs, model), n_runs=len(runs), reference=reference,
        family=family, at_bound=problem.at_bound(theta), d_values=problem.d_values, theta=theta, optima=sol.optima, problem=problem,
    )


def holdout_check(runs: Runs, refit, predict_of) -> tuple[Holdout | None, str]:
    """Fit on all but the largest model size (`refit(train)`) and score the prediction of the largest size's
    runs (`predict_of(law, test)`: a loss per run, NaN for a run the refit cannot predict)."""
    largest = runs.n.max()
    train, test = runs.subset(runs.n < largest), runs.subset(runs.n == largest)
    try:
        law = refit(train)
    except FitError as err:
        return None, f"no leave-largest-size-out check: without N={largest:.4g} {err}"
    # A label (or family) seen only at the largest size has no multiplier in the refit: those runs are
    # not scored, and the count says how many were.
    pred = np.asarray(predict_of(law, test), dtype=np.float64)
    scored = np.isfinite(pred)
    if not scored.any():
        return None, f"no leave-largest-size-out check: no format has runs both below and at N={largest:.4g}"
    err_log = np.log(pred[scored]) - np.log(test.loss[scored])
    rel = np.abs(pred[scored] / test.loss[scored] - 1.0)
    return Holdout(float(largest), int(scored.sum()), float(np.sqrt(np.mean(err_log**2))), float(rel.max())), ""


def check_reference(runs: Runs, reference: str, why: str = "the multipliers are relative to it, so the "
                    "compression form needs at least one reference run") -> None:
    if not np.any(runs.label == reference):
        have = ", ".join(sorted(set(runs.label)))
        raise FitError(f"no runs have the reference label {reference!r} (labels present: {have}); {why}")


def fit_chinchilla(runs: Runs, *, holdout: bool = True) -> LawFit:
    """Fit L = A N^-alpha + B D^-beta + E to all runs (labels ignored)."""
    plain = Runs(runs.n, runs.d, runs.loss, np.full(len(runs), "dense", dtype=object))
    _check_runs(plain, 5, "Chinchilla form")
    problem = _Problem(plain, _PerFormat(plain, "dense"))
    law = _law_from_solution("chinchilla", _solve_per_format(problem, plain), plain, problem, "dense")
    if holdout:
        law.holdout, law.holdout_note = holdout_check(plain, lambda r: fit_chinchilla(r, holdout=False),
                                                      lambda l, t: l.predict(t.n, t.d))
    return law


def fit_compression(runs: Runs, reference: str = "dense", *, holdout: bool = True) -> LawFit:
    """Fit L = A (N eff_f)^-alpha + B D^-beta + E jointly over all labels, eff_reference = 1."""
    check_reference(runs, reference)
    model = _PerFormat(runs, reference)
    _check_runs(runs, 5 + model.n_extra, f"compression form with {model.n_extra} non-reference label(s)")
    problem = _Problem(runs, model)
    law = _law_from_solution("compression", _solve_per_format(problem, runs), runs, problem, reference)
    if holdout:
        law.holdout, law.holdout_note = holdout_check(
            runs,
            lambda r: fit_compression(r, reference, holdout=False),
            lambda l, t: l.predict(t.n, t.d, np.array([l.eff.get(s, np.nan) for s in t.label])),
        )
    return law


def unified_eff(components: Sequence[tuple[str, float]], family: dict[str, dict[str, float]]) -> float:
    """eff of one run under fitted family constants: the product of rho over its compressed tensors
    (NaN when a tensor's family has no fitted constants)."""
    if any(fam not in family for fam, _ in components):
        return math.nan
    return float(np.prod([rho(g, **family[fam]) for fam, g in components]))


def _fit_rho_to_effs(
    components: Sequence[Sequence[tuple[str, float]]], log_eff: np.ndarray, families: list[str]
) -> np.ndarray:
    """Starting family constants: least squares of log eff against log rho over a grid of (F, C, Lsat)."""
    grid = np.array(list(itertools.product(np.log([0.1, 0.2, 0.4, 0.8, 1.6]), np.log([0.5, 1.0, 1.5, 2.5]),
                                           np.log([0.7, 0.85, 1.0, 1.2]))))
    out = []
    for fam in families:
        rows = [(i, [g for f, g in comps if f == fam]) for i, comps in enumerate(components)]
        err = np.zeros(len(grid))
        for i, gs in rows:
            if not gs:
                continue
            u = np.log(1.0 / np.array(gs)) / math.log(4.0)
            pred = (grid[:, 2:3] + np.exp(grid[:, 1:2]) * np.log(np.tanh(np.exp(grid[:, 0:1]) * u))).sum(1)
            err += (pred - log_eff[i]) ** 2
        out.append(grid[err.argmin()])
    return np.concatenate(out)


def _check_identifiable(
    components: Sequence[Sequence[tuple[str, float]]], families: list[str], fixed: dict[str, float]
) -> None:
    """rho depends on GMSE alone, so a family's free constants need at least as many distinct GMSEs."""
    for fam in families:
        free = [p for p in FAMILY_PARAMS if pinned(fixed, fam, p) is None]
        seen = sorted({float(f"{g:.6g}") for comps in components for f, g in comps if f == fam})
        if len(seen) < len(free):
            raise FitError(
                f"family {fam!r} has formats at {len(seen)} distinct GMSE value(s) {seen} but {len(free)} free "
                f"constants {free}: rho(GMSE) cannot determine them. Add runs of formats of that family at "
                f"other GMSEs, or pin {len(free) - len(seen)} more of {free} (fixed={{...}}; on the command line "
                f"--fix NAME=VALUE in every family, e.g. --fix Lsat=1 C=1.39, or --fix {fam}.NAME=VALUE in this one)"
            )


def pinned(fixed: dict[str, float], family: str, name: str) -> float | None:
    """The value `fixed` pins constant `name` of `family` to: "family.name" (this family) over "name" (every
    family); None when it is free. Family-scoped pins let a family with one format (one GMSE) be fitted."""
    return fixed.get(f"{family}.{name}", fixed.get(name))


def fit_unified(
    runs: Runs,
    components: Sequence[Sequence[tuple[str, float]]],
    *,
    fixed: dict[str, float] | None = None,
    holdout: bool = True,
) -> LawFit:
    """Fit L = A (N eff)^-alpha + B D^-beta + E with eff = prod_c rho_family(c)(GMSE_c).

    `components[i]` lists run i's compressed tensors as (family, GMSE) pairs (empty for dense). F, C and
    Lsat are shared within a family; `fixed` pins any of them in every family (e.g. {"Lsat": 1.0}) or in
    one family (e.g. {"sparse.C": 1.39}; see `pinned`).
    """
    if len(components) != len(runs):
        raise FitError(f"components has {len(components)} entries but there are {len(runs)} runs; give one per run")
    bad = [(i, g) for i, comps in enumerate(components) for _, g in comps if not (0.0 < g < 1.0)]
    if bad:
        raise FitError(f"GMSE must lie in (0, 1) for every compressed tensor; got {bad[:5]} (run, GMSE)")
    fixed = dict(fixed or {})
    unknown = {k for k in fixed if k.rpartition(".")[2] not in FAMILY_PARAMS}
    if unknown:
        raise FitError(f"fixed names {sorted(unknown)} are not unified-law constants; allowed: {FAMILY_PARAMS}, "
                       "each alone (every family) or as FAMILY.NAME (one family)")
    model = _Unified(len(runs), components)
    if not model.families:
        raise FitError("no run has a compressed tensor; the unified form needs runs with GMSE < 1")
    strays = sorted({k.rpartition(".")[0] for k in fixed if "." in k} - set(model.families))
    if strays:
        raise FitError(f"fixed names a family the runs do not have: {strays}; families: {model.families}")
    _check_identifiable(components, model.families, fixed)
    free = 5 + sum(pinned(fixed, fam, p) is None for fam in model.families for p in FAMILY_PARAMS)
    _check_runs(runs, free, f"unified form with {len(model.families)} family(ies)")
    labels = np.array(["dense" if not c else "|".join(f"{f}:{g:.9g}" for f, g in c) for c in components], dtype=object)
    if not np.any(labels == "dense"):
        raise FitError("the unified form needs dense runs (no compressed tensor) to anchor eff = 1")
    per_format = fit_compression(Runs(runs.n, runs.d, runs.loss, labels), "dense", holdout=False)
    log_eff = np.log([per_format.eff[s] for s in labels])
    family0 = _fit_rho_to_effs(components, log_eff, model.families)
    published = np.tile(np.log([RHO_F, RHO_C, RHO_LSAT]), len(model.families))
    bounds: list[tuple[float | None, float | None]] = []
    for j, fam in enumerate(model.families):
        for k, name in enumerate(FAMILY_PARAMS):
            value = pinned(fixed, fam, name)
            if value is not None:
                family0[3 * j + k] = published[3 * j + k] = math.log(value)
            bounds.append((math.log(FAMILY_MIN), math.log(FAMILY_MAX)) if value is None else (math.log(value),) * 2)
    problem = _Problem(runs, model, bounds, [constant_key(name, fam) for fam in model.families for name in FAMILY_PARAMS])
    starts = np.stack([np.concatenate([per_format.theta[:5], f0]) for f0 in (family0, published)])
    law = _law_from_solution("unified", problem.solve(starts), runs, problem, "dense")
    log_eff_runs = model.log_eff(law.theta[None, :])[0]
    law.eff_runs = {s: int(np.flatnonzero(labels == s)[0]) for s in dict.fromkeys(labels)}
    law.eff = {s: float(np.exp(log_eff_runs[i])) for s, i in law.eff_runs.items()}
    if holdout:
        largest = runs.n.max()
        keep = runs.n < largest

        def refit(r: Runs) -> LawFit:
            return fit_unified(r, [c for c, k in zip(components, keep) if k], fixed=fixed, holdout=False)

        def predict_of(l: LawFit, t: Runs) -> np.ndarray:
            return l.predict(t.n, t.d, np.array([unified_eff(c, l.family) for c, k in zip(components, keep) if not k]))

        law.holdout, law.holdout_note = holdout_check(runs, refit, predict_of)
    return law
