"""The penalty form (Chen et al. 2025): its gradient against central differences, recovery of known constants
from runs made by the form itself, the compression form as its special case gamma_D = 0, gamma_N = alpha (a
closed form), bootstrap intervals, and `bench law penalty` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cslaws.bench.cli import main as bench
from cslaws.laws.fit import FitError, Runs, _objective, _Problem, fit_compression
from cslaws.laws.gaps import law_gap
from cslaws.laws.penalty import _Penalty, bootstrap_penalty, fit_penalty, penalty_summary, try_fit_penalty

from conftest import SIZES, TOKENS_PER_PARAM, TRUE, TRUE_EFF, law_loss, synthetic

#: The penalty each format adds: k_f nats at the runs' geometric-mean N and D, growing with D, shrinking with N.
K_TRUE = {"int4": 0.01, "int2": 0.05}
GAMMA_D, GAMMA_N = 0.3, 0.2


def _penalty_runs(noise: float = 0.0, seed: int = 0, k: dict[str, float] = K_TRUE) -> Runs:
    """Every label of `k` (and dense) at every size and budget of `conftest`, losses from TRUE plus the penalty."""
    rng = np.random.default_rng(seed)
    cells = [(label, n, n * tpp) for label in ("dense", *k) for n in SIZES for tpp in TOKENS_PER_PARAM]
    label, n, d = (np.array(col, dtype=object if i == 0 else np.float64) for i, col in enumerate(zip(*cells)))
    n0, d0 = np.exp(np.log(n).mean()), np.exp(np.log(d).mean())
    pen = np.array([k.get(s, 0.0) for s in label]) * (d / d0) ** GAMMA_D * (n / n0) ** -GAMMA_N
    loss = (law_loss(n, d) + pen) * np.exp(rng.normal(0.0, noise, len(n)))
    return Runs.of(n, d, loss, label)


def test_the_objectives_gradient_matches_central_differences():
    runs = _penalty_runs(noise=0.01)
    model = _Penalty(runs, "dense")
    problem = _Problem(runs, model)
    rng = np.random.default_rng(3)
    w = rng.uniform(0.5, 2.0, len(runs))
    # a point away from the optimum, so that residuals fall on both sides of the Huber threshold
    theta = problem.centre(np.array([5.0, 7.0, 0.5, 0.3, 0.35, 0.4, 0.1, 0.02, 0.07]))
    f, g = _objective(theta[None, :], *problem.data, w, model)
    h = 1e-6
    numeric = []
    for j in range(len(theta)):
        up, down = theta.copy(), theta.copy()
        up[j] += h
        down[j] -= h
        numeric.append((_objective(up[None, :], *problem.data, w, model)[0][0]
                        - _objective(down[None, :], *problem.data, w, model)[0][0]) / (2 * h))
    assert g[0] == pytest.approx(np.array(numeric), rel=1e-5, abs=1e-9)
    assert np.all(np.abs(g[0]) > 0)


def test_a_format_better_than_the_reference_is_named_at_k_s_bound():
    """The form lets no format beat dense (k_f >= 0): one that does fits k_f = 0, and the summary says its eff of 1 is
    the bound's, not a measurement."""
    runs = _penalty_runs(k={"int8": -0.005, "int2": 0.05})
    law = fit_penalty(runs, holdout=False)
    assert law.k["int8"] == 0.0 and law.k["int2"] == pytest.approx(0.05, rel=0.05)
    assert law.at_zero == ["int8"] and law.to_dict()["at_zero"] == ["int8"]
    (line,) = [s for s in penalty_summary(law, None, fit_compression(runs, holdout=False)) if "k_f at its bound 0" in s]
    assert line.endswith("by construction): int8")


def test_runs_made_by_the_form_give_back_its_constants():
    runs = _penalty_runs()
    law = fit_penalty(runs)
    assert law.N0 == pytest.approx(np.exp(np.log(runs.n).mean()), rel=1e-12)
    assert law.D0 == pytest.approx(np.exp(np.log(runs.d).mean()), rel=1e-12)
    assert law.gamma_D == pytest.approx(GAMMA_D, rel=1e-3)
    assert law.gamma_N == pytest.approx(GAMMA_N, rel=1e-3)
    assert law.k == pytest.approx(K_TRUE, rel=1e-3)
    assert law.alpha == pytest.approx(TRUE["alpha"], rel=1e-3) and law.E == pytest.approx(TRUE["E"], rel=1e-3)
    assert law.rmse_log < 1e-5 and law.at_bound == []
    # fitted without the largest size, the law predicts its runs (penalty included)
    assert law.holdout is not None and law.holdout.n == max(SIZES) and law.holdout.runs == 12
    assert law.holdout.max_rel_err < 1e-4
    # the constant multiplier fits these runs worse: their gap grows with D
    assert fit_compression(runs, holdout=False).rmse_log > 100 * law.rmse_log


def test_a_constant_multiplier_is_the_case_gamma_d_zero_gamma_n_alpha():
    """The compression gap A N^-alpha (eff^-alpha - 1) is k (N / N0)^-alpha with k its value at N0."""
    n, d, loss, label = synthetic(noise=0.0)
    runs = Runs.of(n, d, loss, label)
    law = fit_penalty(runs)
    assert law.gamma_D == pytest.approx(0.0, abs=1e-3)
    assert law.gamma_N == pytest.approx(TRUE["alpha"], rel=1e-3)
    for name in ("int4", "int2"):
        assert law.k[name] == pytest.approx(law_gap(TRUE["A"], TRUE["alpha"], TRUE_EFF[name], law.N0), rel=1e-3)
    assert law.eff_at_centre() == pytest.approx({"int4": 0.7, "int2": 0.4}, rel=1e-3)


def test_a_format_as_good_as_the_reference_has_no_penalty_and_its_interval_can_leave_zero():
    runs = _penalty_runs(noise=0.003, seed=1, k={"int8": 0.0, "int2": 0.05})
    law = fit_penalty(runs, holdout=False)
    assert law.k["int8"] < 2e-3
    intervals = bootstrap_penalty(law, runs, k=40, seed=0)
    lo, hi = intervals.interval(intervals.k["int8"])
    assert lo == 0.0 and 0.0 < hi < 0.02  # resamples leave k = 0 where the data say so (k enters linearly)
    lo, hi = intervals.interval(intervals.k["int2"])
    assert lo < 0.05 < hi and hi - lo < 0.02
    lo, hi = intervals.interval(intervals.samples["gamma_D"])
    assert lo < GAMMA_D < hi
    assert set(intervals.to_dict()["eff_ci"]) == {"int8", "int2"}


def test_a_given_compression_fit_seeds_the_same_search_and_must_be_of_the_same_runs():
    runs = _penalty_runs(noise=0.003, seed=2)
    compression = fit_compression(runs, holdout=False)
    seeded, own = fit_penalty(runs, holdout=False, start=compression), fit_penalty(runs, holdout=False)
    np.testing.assert_array_equal(seeded.theta, own.theta)
    other = fit_compression(runs.subset(runs.n > min(SIZES)), holdout=False)
    with pytest.raises(FitError, match="the starting compression fit has 72 runs"):
        fit_penalty(runs, start=other)


def test_reference_only_runs_and_too_few_resamples_are_fit_errors():
    runs = _penalty_runs(k={})
    with pytest.raises(FitError, match="every run has the reference label 'dense'"):
        fit_penalty(runs)
    mixed = _penalty_runs()
    with pytest.raises(FitError, match="at least 2 resamples"):
        bootstrap_penalty(fit_penalty(mixed, holdout=False), mixed, k=1)


def test_too_few_runs_for_the_penalty_form_is_a_reason_where_the_compression_form_fits():
    """Two sizes at two budgets, dense and int2: 8 runs fit the compression form's 6 constants, not the
    penalty form's 8."""
    full = _penalty_runs(k={"int2": 0.05})
    keep = np.isin(full.n, SIZES[:2]) & np.isin(np.round(full.d / full.n), TOKENS_PER_PARAM[:2])
    runs = full.subset(keep)
    assert len(runs) == 8
    fit_compression(runs, holdout=False)
    law, why = try_fit_penalty(runs)
    assert law is None and "penalty form with 1 non-reference label(s) has 8 parameters but only 8 runs" in why


def test_bench_law_penalty_reports_both_forms_on_the_same_runs(capsys, constant_eff_store):
    from cslaws.bench.store import ResultsStore
    from cslaws.laws.leaderboard import runs_of

    assert bench(["law", "penalty", "--store", str(constant_eff_store), "--bootstrap", "20", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = runs_of(ResultsStore(constant_eff_store, create=False).runs())
    law, compression = fit_penalty(runs), fit_compression(runs)
    assert out["penalty"]["gamma_D"] == pytest.approx(law.gamma_D, abs=1e-9)
    assert out["penalty"]["k"] == pytest.approx(law.k, abs=1e-9)
    assert out["compression"]["eff"] == pytest.approx(compression.eff, abs=1e-9)
    assert out["penalty"]["holdout"]["rmse_log"] == pytest.approx(law.holdout.rmse_log, abs=1e-9)
    # the store's multipliers are constant (0.2% noise): no growth with D to speak of, and the penalty form's eff
    # at the centre is the store's multiplier
    lo, hi = out["penalty"]["bootstrap"]["ci"]["gamma_D"]
    assert lo < 0.0 < hi
    true = {"int2": 0.4, "int3": 0.6, "int4": 0.8, "w4a4": 0.64}
    assert out["penalty"]["eff_at_centre"] == pytest.approx(true, rel=0.08)
    assert set(out["compression"]["eff_ci"]) == set(true) | {"dense"}
    assert bench(["law", "penalty", "--store", str(constant_eff_store), "--bootstrap", "0"]) == 0
    text = capsys.readouterr().out
    assert "Penalty form (Chen et al. 2025)" in text and "per doubling of D" in text and "w4a4" in text


@pytest.mark.parametrize("argv, message", [
    (["--bootstrap", "1"], "--bootstrap must be 0 (no intervals) or at least 2 resamples, got 1"),
    (["--dense", "int9"], "reference label 'int9'"),
])
def test_bench_law_penalty_bad_input_is_a_clear_error(capsys, constant_eff_store, argv, message):
    assert bench(["law", "penalty", "--store", str(constant_eff_store), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and message in err
