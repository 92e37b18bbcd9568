"""Held-out predictions: the unified law fitted on some formats predicts the others from their GMSE alone.

The store's multipliers are drawn from rho(GMSE) with known constants (Lsat = 1): int2, int3, int4 on the
weights, and w4a4 whose eff is the product of two int4 parts. Fitted on the INT formats only, the law must
predict w4a4 from the product of its parts, as the constants it reports say and close to the truth."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore
from cslaws.laws import leaderboard as lb
from cslaws.laws.fit import rho
from cslaws.laws.heldout import held_out_predictions
from cslaws.laws.unified import format_parts

from conftest import int_gmse, int_store

F_TRUE, C_TRUE = 0.5, 1.2
K = 20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "runs.db"
    int_store(path, lambda b: float(rho(int_gmse(b), F_TRUE, C_TRUE)))
    return path


def test_fit_on_int_formats_predicts_w4a4_from_its_parts(capsys, store):
    assert bench(["law", "unified", "--store", str(store), "--fit-on", "int2", "int3", "int4", "--fix", "Lsat=1",
                  "--bootstrap", str(K), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    # the family constants come from the INT formats only: w4a4 is not among the fitted rows
    assert {r["label"] for r in out["rows"]} == {"dense", "int2", "int3", "int4"}
    scalar = out["law"]["family"]["scalar"]
    assert scalar["F"] == pytest.approx(F_TRUE, rel=0.1)
    (w4a4,) = out["held_out"]
    assert w4a4["label"] == "w4a4" and w4a4["why"] == ""
    # the prediction is the product of the two parts' rho under the reported constants ...
    assert w4a4["predicted"] == pytest.approx(float(rho(int_gmse(4), **scalar)) ** 2, rel=1e-9)
    # ... close to the multiplier the runs were drawn from, inside its own interval
    assert w4a4["predicted"] == pytest.approx(float(rho(int_gmse(4), F_TRUE, C_TRUE)) ** 2, abs=0.05)
    assert w4a4["predicted_lo"] <= w4a4["predicted"] <= w4a4["predicted_hi"]
    # the measured eff is the free fit's over all runs: the leaderboard's number
    board = lb.build(ResultsStore(store, create=False).runs(), k=K)
    assert w4a4["measured"] == pytest.approx(next(r.eff for r in board.rows if r.label == "w4a4"), rel=1e-12)


def test_fit_on_one_format_predicts_nothing_and_says_why(store):
    # one GMSE cannot determine F and C: no prediction is made from that fit, and each row says why
    records = ResultsStore(store, create=False).runs()
    board = lb.build(records, k=2)
    rows = held_out_predictions(records, board, format_parts(records), {"Lsat": 1.0}, 0, 0, fit_on=["int4"])
    assert {p.label for p in rows} == {"int2", "int3", "w4a4"}
    assert all(p.predicted is None and p.why.startswith("no fit on --fit-on int4") for p in rows)


def test_fit_on_must_name_a_compressed_format_of_the_store(capsys, store):
    assert bench(["law", "unified", "--store", str(store), "--fit-on", "int4", "dense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: law: --fit-on 'dense'") and "allowed: int2, int3, int4, w4a4" in err
    assert "Traceback" not in err


def test_report_uses_the_same_split(capsys, store, tmp_path):
    out = tmp_path / "r.html"
    assert bench(["report", "--store", str(store), "--out", str(out), "--bootstrap", str(K),
                  "--fit-on", "int2", "int3", "int4"]) == 0
    capsys.readouterr()
    text = out.read_text(encoding="utf-8")
    assert "fitted on the reference and int2, int3, int4 only (--fit-on)" in text
    assert bench(["law", "unified", "--store", str(store), "--fit-on", "int2", "int3", "int4", "--fix", "Lsat=1",
                  "--bootstrap", str(K), "--format", "json"]) == 0
    out_json = json.loads(capsys.readouterr().out)
    (w4a4,) = out_json["held_out"]
    # the constants on the page are the fit the predictions come from: on the --fit-on formats' runs only
    constants = text.split('<table id="unified-constants">')[1].split("</table>")[0]
    scalar_f = out_json["law"]["family"]["scalar"]["F"]
    assert f"<td>scalar</td><td class=num>{scalar_f:.4g} [" in constants.replace("\n", "")
    # the page's predictions table has the one held-out format, with the command's number
    predictions = text.split('<table id="predictions">')[1].split("</table>")[0]
    rows = predictions.split("<tbody>")[1].split("</tbody>")[0].strip().splitlines()
    assert len(rows) == 1 and rows[0].startswith("<tr><td>w4a4</td>")
    assert f"<td class=num>{w4a4['predicted']:.3f}</td>" in rows[0]


def test_only_an_exponent_at_its_bound_leaves_the_law_undetermined(store):
    """E at its search bound (common over a narrow range of N) is a caveat on every eff, measured and predicted
    alike; an exponent at its bound means the N or D term itself is not determined."""
    import copy

    from cslaws.laws.fit import fit_unified
    from cslaws.laws.heldout import caveat, undetermined

    records = [r for r in ResultsStore(store, create=False).runs() if r.label != "w4a4"]
    parts = format_parts(records)
    law = fit_unified(lb.runs_of(records), [parts[r.label] for r in records], fixed={"Lsat": 1.0}, holdout=False)
    gmses = {"scalar": [g for r in records for _, g in parts[r.label]]}
    assert undetermined(law, None, {"Lsat": 1.0}, gmses) == {}
    e_at_bound, alpha_at_bound = copy.copy(law), copy.copy(law)
    e_at_bound.at_bound, alpha_at_bound.at_bound = ["E"], ["E", "alpha"]
    assert undetermined(e_at_bound, None, {"Lsat": 1.0}, gmses) == {}
    assert caveat(e_at_bound).startswith("E at its search bound") and caveat(law) == ""
    assert undetermined(alpha_at_bound, None, {"Lsat": 1.0}, gmses) == {"scalar": "exponents at their search bound (alpha)"}


def test_a_constant_that_runs_off_is_stopped_at_its_range_and_named(capsys, tmp_path):
    """int4 as good as dense and int3 below it: with Lsat = 1 no finite (F, C) fits both, and C runs off (the
    CPU study's int4 and int3 took it to 3e8, each bootstrap refit staying there: a narrow interval that read
    as determined, and int2 predicted at 0.000). It stops at the end of its search range and is named there."""
    from cslaws.laws.fit import FAMILY_MAX, fit_unified
    from cslaws.laws.heldout import undetermined

    int_store(tmp_path / "r.db", {4: 1.0, 3: 0.9, 2: 0.7}.__getitem__, noise=0.0, w4a4=False)
    records = [r for r in ResultsStore(tmp_path / "r.db", create=False).runs() if r.label in ("dense", "int3", "int4")]
    parts = format_parts(records)
    law = fit_unified(lb.runs_of(records), [parts[r.label] for r in records], fixed={"Lsat": 1.0}, holdout=False)
    assert law.family["scalar"]["C"] == pytest.approx(FAMILY_MAX) and "C[scalar]" in law.at_bound
    gmses = {"scalar": [g for r in records for _, g in parts[r.label]]}
    assert "C=100 ran to an end of its search range" in undetermined(law, None, {"Lsat": 1.0}, gmses)["scalar"]
    # the command gives no constants to predict with, and says why
    assert bench(["law", "unified", "--store", str(tmp_path / "r.db"), "--fit-on", "int3", "int4", "--fix", "Lsat=1",
                  "--bootstrap", "4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "scalar formats: none; its constants are not determined by the runs (C=100 ran to an end" in out
    assert "bench capacity --F" not in out
    # the family table gives C no interval: its resamples stay at the bound, an interval of no width
    assert "100 (at search bound)" in out and "100 [100, 100]" not in out


def test_a_pin_of_a_family_that_a_fitted_subset_lacks_is_left_out_of_that_fit(capsys, tmp_path):
    """`--fix sparse.C=1.39` names a family of the store; a fit on the INT formats alone (`--fit-on`, or a
    held-out INT format's "other formats") has no sparse run for it to act on, and must still run."""
    path = tmp_path / "runs.db"
    store = int_store(path, lambda b: float(rho(int_gmse(b), F_TRUE, C_TRUE)))
    sparse = {"class_path": "cslaws.formats.sparse.Magnitude", "init_args": {"sparsity": 0.5}}
    dense = {r.n_params: r for r in store.runs() if r.label == "dense" and r.tokens == 5 * r.n_params}
    for n, r in dense.items():
        store.add_finished(replace(r, run_id=None, label="sp50", weight=sparse, bits_per_value=9.0, cell=None,
                                   final_val_loss=r.final_val_loss + 0.01))
    fixed = ["Lsat=1", "sparse.C=1.39", "sparse.F=0.5"]
    assert bench(["law", "unified", "--store", str(path), "--fit-on", "int2", "int3", "int4", "--fix", *fixed,
                  "--bootstrap", "2", "--format", "json"]) == 0
    held = {p["label"]: p for p in json.loads(capsys.readouterr().out)["held_out"]}
    assert held["w4a4"]["predicted"] is not None
    assert held["sp50"]["predicted"] is None and held["sp50"]["why"].startswith("no format of family sparse")
    records = ResultsStore(path, create=False).runs()
    board = lb.build(records, k=2)
    pins = {"Lsat": 1.0, "sparse.C": 1.39, "sparse.F": 0.5}
    rows = {p.label: p for p in held_out_predictions(records, board, format_parts(records), pins, 0, 0)}
    # each INT format is predicted from the other INT formats, a fit with no sparse run
    assert all(rows[label].predicted is not None for label in ("int2", "int3", "int4", "w4a4")), rows


def test_a_composition_of_one_family_sits_where_its_fitted_rho_is_its_prediction(store):
    """On the eff-vs-GMSE figure, w4a4 (two scalar parts) is placed where the fitted scalar rho equals the
    product of its parts' fitted rho, so its prediction lies on the drawn curve, not where the published
    rho would put it."""
    from cslaws.laws import plot
    from cslaws.laws.fit import unified_eff
    from cslaws.laws.heldout import fit_rho, fitted_on

    records = ResultsStore(store, create=False).runs()
    board = lb.build(records, k=2)
    parts = format_parts(records)
    fit = fit_rho(fitted_on(records, ["int2", "int3", "int4"], "dense"), {"Lsat": 1.0})
    fig = plot.eff_vs_gmse_figure(board, fit, parts)
    (x,) = [a.xy[0] for a in fig.axes[0].texts if a.get_text() == "w4a4"]
    family = fit.report.law.family
    assert float(rho(x, **family["scalar"])) == pytest.approx(unified_eff(parts["w4a4"], family), rel=1e-9)
    assert x != pytest.approx(float(plot.rho_inverse(next(r.rho for r in board.rows if r.label == "w4a4"))), rel=0.01)
