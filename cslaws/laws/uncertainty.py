"""Bootstrap intervals for a fitted law: resample runs with replacement, refit, take percentiles.

Runs are resampled within each label (stratified), so every format keeps as many runs as it had and every
multiplier stays identifiable. A resample is a vector of run counts used as weights in the objective
(sum of count x Huber), and each refit starts from the full-data optima: a resample's optimum lies near
them, which makes K = 100 refits take seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cslaws.laws.fit import FAMILY_PARAMS, FitError, LawFit, Runs, _PerFormat, constant_key

_REFIT_ITERS = 2000


@dataclass
class Bootstrap:
    """Bootstrap samples of every constant and every multiplier, and their percentile intervals."""

    samples: dict[str, np.ndarray]
    eff_samples: dict[str, np.ndarray]
    level: float
    #: labels of one run: every resample draws that run, so their multipliers move only with the shared
    #: constants, and an interval of them would look narrow while it measured no spread of the format's own
    single: frozenset[str] = frozenset()

    @property
    def ci(self) -> dict[str, tuple[float, float]]:
        return {k: percentile_interval(v, self.level) for k, v in self.samples.items()}

    @property
    def eff_ci(self) -> dict[str, tuple[float, float]]:
        """Each multiplier's interval; none for a label of one run (`single`)."""
        return {k: percentile_interval(v, self.level) for k, v in self.eff_samples.items() if k not in self.single}

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "resamples": len(next(iter(self.samples.values()))),
            "ci": {k: list(v) for k, v in self.ci.items()},
            "eff_ci": {k: list(v) for k, v in self.eff_ci.items()},
        }


def percentile_interval(x: np.ndarray, level: float) -> tuple[float, float]:
    """The central `level` percentile interval of bootstrap samples `x`."""
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(x, [tail, 100.0 - tail])
    return float(lo), float(hi)


def resample_weights(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(k, runs) counts: each label's runs drawn with replacement, as many as the label has."""
    if k < 2:
        raise FitError(f"bootstrap needs at least 2 resamples, got k={k}")
    rng = np.random.default_rng(seed)
    w = np.zeros((k, len(labels)))
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        draws = rng.integers(0, len(rows), size=(k, len(rows)))
        for i in range(k):
            w[i] += np.bincount(rows[draws[i]], minlength=len(labels))
    return w


def bootstrap(law: LawFit, runs: Runs, k: int = 100, seed: int = 0, level: float = 0.95) -> Bootstrap:
    """Refit `law` (from `fit_chinchilla`, `fit_compression` or `fit_unified` on `runs`) on k resamples."""
    if not 0.0 < level < 1.0:
        raise FitError(f"interval level must be in (0, 1), got {level}")
    problem = law.problem
    if problem is None or len(problem.logl) != len(runs):
        raise FitError(f"the law was fitted on {law.n_runs} runs but {len(runs)} were given; pass the same runs")
    labels = runs.label if law.form != "unified" else _run_keys(problem)
    weights = resample_weights(labels, k, seed)
    thetas = np.stack([_refit(law, w) for w in weights])
    a, b, e, alpha, beta = thetas[:, :5].T
    samples = {"A": np.exp(a), "B": np.exp(b), "E": np.exp(e), "alpha": alpha, "beta": beta}
    eff: dict[str, np.ndarray] = {}
    single: frozenset[str] = frozenset()
    model = problem.model
    if isinstance(model, _PerFormat):
        if law.form != "chinchilla":
            eff = {law.reference: np.ones(k)} | {name: np.exp(thetas[:, 5 + j] / alpha) for j, name in enumerate(model.names)}
            single = one_run_labels(runs, model.names)
    else:
        for j, fam in enumerate(model.families):
            for m, name in enumerate(FAMILY_PARAMS):
                samples[constant_key(name, fam)] = np.exp(thetas[:, 5 + 3 * j + m])
        log_eff = model.log_eff(thetas)
        eff = {key: np.exp(log_eff[:, run]) for key, run in law.eff_runs.items()}
    return Bootstrap(samples, eff, level, single)


def one_run_labels(runs: Runs, names: Sequence[str]) -> frozenset[str]:
    """The labels among `names` that have one run: every stratified resample draws it, so their intervals
    would move only with the shared constants, and are not given."""
    return frozenset(name for name in names if np.sum(runs.label == name) < 2)


def _refit(law: LawFit, w: np.ndarray) -> np.ndarray:
    problem = law.problem
    best = min((problem.minimize(t, w, _REFIT_ITERS) for t in _distinct(law.optima)), key=lambda r: r[1])
    return best[0]


def _distinct(optima: np.ndarray) -> list[np.ndarray]:
    """The full-data optima that are different points (restarting from a duplicate gains nothing)."""
    kept: list[np.ndarray] = []
    for t in optima:
        if all(np.max(np.abs(t - k)) > 1e-4 for k in kept):
            kept.append(t)
    return kept


def _run_keys(problem) -> np.ndarray:
    """Unified form: runs grouped by their set of compressed tensors (the strata of the resampling)."""
    model = problem.model
    keys = [[] for _ in range(len(problem.logl))]
    for r, f, u in zip(model.run, model.fam, model.u):
        keys[r].append(f"{f}:{u:.12g}")
    return np.array(["|".join(k) for k in keys], dtype=object)
