"""Law fits: recovery of known constants, the global optimum against brute force, published constants,
quality checks and bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import huber, logsumexp

from cslaws.laws.fit import (
    FitError,
    Runs,
    budget_clusters,
    fit_chinchilla,
    fit_compression,
    fit_unified,
    rho,
    rho_inverse,
)
from cslaws.laws.uncertainty import bootstrap

from conftest import SIZES, TRUE, TRUE_EFF, law_loss, synthetic


def _reference_objective(p: np.ndarray, logn, logd, logl, idx) -> float:
    """Sum of Huber(1e-3) of log-sum-exp prediction - log L, written independently of the package:
    p = [a, b, e, alpha, beta, log eff_1, ...], idx = 0 for dense runs, j for the j-th other label."""
    log_eff = np.concatenate([[0.0], p[5:]])[idx]
    pred = logsumexp(np.stack([p[0] - p[3] * (logn + log_eff), p[1] - p[4] * logd, np.full_like(logn, p[2])]), axis=0)
    return float(huber(1e-3, pred - logl).sum())


def _brute_force(runs: Runs, labels: list[str], starts: int = 12) -> tuple[float, np.ndarray]:
    """Independent multi-start search: BFGS (numerical gradients) from random points of a wide box, the
    best result polished by Nelder-Mead."""
    logn, logd, logl = np.log(runs.n), np.log(runs.d), np.log(runs.loss)
    idx = np.array([labels.index(s) for s in runs.label])
    args = (logn, logd, logl, idx)
    lo = np.array([0.0, 0.0, -1.0, 0.1, 0.1] + [-3.0] * (len(labels) - 1))
    hi = np.array([25.0, 25.0, 1.0, 1.0, 1.0] + [0.5] * (len(labels) - 1))
    rng = np.random.default_rng(0)
    results = [minimize(_reference_objective, lo + (hi - lo) * rng.random(len(lo)), args=args, method="BFGS")
               for _ in range(starts)]
    best = min(results, key=lambda r: r.fun)
    polished = minimize(_reference_objective, best.x, args=args, method="Nelder-Mead",
                        options={"xatol": 1e-9, "fatol": 1e-16, "maxfev": 6000})
    return polished.fun, polished.x


@pytest.fixture(scope="module")
def synthetic_runs() -> Runs:
    return Runs.of(*synthetic())


@pytest.fixture(scope="module")
def synthetic_fit(synthetic_runs):
    law = fit_compression(synthetic_runs)
    return law, bootstrap(law, synthetic_runs, k=100, seed=1, level=0.99)


def test_recovers_known_constants_within_bootstrap_intervals(synthetic_fit):
    law, boot = synthetic_fit
    for name, true in TRUE.items():
        lo, hi = boot.ci[name]
        assert lo <= true <= hi, f"{name}: true {true} outside its 99% interval [{lo}, {hi}] (fit {getattr(law, name)})"
    for label, true in TRUE_EFF.items():
        lo, hi = boot.eff_ci[label]
        assert lo <= true <= hi, f"eff[{label}]: true {true} outside [{lo}, {hi}] (fit {law.eff[label]})"
        assert law.eff[label] == pytest.approx(true, rel=0.03)
    assert law.eff["dense"] == 1.0 and boot.eff_ci["dense"] == (1.0, 1.0)


def test_quality_is_reported(synthetic_fit, synthetic_runs):
    law, _ = synthetic_fit
    logl_pred = np.log(law.predict(synthetic_runs.n, synthetic_runs.d, [law.eff[s] for s in synthetic_runs.label]))
    assert law.rmse_log == pytest.approx(np.sqrt(np.mean((logl_pred - np.log(synthetic_runs.loss)) ** 2)), rel=1e-9)
    # Noise is 0.003 in log loss: the residual RMSE must be about that.
    assert 0.002 < law.rmse_log < 0.004
    # Leave-largest-size-out: refit without the 1e9 runs by hand and score them.
    small = synthetic_runs.subset(synthetic_runs.n < 1e9)
    big = synthetic_runs.subset(synthetic_runs.n == 1e9)
    refit = fit_compression(small, holdout=False)
    err = np.log(refit.predict(big.n, big.d, [refit.eff[s] for s in big.label])) - np.log(big.loss)
    assert law.holdout.n == 1e9 and law.holdout.runs == len(big)
    assert law.holdout.rmse_log == pytest.approx(np.sqrt(np.mean(err**2)), rel=1e-6)


def test_compression_fit_reaches_brute_force_optimum():
    n, d, loss, lab = synthetic(noise=0.01, seed=3, effs={"dense": 1.0, "int2": 0.4})
    keep = np.isin(n, [1e7, 5e7, 2e8, 1e9])
    runs = Runs.of(n[keep], d[keep], loss[keep], lab[keep])
    law = fit_compression(runs, holdout=False)
    best, p = _brute_force(runs, ["dense", "int2"])
    assert law.objective <= best * (1 + 1e-9)
    assert law.objective == pytest.approx(best, rel=1e-6)
    assert [law.alpha, law.beta, math.log(law.E)] == pytest.approx([p[3], p[4], p[2]], rel=1e-3, abs=1e-4)
    assert math.log(law.eff["int2"]) == pytest.approx(p[5], rel=1e-3, abs=1e-4)


def _chinchilla(path, exclude_top: int = 5) -> Runs:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    n = np.array([float(r["Model Size"]) for r in rows])
    d = np.array([float(r["Training FLOP"]) for r in rows]) / (6 * n)
    loss = np.array([float(r["loss"]) for r in rows])
    keep = np.argsort(loss)[: len(loss) - exclude_top]
    return Runs.of(n[keep], d[keep], loss[keep])


def test_chinchilla_fit_reaches_brute_force_optimum(chinchilla_csv):
    runs = _chinchilla(chinchilla_csv)
    sub = runs.subset(np.arange(len(runs)) % 4 == 0)  # 60 runs keep the brute force quick
    law = fit_chinchilla(sub, holdout=False)
    best, p = _brute_force(sub, ["dense"])
    assert law.objective <= best * (1 + 1e-9)
    assert [math.log(law.A), math.log(law.B), math.log(law.E), law.alpha, law.beta] == pytest.approx(p, rel=1e-3)


def test_chinchilla_constants_match_besiroglu(chinchilla_csv):
    """Besiroglu et al. (2024), "Chinchilla Scaling: A replication attempt", Table 1 (our fit):
    A = 482.01, B = 2085.43, E = 1.8172, alpha = 0.3478, beta = 0.3658 on the same 240 runs."""
    law = fit_chinchilla(_chinchilla(chinchilla_csv))
    assert law.n_runs == 240
    assert law.E == pytest.approx(1.8172, rel=0.01)
    assert law.alpha == pytest.approx(0.3478, rel=0.02)
    assert law.beta == pytest.approx(0.3658, rel=0.02)
    assert law.A == pytest.approx(482.01, rel=0.05)
    assert law.B == pytest.approx(2085.43, rel=0.05)
    # Our optimum is at least as good as the published constants under the same objective.
    runs = _chinchilla(chinchilla_csv)
    published = np.log([482.01, 2085.43, 1.8172]).tolist() + [0.3478, 0.3658]
    ref = _reference_objective(np.array(published), np.log(runs.n), np.log(runs.d), np.log(runs.loss), np.zeros(240, int))
    assert law.objective <= ref
    assert law.holdout is not None and law.holdout.n == runs.n.max()


def test_quest_runs_order_formats_by_precision(quest_csv):
    with open(quest_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    runs = Runs.of([r["N"] for r in rows], [r["D"] for r in rows], [r["loss"] for r in rows], [r["format"] for r in rows])
    law = fit_compression(runs)
    eff = law.eff
    assert len(eff) == 17
    # More bits, more capacity; the Hadamard rotation helps at every width (QuEST, Panferov et al. 2025).
    assert eff["w1a1"] < eff["w2a2"] < eff["w3a3"] < eff["w4a4"] < eff["w8a8"]
    assert eff["w1"] < eff["w2"] < eff["w3"] < eff["w4"]
    for bits in (1, 2, 3, 4):
        assert eff[f"w{bits}a{bits}-noh"] < eff[f"w{bits}a{bits}"]
        assert eff[f"w{bits}a{bits}"] < eff[f"w{bits}"]
    assert law.holdout is not None and law.holdout.rmse_log < 0.02


def test_unified_form_recovers_rho_constants():
    """Runs generated with eff = rho(GMSE) for known (F, C, Lsat); the unified fit finds them again."""
    F, C, Lsat = 0.5, 1.2, 1.0
    gmses = {"dense": None, "q1": 0.2, "q2": 0.08, "q3": 0.03, "q4": 0.01}
    effs = {k: 1.0 if g is None else float(rho(g, F, C, Lsat)) for k, g in gmses.items()}
    n, d, loss, lab = synthetic(noise=0.001, seed=5, effs=effs)
    comps = [[] if gmses[s] is None else [("int", gmses[s])] for s in lab]
    law = fit_unified(Runs.of(n, d, loss, lab), comps)
    got = law.family["int"]
    assert got["F"] == pytest.approx(F, rel=0.1)
    assert got["C"] == pytest.approx(C, rel=0.15)
    assert got["Lsat"] == pytest.approx(Lsat, rel=0.05)
    assert law.alpha == pytest.approx(TRUE["alpha"], rel=0.05)
    # Every label's eff agrees with the generating one.
    for s, g in gmses.items():
        key = "dense" if g is None else f"int:{g:.9g}"
        assert law.eff[key] == pytest.approx(effs[s], rel=0.03)
    # Fixing Lsat pins it exactly.
    fixed = fit_unified(Runs.of(n, d, loss, lab), comps, fixed={"Lsat": 1.0}, holdout=False)
    assert fixed.family["int"]["Lsat"] == pytest.approx(1.0, abs=1e-12)


def test_unified_capacities_multiply():
    """A run with two compressed tensors gets the product of their capacities."""
    F, C = 0.45, 1.3
    g = {"dense": [], "w": [("q", 0.05)], "a": [("q", 0.1)], "wa": [("q", 0.05), ("q", 0.1)], "w2": [("q", 0.2)]}
    effs = {k: float(np.prod([rho(x, F, C, 1.0) for _, x in v])) for k, v in g.items()}
    n, d, loss, lab = synthetic(noise=0.0005, seed=2, effs=effs)
    law = fit_unified(Runs.of(n, d, loss, lab), [g[s] for s in lab], fixed={"Lsat": 1.0}, holdout=False)
    assert law.family_eff(g["wa"]) == pytest.approx(law.family_eff(g["w"]) * law.family_eff(g["a"]), rel=1e-12)
    assert law.family_eff(g["wa"]) == pytest.approx(effs["wa"], rel=0.03)


def test_rho_published_constants_and_inverse():
    # rho = tanh(0.41 * log4(1/g))^1.39 by hand for g = 4^-2: tanh(0.82)^1.39.
    assert rho(4.0**-2) == pytest.approx(math.tanh(0.82) ** 1.39, rel=1e-12)
    assert rho(0.0) == 1.0
    g = np.array([0.3, 0.05, 0.001])
    assert rho_inverse(rho(g, 0.5, 1.2, 0.9), 0.5, 1.2, 0.9) == pytest.approx(g, rel=1e-9)


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_single_model_size_is_rejected():
    with pytest.raises(FitError, match="same model size"):
        fit_chinchilla(Runs.of([1e8] * 10, np.linspace(1e9, 1e10, 10), np.linspace(3, 2.5, 10)))


def test_one_tokens_per_parameter_ratio_is_rejected():
    n = np.repeat([1e6, 2e6, 4e6, 8e6], 3)
    loss = 2.0 + 400 * n**-0.3 + np.tile([0.0, 0.01, 0.02], 4)
    with pytest.raises(FitError, match=r"all 12 runs have one token budget \(tokens per parameter D/N 15-15.*add runs at a second token budget"):
        fit_compression(Runs.of(n, 15 * n, loss, np.tile(["dense", "a", "b"], 4)))
    fit_chinchilla(Runs.of(n, np.where(np.arange(12) % 2, 15, 5) * n, loss))


def test_too_few_runs_names_the_count():
    n, d, loss, lab = synthetic()
    few = np.array([0, 30, 60, 85 % len(n), 10, 40])
    with pytest.raises(FitError, match=r"7 parameters but only 6 runs.*at least 8 runs"):
        fit_compression(Runs.of(n[few], d[few], loss[few], lab[few]))


@pytest.mark.parametrize("bad", [np.nan, 0.0, -1.0, np.inf])
def test_nan_and_non_positive_losses_are_rejected(bad):
    n, d, loss, lab = synthetic()
    loss = loss.copy()
    loss[3] = bad
    with pytest.raises(FitError, match=r"1 run\(s\) have a NaN, infinite or non-positive loss \(rows \[3\]"):
        Runs.of(n, d, loss, lab)


def test_missing_reference_label_is_rejected():
    n, d, loss, lab = synthetic()
    keep = lab != "dense"
    with pytest.raises(FitError, match="no runs have the reference label 'dense'.*int2, int4"):
        fit_compression(Runs.of(n[keep], d[keep], loss[keep], lab[keep]))


def test_unified_rejects_gmse_outside_unit_interval():
    n, d, loss, lab = synthetic()
    comps = [[] if s == "dense" else [("q", 1.5)] for s in lab]
    with pytest.raises(FitError, match=r"GMSE must lie in \(0, 1\)"):
        fit_unified(Runs.of(n, d, loss, lab), comps)


def test_holdout_skips_a_format_seen_only_at_the_largest_size():
    n, d, loss, lab = synthetic()
    keep = (lab != "int2") | (n == 1e9)
    law = fit_compression(Runs.of(n[keep], d[keep], loss[keep], lab[keep]))
    assert "int2" in law.eff
    # At N = 1e9 only the dense and int4 runs (4 each) can be predicted by the refit without N = 1e9.
    assert law.holdout is not None and law.holdout.runs == 8


def test_unified_rejects_a_family_with_fewer_gmses_than_free_constants():
    effs = {"dense": 1.0, "a": 0.8, "b": 0.6}
    n, d, loss, lab = synthetic(noise=0.001, seed=4, effs=effs)
    comps = [[] if s == "dense" else [("q", 0.05 if s == "a" else 0.1)] for s in lab]
    with pytest.raises(FitError, match=r"family 'q' has formats at 2 distinct GMSE value\(s\) \[0.05, 0.1\] but 3 free"):
        fit_unified(Runs.of(n, d, loss, lab), comps)
    # One pinned constant leaves two free, which two GMSEs determine.
    law = fit_unified(Runs.of(n, d, loss, lab), comps, fixed={"Lsat": 1.0}, holdout=False)
    assert law.eff["q:0.05"] == pytest.approx(0.8, rel=0.03) and law.eff["q:0.1"] == pytest.approx(0.6, rel=0.03)


def test_budgets_are_clusters_of_tokens_per_parameter():
    n = np.array([1e6, 2e6, 4e6, 1e6, 2e6, 4e6, 4e6])
    d = n * np.array([15.0, 15.06, 14.95, 5.0, 5.05, 4.96, 40.0])  # whole-step rounding within 2%
    assert budget_clusters(n, d).tolist() == [1, 1, 1, 0, 0, 0, 2]
    # single linkage: a chain of ratios each within 2% of the next is one budget
    assert budget_clusters(np.ones(3), np.array([10.0, 10.19, 10.38])).tolist() == [0, 0, 0]
    assert budget_clusters(np.ones(2), np.array([10.0, 10.21])).tolist() == [0, 1]


def test_rounded_single_budget_is_rejected():
    """One tokens-per-parameter ratio scattered by whole-step rounding (0.3%) is still one budget; the
    old guard (1e-3 in log D) took it for two."""
    n = np.repeat([1e6, 2e6, 4e6, 8e6], 3)
    d = 15 * n * np.tile([1.0, 1.0034, 0.997], 4)
    loss = 2.0 + 400 * n**-0.3 + np.tile([0.0, 0.01, 0.02], 4)
    with pytest.raises(FitError, match=r"all 12 runs have one token budget \(tokens per parameter D/N 14.96-15.05"):
        fit_chinchilla(Runs.of(n, d, loss))


def test_each_size_at_its_own_budget_is_rejected():
    n = np.repeat([1e6, 2e6, 4e6, 8e6], 3)
    d = n * np.repeat([5.0, 10.0, 20.0, 40.0], 3)
    loss = 2.0 + 400 * n**-0.3 + np.tile([0.0, 0.01, 0.02], 4)
    with pytest.raises(FitError, match=r"no model size was trained at two token budgets \(N=1e\+06: D/N 5, N=2e\+06: D/N 10"):
        fit_chinchilla(Runs.of(n, d, loss))


def test_two_shared_token_budgets_recover_the_multipliers():
    """Every size at the same two D (a matrix of `tokens`): B, beta and E are then one flat valley (two
    levels of the D term for three constants), which once ran beta off until B = e^b overflowed. The
    multipliers, which compare sizes at equal D, do not depend on where in the valley the fit stops."""
    sizes = np.array([1e7, 2e7, 5e7, 1e8, 2e8])
    n, d, lab = (np.array(v) for v in zip(*[(s, t, f) for f in TRUE_EFF for s in sizes for t in (2e9, 4e9)]))
    loss = np.array([float(v) for v in (TRUE["A"] * (n * np.array([TRUE_EFF[f] for f in lab])) ** -TRUE["alpha"]
                                        + TRUE["B"] * d ** -TRUE["beta"] + TRUE["E"])])
    law = fit_compression(Runs.of(n, d, loss, lab.astype(object)), holdout=False)
    assert math.isfinite(law.B) and law.beta <= 3.0
    assert law.eff["int4"] == pytest.approx(TRUE_EFF["int4"], rel=1e-3)
    assert law.eff["int2"] == pytest.approx(TRUE_EFF["int2"], rel=1e-3)
    assert law.alpha == pytest.approx(TRUE["alpha"], rel=1e-3)


def test_runs_at_two_values_of_d_leave_the_d_term_undetermined_and_say_so():
    """Every size at the same two D (a matrix of `tokens`): B D^-beta + E takes two values, so B, beta and E trade
    along a valley of equal fit, wherever the optimiser stops in it; the summary says so, at a bound or not."""
    from cslaws.laws.fit import distinct_values
    from cslaws.laws.leaderboard import law_summary

    rng = np.random.default_rng(3)
    n = np.repeat(SIZES, 2)
    d = np.tile([2e9, 4e9], len(SIZES))
    d[::4] *= 1.005  # whole optimizer steps miss a budget by a little: still one value of D
    loss = law_loss(n, d) * np.exp(rng.normal(0.0, 0.002, len(n)))
    law = fit_compression(Runs.of(n, d, loss, ["dense"] * len(n)), holdout=False)
    assert law.d_values == 2 and distinct_values(d, 0.001) == 3
    assert "B, beta and E not determined by the runs: they have 2 value(s) of D" in law_summary(law)
    assert distinct_values(np.array([1.0, 1.005, 2.0, 4.0]), 0.02) == 3 and distinct_values(np.array([]), 0.02) == 0
    n, d, loss, label = synthetic()
    tpp = fit_compression(Runs.of(n, d, loss, label), holdout=False)
    assert tpp.d_values > 3 and "not determined" not in law_summary(tpp)
