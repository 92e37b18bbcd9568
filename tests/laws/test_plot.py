"""Figures that depend on how a matrix set its budgets: one law curve per budget, at the D the runs had."""

from __future__ import annotations

import numpy as np
import pytest

from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.laws import leaderboard as lb
from cslaws.laws import plot

from conftest import STORE_SIZES, int_spec, law_loss

#: Every size trained at the same two D (a matrix of `tokens`), a few tokens off as whole steps leave them.
TOKENS = (2e7, 8e7)


def test_budgets_are_d_per_parameter_when_the_sizes_scale_d() -> None:
    n = np.repeat([1e4, 2e4, 4e4], 2)
    d = n * np.tile([25.03, 49.97], 3)
    fixed_d, budgets = plot._budgets(n, d)
    assert not fixed_d and list(budgets) == [25, 50] * 3


def test_budgets_are_d_when_the_sizes_share_it() -> None:
    n = np.repeat([1e4, 2e4, 4e4], 2)
    d = np.tile([716_800.0, 1_433_600.0], 3) + np.array([0, 512, -1024, 0, 300, 0])
    fixed_d, budgets = plot._budgets(n, d)
    assert fixed_d and list(budgets) == [720_000, 1_400_000] * 3


@pytest.fixture(scope="module")
def equal_d(tmp_path_factory):
    store = ResultsStore(tmp_path_factory.mktemp("eqd") / "runs.db")
    rng = np.random.default_rng(3)
    for label, eff, spec in (("dense", 1.0, None), ("int2", 0.5, int_spec(2))):
        for n in STORE_SIZES:
            for d in TOKENS:
                tokens = int(d) + int(rng.integers(-500, 500))
                store.add_finished(RunRecord(
                    label=label, model=f"m{int(n)}", n_params=int(n), tokens=tokens, bits_per_value=16.0, seed=0,
                    dataset="synthetic", tokenizer="none", code_version="test-1", weight=spec, epochs=0.5,
                    final_val_loss=float(law_loss(n, tokens, eff) * np.exp(rng.normal(0, 0.001)))))
    records = store.runs()
    return lb.build(records, k=10), lb.runs_of(records)


def test_loss_vs_n_draws_the_law_at_each_shared_d(equal_d) -> None:
    board, runs = equal_d
    fig = plot.loss_vs_n_figure(board, runs)
    (ax,) = fig.axes
    assert "budget D)" in ax.get_title()
    lines = ax.get_lines()
    assert len(lines) == 2 * len(TOKENS), "one curve per format and D, not one per D/N (which is per size here)"
    law = board.law
    for line, (label, d) in zip(lines, [(f, d) for f in ("dense", "int2") for d in TOKENS]):
        n = np.asarray(line.get_xdata())
        assert np.asarray(line.get_ydata()) == pytest.approx(law.predict(n, np.full_like(n, d), law.eff[label]))


def test_loss_gap_markers_are_labelled_by_d(equal_d) -> None:
    board, runs = equal_d
    fig = plot.loss_gap_figure(board, runs)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels[:2] == ["measured, D = 20,000,000", "measured, D = 80,000,000"]
