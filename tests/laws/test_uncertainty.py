"""Bootstrap intervals: the resampling and the warm-started refits, checked against independent fits."""

from pathlib import Path

import numpy as np
import pytest

from cslaws.bench.store import ResultsStore
from cslaws.laws.fit import Runs, fit_compression
from cslaws.laws.leaderboard import runs_of
from cslaws.laws.uncertainty import bootstrap, percentile_interval, resample_weights

STORE = Path(__file__).resolve().parents[2] / "results" / "cpu-matrix.db"


def test_resamples_draw_each_label_as_often_as_it_has_runs_and_only_its_own() -> None:
    labels = np.array(["dense"] * 5 + ["int4"] * 3 + ["int2"] * 1, dtype=object)
    w = resample_weights(labels, k=200, seed=3)
    assert w.shape == (200, 9) and np.all(w == np.round(w)) and w.min() >= 0
    for label in ("dense", "int4", "int2"):
        np.testing.assert_array_equal(w[:, labels == label].sum(axis=1), np.sum(labels == label))
    assert np.all(w[:, labels == "int2"] == 1)  # one run: every resample draws it
    # a real resampling: runs left out and drawn twice happen, and the same seed gives the same draws
    assert (w == 0).any() and (w >= 2).any()
    np.testing.assert_array_equal(w, resample_weights(labels, k=200, seed=3))


def test_percentile_interval_is_numpys_central_interval() -> None:
    x = np.arange(1001.0)
    assert percentile_interval(x, 0.95) == pytest.approx((25.0, 975.0), rel=1e-12)


def test_each_warm_started_refit_is_the_fit_of_its_resampled_runs() -> None:
    """A refit starts from the full-data optimum and stops at L-BFGS-B's own criterion (on the shipped store
    about a quarter of them stop on a failed line search, at machine precision). Each must be the optimum an
    independent fit finds from its own start grid, on the runs the resample drew, repeated as often as drawn."""
    runs = runs_of(ResultsStore(STORE, create=False).runs("finished"))
    law, k = fit_compression(runs, holdout=False), 3
    boot = bootstrap(law, runs, k=k, seed=0)
    weights = resample_weights(runs.label, k, seed=0)
    for i, w in enumerate(weights):
        rows = np.repeat(np.arange(len(runs)), w.astype(int))
        drawn = Runs(runs.n[rows], runs.d[rows], runs.loss[rows], runs.label[rows])
        ref = fit_compression(drawn, holdout=False)
        # E sits at its floor, min(loss) e^-5; a resample without the lowest-loss run has another floor on its
        # own, and its refit keeps the full data's, so only resamples that drew that run share every constant
        if drawn.loss.min() == runs.loss.min():
            assert boot.samples["alpha"][i] == pytest.approx(ref.alpha, rel=1e-6)
        for label, eff in ref.eff.items():
            assert boot.eff_samples[label][i] == pytest.approx(eff, rel=1e-6), (i, label)
