"""`gaps`: measured loss gaps to the reference and their change per doubling of D, checked against closed
forms (a law whose gap does not depend on D, gaps built with known slopes, Student-t quantiles from a table),
the multiplier each cell implies (the inverse of the law's gap, runs made from the law itself), the law's misfit
per cell (offsets added to the law by hand), and `bench law gaps` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cslaws.bench.cli import main as bench
from cslaws.laws.fit import LawFit, Runs, fit_compression
from cslaws.laws.gaps import cell_effs, cell_residuals, gap_growth, implied_eff, law_gap, measured_gaps

from conftest import SIZES, TOKENS_PER_PARAM, TRUE, law_loss, synthetic

#: Student-t 97.5% quantiles (a printed table, not scipy): degrees of freedom -> t.
T975 = {3: 3.182446305284263, 4: 2.7764451051977987}


def _runs(cells: list[tuple[str, float, float, float]]) -> Runs:
    """Runs from (label, N, tokens per parameter, loss) cells."""
    label, n, tpp, loss = zip(*cells)
    return Runs.of(n, np.array(n) * np.array(tpp), loss, label)


def test_a_constant_multiplier_has_a_gap_that_does_not_change_with_d():
    n, d, loss, label = synthetic(noise=0.0, effs={"dense": 1.0, "int4": 0.7, "int2": 0.4})
    rows = {r.label: r for r in gap_growth(Runs.of(n, d, loss, label), "dense")}
    assert set(rows) == {"int4", "int2"}
    for r in rows.values():
        assert len(r.per_size) == len(SIZES)
        assert max(abs(g) for g in r.per_size.values()) < 1e-12
        assert abs(r.growth) < 1e-12 and r.hi - r.lo < 1e-12
    # and the gaps are the law's A N^-alpha (eff^-alpha - 1) at every budget
    gaps = measured_gaps(Runs.of(n, d, loss, label), "dense")["int2"]
    expected = law_loss(gaps.n, gaps.n, 0.4) - law_loss(gaps.n, gaps.n, 1.0)
    np.testing.assert_allclose(gaps.diff, expected, rtol=1e-9)


def test_slopes_per_size_and_their_t_interval():
    # four sizes, two budgets (10 and 40 tokens per parameter: two doublings); the gap at each size grows by a
    # known amount per doubling on top of a size-dependent offset
    slope = {1e6: 0.01, 2e6: 0.02, 4e6: 0.03, 8e6: 0.06}
    cells = []
    for n, s in slope.items():
        for tpp in (10, 40):
            dense = 3.0 + 1e-7 * n / tpp
            cells += [("dense", n, tpp, dense), ("q", n, tpp, dense + 0.05 * math.log10(n) + s * math.log2(tpp))]
    (row,) = gap_growth(_runs(cells), "dense")
    assert row.per_size == pytest.approx(slope, abs=1e-12)
    values = np.array(list(slope.values()))
    mean, sd = values.mean(), values.std(ddof=1)
    assert row.growth == pytest.approx(mean, abs=1e-12)
    half = T975[3] * sd / 2.0
    assert (row.lo, row.hi) == pytest.approx((mean - half, mean + half), abs=1e-9)


def test_three_budgets_give_the_least_squares_slope_and_seeds_are_averaged():
    # gaps 0.00, 0.01, 0.04 at 10, 20, 40 tokens per parameter: log2 steps of 1, centred at -1, 0, 1, so the
    # least-squares slope is (0.04 - 0.00) / 2 = 0.02. The format's two seeds at 20 average to the gap 0.01.
    cells = [("dense", 1e6, 10, 3.0), ("dense", 1e6, 20, 2.9), ("dense", 1e6, 40, 2.8),
             ("q", 1e6, 10, 3.0), ("q", 1e6, 20, 2.905), ("q", 1e6, 20, 2.915), ("q", 1e6, 40, 2.84)]
    (row,) = gap_growth(_runs(cells), "dense")
    assert row.per_size == pytest.approx({1e6: 0.02}, abs=1e-12)
    assert row.mean_gap == pytest.approx((0.0 + 0.01 + 0.04) / 3, abs=1e-12)
    # one size: a mean but no interval across sizes
    assert row.growth == pytest.approx(0.02, abs=1e-12) and row.lo is None and row.hi is None


def test_cells_without_a_reference_or_a_second_budget_are_left_out():
    cells = [("dense", 1e6, 10, 3.0), ("dense", 1e6, 40, 2.8), ("dense", 2e6, 10, 2.9),
             ("q", 1e6, 10, 3.1), ("q", 1e6, 40, 3.0),   # slope (0.2 - 0.1) / 2 = 0.05
             ("q", 2e6, 10, 3.0),                         # one budget: a gap, no slope
             ("q", 4e6, 10, 2.5), ("q", 4e6, 40, 2.4)]    # no reference at this size: nothing
    (row,) = gap_growth(_runs(cells), "dense")
    assert row.per_size == pytest.approx({1e6: 0.05}, abs=1e-12)
    assert row.mean_gap == pytest.approx((0.1 + 0.2 + 0.1) / 3, abs=1e-12)
    assert gap_growth(_runs([("dense", 1e6, 10, 3.0), ("q", 2e6, 10, 3.1)]), "dense") == []


def test_implied_eff_inverts_the_law_gap():
    rng = np.random.default_rng(3)
    A, alpha = rng.uniform(1.0, 500.0, 50), rng.uniform(0.05, 0.6, 50)
    n, eff = 10 ** rng.uniform(4.0, 9.0, 50), rng.uniform(0.05, 1.5, 50)
    np.testing.assert_allclose(implied_eff(A, alpha, n, law_gap(A, alpha, eff, n)), eff, rtol=1e-9)
    # a format that beats the reference by the whole N term A N^-alpha or more has no multiplier
    whole = 400.0 * 1e6 ** -0.34
    assert np.isnan(implied_eff(400.0, 0.34, 1e6, -whole)) and np.isnan(implied_eff(400.0, 0.34, 1e6, -2 * whole))
    assert implied_eff(400.0, 0.34, 1e6, -0.5 * whole) == pytest.approx(0.5 ** (-1 / 0.34), rel=1e-12)


def test_cells_of_a_constant_multiplier_all_imply_it():
    n, d, loss, label = synthetic(noise=0.0)
    law = fit_compression(Runs.of(n, d, loss, label), holdout=False)
    assert (law.A, law.alpha) == pytest.approx((TRUE["A"], TRUE["alpha"]), rel=1e-3)
    cells = cell_effs(Runs.of(n, d, loss, label), law)
    assert {c.label for c in cells} == {"int4", "int2"} and len(cells) == 2 * len(SIZES) * len(TOKENS_PER_PARAM)
    for c in cells:
        assert c.implied_eff == pytest.approx({"int4": 0.7, "int2": 0.4}[c.label], rel=2e-3)
        assert c.tokens == pytest.approx(c.n * c.tokens_per_param, rel=1e-12)


def test_a_gap_that_grows_with_d_implies_a_multiplier_that_falls_with_d():
    n, d, loss, label = synthetic(noise=0.0)
    grows = label == "int2"
    loss = loss + np.where(grows, 0.01 * np.log2(d / n), 0.0)   # +0.01 nats per doubling of D at fixed N
    runs = Runs.of(n, d, loss, label)
    law = fit_compression(runs, holdout=False)
    cells = [c for c in cell_effs(runs, law) if c.label == "int2"]
    for size in SIZES:
        row = sorted((c.tokens, c.implied_eff, c.gap) for c in cells if c.n == size)
        effs = [e for _, e, _ in row]
        assert all(a > b for a, b in zip(effs, effs[1:]))
        # each eff puts the law's gap exactly on the measured one
        np.testing.assert_allclose(law_gap(law.A, law.alpha, np.array(effs), size), [g for _, _, g in row], rtol=1e-9)


def test_cell_residuals_are_the_offsets_added_to_the_law():
    # losses = the law TRUE at each label's eff + a known offset per (N, budget) cell and per label, two seeds
    # whose noise cancels in their mean; a cell without reference runs is left out
    law = LawFit("compression", TRUE["A"], TRUE["B"], TRUE["E"], TRUE["alpha"], TRUE["beta"],
                 {"dense": 1.0, "int4": 0.7, "int2": 0.4}, 0.0, 0.0, 0, "dense")
    rng = np.random.default_rng(1)
    offset = {(n, t): float(rng.normal(0, 0.02)) for n in SIZES[:3] for t in TOKENS_PER_PARAM[:2]}
    extra = {"dense": 0.0, "int4": 0.01, "int2": -0.004}
    n, d, loss, label = [], [], [], []
    for (size, tpp), off in offset.items():
        for name, eff in law.eff.items():
            if name == "dense" and size == SIZES[2] and tpp == TOKENS_PER_PARAM[1]:
                continue
            for seed_noise in (0.003, -0.003):
                tokens = size * tpp * (1 + 1e-4 * seed_noise)   # whole-step rounding: D differs a little
                n.append(size), d.append(tokens), label.append(name)
                loss.append(law_loss(size, tokens, eff) + off + extra[name] + seed_noise)
    rows = cell_residuals(Runs.of(n, d, loss, label), law)
    expected = sorted(k for k in offset if k != (SIZES[2], TOKENS_PER_PARAM[1]))
    assert [(r.n, round(r.tokens_per_param)) for r in rows] == expected
    for r in rows:
        off = offset[(r.n, round(r.tokens_per_param))]
        assert r.reference == pytest.approx(off, abs=1e-12)
        assert r.mean == pytest.approx(off + np.mean(list(extra.values())), abs=1e-12)
        assert r.labels == 3 and r.tokens == pytest.approx(r.n * r.tokens_per_param, rel=1e-12)


def test_bench_law_gaps_with_no_comparable_cells_is_a_clear_error(capsys, tmp_path):
    from cslaws.bench.store import ResultsStore, RunRecord

    store = ResultsStore(tmp_path / "r.db")
    for label, n in (("dense", 10**6), ("int4", 2 * 10**6)):
        store.add_finished(RunRecord(label=label, model="m", n_params=n, tokens=10 * n, bits_per_value=16.0, seed=0,
                                     dataset="s", tokenizer="t", code_version="c", final_val_loss=3.0))
    assert bench(["law", "gaps", "--store", str(tmp_path / "r.db")]) == 2
    assert "a gap compares runs of the same N and budget" in capsys.readouterr().err


def test_bench_law_gaps_prints_the_measured_table(capsys, constant_eff_store):
    from cslaws.bench.store import ResultsStore
    from cslaws.laws.leaderboard import runs_of

    assert bench(["law", "gaps", "--store", str(constant_eff_store), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = gap_growth(runs_of(ResultsStore(constant_eff_store, create=False).runs()), "dense")
    assert out["reference"] == "dense" and [r["label"] for r in out["rows"]] == [r.label for r in expected]
    for got, want in zip(out["rows"], expected):
        assert got["growth"] == pytest.approx(want.growth, abs=1e-12)
        assert [n for n, _ in got["per_size"]] == list(want.per_size)
    # the store's losses follow the law with a constant multiplier (plus 0.2% noise): no change with D to speak of
    assert all(abs(r["growth"]) < 0.02 for r in out["rows"])
    assert bench(["law", "gaps", "--store", str(constant_eff_store)]) == 0
    text = capsys.readouterr().out
    assert "per doubling of D" in text and "w4a4" in text and "implied eff" not in text


def test_bench_law_gaps_cells_lists_every_cell_with_the_eff_it_implies(capsys, constant_eff_store):
    from cslaws.bench.store import ResultsStore
    from cslaws.laws.leaderboard import runs_of

    assert bench(["law", "gaps", "--store", str(constant_eff_store), "--cells", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    runs = runs_of(ResultsStore(constant_eff_store, create=False).runs())
    law = fit_compression(runs, holdout=False)
    expected = cell_effs(runs, law)
    assert out["law"]["alpha"] == pytest.approx(law.alpha, rel=1e-9)
    assert [(c["label"], c["n"], c["tokens"]) for c in out["cells"]] == [(c.label, c.n, c.tokens) for c in expected]
    assert [c["implied_eff"] for c in out["cells"]] == pytest.approx([c.implied_eff for c in expected], rel=1e-9)
    # the store's multipliers are 0.4 (int2), 0.6 (int3), 0.8 (int4) and 0.64 (w4a4), with 0.2% noise on the loss
    true = {"int2": 0.4, "int3": 0.6, "int4": 0.8, "w4a4": 0.64}
    assert all(abs(c["implied_eff"] / true[c["label"]] - 1) < 0.08 for c in out["cells"])
    # the misfit per cell: the reference's loss minus the law, recomputed here from the stored runs
    dense = [(n, d, loss) for n, d, loss, s in zip(runs.n, runs.d, runs.loss, runs.label) if s == "dense"]
    assert len(out["residuals"]) == len(dense) and all(r["labels"] == 5 for r in out["residuals"])
    for r, (n, d, loss) in zip(out["residuals"], sorted(dense)):
        assert (r["n"], r["tokens"]) == pytest.approx((n, d), rel=1e-12)
        assert r["reference"] == pytest.approx(loss - law.predict(n, d), abs=1e-12)
    assert max(abs(r["mean"]) for r in out["residuals"]) < 0.02   # 0.2% noise on losses near 3-4 nats
    assert bench(["law", "gaps", "--store", str(constant_eff_store), "--cells"]) == 0
    text = capsys.readouterr().out
    assert "The multiplier each cell implies" in text and "implied eff" in text
    assert "The law's misfit at each cell" in text and "mean over labels" in text


def test_bench_law_gaps_without_reference_runs_is_a_clear_error(capsys, constant_eff_store):
    assert bench(["law", "gaps", "--store", str(constant_eff_store), "--dense", "int9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error:") and "reference label 'int9'" in err and "labels present: dense" in err
