"""The measured store shipped in results/ holds everything a refit needs, years later."""

from pathlib import Path
from typing import Any

import pytest

from cslaws.bench.store import ResultsStore
from cslaws.laws.capacity import format_from_spec, model_bits, run_capacity
from cslaws.models.llama import SIZES, non_embedding_params

STORE = Path(__file__).resolve().parents[2] / "results" / "cpu-matrix.db"


@pytest.fixture(scope="module")
def runs():
    return ResultsStore(STORE, create=False).runs(None)


def test_every_run_finished_with_its_provenance(runs) -> None:
    # the CPU study: 140 cells of `bench sweep --matrix matrix/cpu.yaml`, each once, none repeating the corpus
    assert len(runs) == 140 and {r.status for r in runs} == {"finished"}
    assert len({r.cell for r in runs}) == 140 and max(r.epochs for r in runs) < 1
    # one comparability key: the english corpus, one tokenizer, BPE 1024, sequences of 64, one validation set
    assert len({r.comparability for r in runs}) == 1
    assert (runs[0].dataset.startswith("english"), runs[0].vocab_size, runs[0].seq_len) == (True, 1024, 64)
    assert runs[0].val_set and runs[0].tokenizer
    for r in runs:
        assert r.n_params == non_embedding_params(SIZES[r.model])
        assert r.code_version.startswith("0.1.0") and r.cell
        assert "model:" in r.config and r.final_val_loss > 0
        # D is what trained: whole steps of batch 16 x 64 tokens, a multiple of 4 (the four validations) at or
        # below the cell's budget
        assert r.tokens_per_step == 16 * 64 and r.tokens == r.steps * r.tokens_per_step and r.steps % 4 == 0
        budget = (25 if "/tpp25/" in r.cell else 50) * r.n_params
        assert 0 <= budget - r.tokens < 4 * r.tokens_per_step


def test_the_store_holds_exactly_the_cells_of_the_cpu_matrix(runs) -> None:
    """`bench sweep --matrix matrix/cpu.yaml` on this store has nothing left to run: the shipped config and the
    shipped results are the same study."""
    from cslaws.bench.sweep import cells, parse

    assert {r.cell for r in runs} == {c.key for c in cells(parse(["--matrix", "matrix/cpu.yaml"]))}


def test_recorded_formats_rebuild_with_their_recorded_bits(runs) -> None:
    """Stores that record activation bits charge both sides on the run's own layer shapes; older ones
    recorded the weight format's bits at its reference row."""
    for r in runs:
        weight, activation = format_from_spec(r.weight), format_from_spec(r.activation)
        if r.activation_bits is None:
            assert weight.bits_per_value == pytest.approx(r.bits_per_value)
        else:
            bits = model_bits(weight, activation, r.model)
            assert (r.bits_per_value, r.activation_bits) == pytest.approx((bits["weight"], bits["activation"]))


def _close(stored: Any, measured: Any) -> bool:
    """The same structure, numbers equal to 1e-9 relative: a grid's Gaussian-optimal clip is a scipy optimum,
    which another scipy release finds a few ulps away (int8's GMSE moved by 2e-12 relative)."""
    if isinstance(stored, dict):
        return isinstance(measured, dict) and stored.keys() == measured.keys() and all(_close(stored[k], measured[k]) for k in stored)
    if isinstance(stored, list):
        return isinstance(measured, list) and len(stored) == len(measured) and all(map(_close, stored, measured))
    if isinstance(stored, float):
        return isinstance(measured, float) and measured == pytest.approx(stored, rel=1e-9, abs=0)
    return stored == measured


def test_every_run_stores_the_gaussian_errors_this_code_measures(runs) -> None:
    """The law's GMSE inputs are in the store, as each run measured them when it started."""
    for r in runs:
        assert _close(r.capacity, run_capacity(r.weight, r.activation)), (r.label, r.capacity)
        assert (r.capacity["weight"] is None) == (r.label == "dense")


def test_every_run_has_its_loss_curve(runs) -> None:
    store = ResultsStore(STORE, create=False)
    for r in runs:
        vals = [p for p in store.curve(r.run_id) if p[3] is not None]
        assert len(vals) == 4 and vals[-1][3] == pytest.approx(r.final_val_loss)
        assert vals[-1][1] == r.tokens and vals[-1][0] == r.steps


def test_law_commands_run_on_the_really_trained_store(tmp_path, capsys) -> None:
    """leaderboard, law unified, law gaps, law penalty, plot and plan read the store that `bench sweep` wrote with real training."""
    import json

    import matplotlib.image
    import numpy as np

    from cslaws.laws.cli import main
    from cslaws.laws.fit import Runs, fit_compression, rho

    def run_json(argv: list[str]):
        assert main([*argv, "--store", str(STORE), "--format", "json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    records = ResultsStore(STORE, create=False).runs()
    labels = {r.label for r in records}
    board = run_json(["leaderboard", "--bootstrap", "10"])
    assert {r["label"] for r in board["rows"]} == labels
    # The store's own fit, redone here from its records, is the leaderboard's.
    law = fit_compression(Runs.of([r.n_params for r in records], [r.tokens for r in records],
                                  [r.final_val_loss for r in records], [r.label for r in records]), holdout=False)
    for row in board["rows"]:
        assert row["eff"] == pytest.approx(law.eff[row["label"]], rel=1e-9)
        # (a percentile interval of 10 resamples need not contain the point estimate of a skewed eff)
        assert 0 < row["eff_lo"] <= row["eff_hi"]
    # Capacities multiply: over weights and activations, and over a composition's sparsifier and quantizer.
    rows = {r["label"]: r for r in board["rows"]}
    assert rows["w4a4"]["rho"] == pytest.approx(rho(rows["w4a4"]["gmse_weight"]) * rho(rows["w4a4"]["gmse_activation"]))
    assert rows["int4_sp50"]["rho"] == pytest.approx(rho(rows["sp50"]["gmse_weight"]) * rho(rows["int4"]["gmse_weight"]))

    unified = run_json(["law", "unified", "--fix", "Lsat=1", "C=1.39"])
    assert set(unified["law"]["family"]) == {"scalar", "sparse"}
    assert {r["label"] for r in unified["rows"]} == labels

    # The gaps to dense, redone here by grouping the records by (format, size, tokens): two budgets per size,
    # so each size's change per doubling of D is a difference quotient.
    gaps = run_json(["law", "gaps"])
    cell: dict[tuple[str, int, int], list[float]] = {}
    for r in records:
        cell.setdefault((r.label, r.n_params, r.tokens), []).append(r.final_val_loss)
    for row in gaps["rows"]:
        diffs = {(n, d): np.mean(v) - np.mean(cell[("dense", n, d)]) for (lab, n, d), v in cell.items() if lab == row["label"]}
        assert row["mean_gap"] == pytest.approx(np.mean(list(diffs.values())), abs=1e-12)
        for n, change in row["per_size"]:
            (d_lo, g_lo), (d_hi, g_hi) = sorted((d, g) for (m, d), g in diffs.items() if m == n)
            assert change == pytest.approx((g_hi - g_lo) / np.log2(d_hi / d_lo), rel=1e-3)
    assert {r["label"] for r in gaps["rows"]} == labels - {"dense"}

    # The penalty form nests the compression form (gamma_D = 0, gamma_N = alpha), so it fits these runs at least
    # as closely; its compression side is the same fit as the leaderboard's.
    penalty = run_json(["law", "penalty", "--bootstrap", "0"])
    assert set(penalty["penalty"]["k"]) == labels - {"dense"}
    assert penalty["penalty"]["rmse_log"] < penalty["compression"]["rmse_log"]
    assert penalty["compression"]["eff"] == pytest.approx(law.eff, rel=1e-9)

    choices = run_json(["plan", "--memory-bits", "4e6", "--flops", "1e15"])
    assert {c["label"] for c in choices} == labels
    assert np.all(np.diff([c["loss"] for c in choices]) >= 0)

    assert main(["plot", "--store", str(STORE), "--out", str(tmp_path), "--bootstrap", "5"]) == 0
    paths = capsys.readouterr().out.split()
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["eff_vs_gmse.png", "gap_vs_d.png", "iso_memory.png", "loss_gap.png", "loss_vs_n.png"]
    for path in paths:
        assert matplotlib.image.imread(path).std() > 0
