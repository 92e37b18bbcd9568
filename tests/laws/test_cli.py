"""`bench law fit | leaderboard | plot | plan` end to end: JSON outputs parsed and checked against the
constants the runs were drawn from, brute-force planning, and bad input."""

from __future__ import annotations

import json
import math
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.formats.int import Int
from cslaws.laws.capacity import gaussian_mse_of_levels
from cslaws.bench.cli import main as bench
from cslaws.laws.cli import main
from cslaws.laws.fit import rho
from cslaws.models.llama import SIZES, non_embedding_params

from conftest import TRUE, synthetic

EFFS = {"dense": 1.0, "int4": 0.7, "int3": 0.55, "int2": 0.4}


def _spec(bits: int) -> dict:
    return {"class_path": "cslaws.formats.int.Int", "init_args": {"bits": bits, "scale": "gaussian"}}


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "results.db"
    store = ResultsStore(path)
    n, d, loss, lab = synthetic(noise=0.003, seed=11, effs=EFFS)
    for i, (ni, di, li, label) in enumerate(zip(n, d, loss, lab)):
        bits = None if label == "dense" else int(label[3:])
        store.add_finished(RunRecord(
            label=label, model=f"m{int(ni)}", n_params=int(ni), tokens=int(di),
            bits_per_value=16.0 if bits is None else Int(bits=bits).bits_per_value, seed=i, dataset="synthetic",
            tokenizer="none", code_version="test", config="", weight=None if bits is None else _spec(bits),
            final_val_loss=float(li),
        ))
    # A failed run must not enter the fit.
    store.start_run(RunRecord(label="int4", model="x", n_params=10**7, tokens=10**8, bits_per_value=4.0, seed=0,
                              dataset="synthetic", tokenizer="none", code_version="test"))
    return path


def _json(capsys, argv: list[str]):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_leaderboard_json(capsys, store_path):
    board = _json(capsys, ["leaderboard", "--store", str(store_path), "--format", "json", "--bootstrap", "30"])
    rows = {r["label"]: r for r in board["rows"]}
    assert set(rows) == set(EFFS)
    assert board["law"]["runs"] == 4 * 28
    for label, true in EFFS.items():
        r = rows[label]
        assert r["eff"] == pytest.approx(true, rel=0.03)
        assert r["eff_lo"] <= r["eff"] <= r["eff_hi"]
        assert r["runs"] == 28
        assert r["eff_per_bit"] == pytest.approx(r["eff"] * 16 / r["bits"], rel=1e-12)
    for bits in (2, 3, 4):
        r = rows[f"int{bits}"]
        exact = gaussian_mse_of_levels(Int(bits=bits).gaussian_grid().numpy())
        assert r["gmse_weight"] == pytest.approx(exact, rel=1e-12) and r["gmse_activation"] is None
        assert r["rho"] == pytest.approx(float(rho(exact)), rel=1e-12)
    assert rows["dense"]["gmse_weight"] is None and rows["dense"]["rho"] == 1.0
    # Rows are ranked by eff x 16 / bits.
    ranks = [r["eff_per_bit"] for r in board["rows"]]
    assert ranks == sorted(ranks, reverse=True)
    assert board["law"]["alpha"] == pytest.approx(TRUE["alpha"], rel=0.05)


def test_a_format_of_one_run_has_no_interval(capsys, store_path, tmp_path):
    """Resampled within its format, a single run is drawn every time: its eff moved only with the shared
    constants, 0.038 wide on the CPU study's int2 cut to one run, against 0.177 with its 14."""
    copy = tmp_path / "one.db"
    copy.write_bytes(store_path.read_bytes())
    with closing(sqlite3.connect(copy)) as db, db:
        db.execute("DELETE FROM runs WHERE label = 'int2' AND run_id != (SELECT MIN(run_id) FROM runs WHERE label = 'int2')")
    rows = {r["label"]: r for r in _json(capsys, ["leaderboard", "--store", str(copy), "--format", "json", "--bootstrap", "4"])["rows"]}
    assert rows["int2"]["runs"] == 1 and rows["int2"]["eff_lo"] is None and rows["int2"]["eff_hi"] is None
    assert rows["int3"]["eff_lo"] < rows["int3"]["eff_hi"]
    assert main(["leaderboard", "--store", str(copy), "--format", "md", "--bootstrap", "4"]) == 0
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| int2 |")]
    assert "| 1 run: no interval |" in line
    fit = _json(capsys, ["law", "fit", "--runs", str(_store_csv(copy)), "--format-col", "label", "--bootstrap", "4", "--format", "json"])
    assert "int2" in fit["eff"] and "int2" not in fit["eff_ci"] and "int3" in fit["eff_ci"]
    assert main(["plot", "--store", str(copy), "--out", str(tmp_path / "figs"), "--bootstrap", "4"]) == 0
    capsys.readouterr()
    # the penalty form's own bootstrap gave it one
    penalty = _json(capsys, ["law", "penalty", "--store", str(copy), "--bootstrap", "4", "--format", "json"])["penalty"]
    assert "int2" in penalty["k"] and "int3" in penalty["bootstrap"]["k_ci"] and "int3" in penalty["bootstrap"]["eff_ci"]
    assert "int2" not in penalty["bootstrap"]["k_ci"] and "int2" not in penalty["bootstrap"]["eff_ci"]


@pytest.mark.parametrize("fmt", ["md", "csv", "text"])
def test_leaderboard_other_formats(capsys, store_path, fmt, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["leaderboard", "--store", str(store_path), "--format", fmt, "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    for label in EFFS:
        assert label in out
    if fmt == "csv":
        lines = out.strip().splitlines()
        assert lines[0].startswith("label,bits,bits_min,bits_max,activation_bits,epochs,eff,eff_lo,eff_hi")
        assert len(lines) == 1 + len(EFFS)
    if fmt == "md":
        assert out.startswith("| format |") and "held out" in out


def test_plot_writes_four_figures(capsys, store_path, tmp_path):
    import matplotlib.image

    from cslaws.laws.plot import FIGURES, figure_path

    assert main(["plot", "--store", str(store_path), "--out", str(tmp_path / "figs"), "--bootstrap", "5"]) == 0
    printed = capsys.readouterr().out.split()
    names = sorted(p.rsplit("/", 1)[1] for p in printed)
    assert names == ["eff_vs_gmse.png", "gap_vs_d.png", "iso_memory.png", "loss_gap.png", "loss_vs_n.png"]
    # the paths checked before the fits are those written
    assert printed == [str(figure_path(tmp_path / "figs", stem)) for stem in FIGURES]
    for p in printed:
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.std() > 0


def _brute_plan(law: dict, eff: float, bits: float, memory: float | None, flops: float | None) -> tuple[float, float]:
    """Best (N, loss) over a fine log grid of N plus the memory bound, with D = C / (6N), N <= memory / bits."""
    n = np.geomspace(1e3, 1e15, 400_001)
    if memory is not None:
        n = np.append(n[n < memory / bits], memory / bits)
    d = flops / (6 * n) if flops is not None else np.inf
    loss = law["A"] * (n * eff) ** -law["alpha"] + (law["B"] * d ** -law["beta"] if flops is not None else 0) + law["E"]
    i = int(np.argmin(loss))
    return float(n[i]), float(loss[i])


@pytest.mark.parametrize("memory,flops", [(None, 1e20), (2e9, 1e20), (2e9, None)])
def test_plan_matches_brute_force(capsys, store_path, memory, flops):
    argv = ["plan", "--store", str(store_path), "--format", "json"]
    argv += ["--memory-bits", str(memory)] if memory else []
    argv += ["--flops", str(flops)] if flops else []
    choices = _json(capsys, argv)
    law = _json(capsys, ["law", "fit", "--runs", str(_store_csv(store_path)), "--format-col", "label", "--format", "json"])
    assert [c["loss"] for c in choices] == sorted(c["loss"] for c in choices)
    dense = next(c for c in choices if c["label"] == "dense")
    for c in choices:
        n_best, loss_best = _brute_plan(law, law["eff"][c["label"]], c["bits"], memory, flops)
        assert c["loss"] == pytest.approx(loss_best, rel=1e-7)
        assert c["n"] == pytest.approx(n_best, rel=2e-4)
        assert c["improvement"] == pytest.approx(dense["loss"] - c["loss"], abs=1e-12)
        if flops is None:
            assert c["d"] is None
        else:
            assert c["d"] == pytest.approx(flops / (6 * c["n"]), rel=1e-12)
    if memory is not None and flops is None:
        # Memory-bound: the compressed formats fit more parameters and beat dense.
        assert choices[0]["label"] != "dense" and choices[0]["improvement"] > 0


@pytest.mark.parametrize("memory,flops", [(2e9, None), (2e9, 1e20), (None, 1e20)])
def test_plan_prices_each_format_on_the_size_its_plan_lands_at(capsys, store_path, memory, flops):
    """An int format's row scales cost 16 bits per row: priced on the layers of the model size nearest (in log
    N) to its planned N, not on the runs' rows; dense runs without a spec keep their stored 16 bits."""
    argv = ["plan", "--store", str(store_path), "--format", "json"]
    argv += ["--memory-bits", str(memory)] if memory else []
    argv += ["--flops", str(flops)] if flops else []
    sizes = {name: non_embedding_params(size) for name, size in SIZES.items()}
    for c in _json(capsys, argv):
        if c["label"] == "dense":
            assert (c["bits"], c["priced_on"]) == (16.0, "its runs")
            continue
        nearest = min(sizes, key=lambda name: abs(math.log(sizes[name]) - math.log(c["n"])))
        assert c["priced_on"] == nearest
        assert c["bits"] == pytest.approx(_int_row_scale_bits_per_param(int(c["label"][3:]), nearest), rel=1e-12)
        if memory is not None:
            assert c["n"] <= memory / c["bits"] * (1 + 1e-12)
        if flops is None:
            assert c["n"] == pytest.approx(memory / c["bits"], rel=1e-12)


def _int_row_scale_bits_per_param(bits: int, size: str) -> float:
    """Bits per non-embedding parameter of an int format with one 16-bit scale per row, by hand: per block q, k,
    v, o and gate, up read rows of d (4 d^2 + 2 d f weights, 5 d + 2 f rows), down rows of f (d f weights, d
    rows); the two RMSNorm gains per block and the final one (2 d L + d values) stay at 16 bits."""
    d, f, layers = SIZES[size].d_model, SIZES[size].d_ff, SIZES[size].n_layer
    weights, rows, gains = layers * (4 * d * d + 3 * d * f), layers * (5 * d + 2 * f), 2 * d * layers + d
    return (bits * weights + 16 * rows + 16 * gains) / (weights + gains)


@pytest.mark.parametrize("memory", [1.5e7, 2.49e6, 4e6, 1e9])
def test_a_memory_plan_takes_the_largest_n_its_price_allows(capsys, memory):
    """Against a grid over N (10^5 to 10^9, 40,000 points), each priced in closed form on its nearest size: the
    plan's N is the largest that fits the budget at its own price. A fixed-point iteration stopped at the first
    N that agreed with its price: at 1.5e7 bits int2 got 7.24e6 ('medium', 2.072 bits), where 7.42e6 on 30M
    (2.021 bits) fits too, 0.0026 nats lower."""
    store = Path(__file__).parents[2] / "results" / "cpu-matrix.db"
    (c,) = _json(capsys, ["plan", "--store", str(store), "--memory-bits", str(memory), "--formats", "int2", "--format", "json"])
    sizes = {name: non_embedding_params(size) for name, size in SIZES.items()}

    def bits(n: float) -> float:  # int2 with row scales on the nearest size's layers
        return _int_row_scale_bits_per_param(2, min(sizes, key=lambda name: abs(math.log(sizes[name] / n))))

    fitting = [n for n in np.logspace(5, 9, 40_000) if n * bits(n) <= memory]
    assert c["n"] * c["bits"] == pytest.approx(memory, rel=1e-12) and c["bits"] == pytest.approx(bits(c["n"]), rel=1e-12)
    assert max(fitting) <= c["n"] < max(fitting) * 10 ** (4 / 40_000) * 1.0001


def test_plan_charges_stored_bits_where_a_spec_cannot_be_built(capsys, store_path, tmp_path):
    """A run whose format this code version cannot build (a class since removed) keeps its stored bits, and says so."""
    copy = tmp_path / "old.db"
    copy.write_bytes(store_path.read_bytes())
    gone = json.dumps({"class_path": "cslaws.formats.gone.Gone", "init_args": {}})
    with closing(sqlite3.connect(copy)) as db, db:
        db.execute("UPDATE runs SET weight = ? WHERE label = 'int4'", (gone,))
        stored = db.execute("SELECT AVG(bits_per_value) FROM runs WHERE label = 'int4' AND status = 'finished'").fetchone()[0]
    choices = {c["label"]: c for c in _json(capsys, ["plan", "--store", str(copy), "--memory-bits", "2e9", "--format", "json"])}
    assert choices["int4"]["priced_on"] == "its runs" and choices["int4"]["bits"] == pytest.approx(stored, rel=1e-12)
    assert choices["int3"]["priced_on"] in SIZES


_CSV_CACHE: dict = {}


def _store_csv(store_path):
    """The store's finished runs as a CSV with columns N, D, loss, label (for `bench law fit`)."""
    if store_path not in _CSV_CACHE:
        path = store_path.parent / "runs.csv"
        records = ResultsStore(store_path).runs()
        lines = ["N,D,loss,label"] + [f"{r.n_params},{r.tokens},{r.final_val_loss!r},{r.label}" for r in records]
        path.write_text("\n".join(lines) + "\n")
        _CSV_CACHE[store_path] = path
    return _CSV_CACHE[store_path]


def test_law_fit_chinchilla_json(capsys, chinchilla_csv):
    out = _json(capsys, ["law", "fit", "--runs", str(chinchilla_csv), "--n-col", "Model Size", "--flop-col",
                         "Training FLOP", "--exclude-top", "5", "--format", "json"])
    assert out["runs"] == 240 and out["excluded"] == 5
    assert {"A", "B", "E", "alpha", "beta", "objective", "rmse_log", "holdout"} <= set(out)
    assert "eff" not in out
    assert out["E"] == pytest.approx(1.8172, rel=0.01) and out["alpha"] == pytest.approx(0.3478, rel=0.02)


def test_law_fit_quest_compression_with_bootstrap(capsys, quest_csv):
    out = _json(capsys, ["law", "fit", "--runs", str(quest_csv), "--format-col", "format", "--bootstrap", "8",
                         "--format", "json"])
    assert len(out["eff"]) == 17 and out["eff"]["dense"] == 1.0
    assert set(out["eff_ci"]) == set(out["eff"])
    assert set(out["ci"]) == {"A", "B", "E", "alpha", "beta"}
    for label, (lo, hi) in out["eff_ci"].items():
        assert lo <= hi
    assert out["bootstrap"] == 8


def test_law_fit_prints_no_interval_for_a_constant_at_its_bound(capsys, quest_csv, monkeypatch):
    """QuEST's runs leave E at its bound; its resamples stay there, and an interval of no width measured nothing."""
    monkeypatch.setenv("COLUMNS", "200")
    out = _json(capsys, ["law", "fit", "--runs", str(quest_csv), "--format-col", "format", "--bootstrap", "4", "--format", "json"])
    assert out["at_bound"] == ["E"]
    assert main(["law", "fit", "--runs", str(quest_csv), "--format-col", "format", "--bootstrap", "4"]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    assert "at search bound" in rows["E"] and "[" not in rows["E"]
    assert "at search bound" not in rows["alpha"] and "[" in rows["alpha"]


def test_law_fit_recovers_synthetic_constants(capsys, store_path):
    out = _json(capsys, ["law", "fit", "--runs", str(_store_csv(store_path)), "--format-col", "label", "--format", "json"])
    for label, true in EFFS.items():
        assert out["eff"][label] == pytest.approx(true, rel=0.03)
    assert out["E"] == pytest.approx(TRUE["E"], rel=0.02)


def test_law_fit_text_output(capsys, store_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["law", "fit", "--runs", str(_store_csv(store_path)), "--format-col", "label"]) == 0
    out = capsys.readouterr().out
    assert "eff[int2]" in out and "alpha" in out and "held out" in out


# ----------------------------------------------------------------------------------------------------
# Bad input


def test_empty_store_is_a_clear_error(capsys, tmp_path):
    path = tmp_path / "empty.db"
    ResultsStore(path)
    assert bench(["leaderboard", "--store", str(path)]) == 2
    assert "has no finished runs" in capsys.readouterr().err


def test_missing_store_is_a_clear_error(capsys, tmp_path):
    assert bench(["plan", "--store", str(tmp_path / "nope.db"), "--flops", "1e20"]) == 2
    assert "no results store at" in capsys.readouterr().err


def test_law_fit_rejects_both_token_sources(capsys, chinchilla_csv):
    argv = ["law", "fit", "--runs", str(chinchilla_csv), "--d-col", "x", "--flop-col", "Training FLOP"]
    assert bench(argv) == 2
    assert "either --d-col" in capsys.readouterr().err


def test_law_fit_names_missing_columns(capsys, chinchilla_csv):
    assert bench(["law", "fit", "--runs", str(chinchilla_csv)]) == 2
    err = capsys.readouterr().err
    assert "no column(s) ['N', 'D']" in err and "Model Size" in err


def test_law_fit_single_size_and_too_few_runs(capsys, tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("N,D,loss\n" + "".join(f"1e8,{d},{3 - d / 1e11}\n" for d in (1e9, 2e9, 4e9, 8e9, 1.6e10, 3.2e10)))
    assert bench(["law", "fit", "--runs", str(path)]) == 2
    assert "same model size" in capsys.readouterr().err
    path.write_text("N,D,loss\n1e7,1e8,4\n1e8,1e9,3\n1e9,1e10,2.5\n")
    assert bench(["law", "fit", "--runs", str(path)]) == 2
    assert "5 parameters but only 3 runs" in capsys.readouterr().err


def test_min_params_leaves_out_the_small_models(capsys, store_path):
    from cslaws.bench.store import ResultsStore

    sizes = sorted({r.n_params for r in ResultsStore(store_path).runs()})
    cut = sizes[1]
    board = _json(capsys, ["leaderboard", "--store", str(store_path), "--format", "json", "--bootstrap", "5",
                           "--min-params", str(cut)])
    kept = sum(1 for r in ResultsStore(store_path).runs() if r.n_params >= cut)
    assert board["law"]["runs"] == kept < 4 * 28
    assert bench(["leaderboard", "--store", str(store_path), "--min-params", str(10 * sizes[-1])]) == 2
    assert f"by --where - / --min-params {10 * sizes[-1]}" in capsys.readouterr().err


def two_values_of_d(store_path: Path, copy: Path, split: float, low: int, high: int) -> Path:
    """`store_path`'s runs with D set to `low` or `high` tokens (below or above `split` tokens per parameter):
    a D term fitted on 2 values of D, which 2 constants and E fit exactly."""
    copy.write_bytes(store_path.read_bytes())
    with closing(sqlite3.connect(copy)) as db, db:
        db.execute("UPDATE runs SET tokens = CASE WHEN tokens < ? * n_params THEN ? ELSE ? END", (split, low, high))
    return copy


def test_plan_refuses_a_compute_budget_the_runs_do_not_determine(capsys, store_path, tmp_path):
    """A compute budget trades N against D through the D term: with it undetermined, the ranking was printed
    anyway (0.49 nats for int2 on a store of 2 values of D, against 0.008 on the real one)."""
    store = two_values_of_d(store_path, tmp_path / "two-d.db", 30, 10**9, 4 * 10**10)
    assert bench(["plan", "--store", str(store), "--flops", "1e20"]) == 2
    assert capsys.readouterr().err.strip() == (
        "bench: error: bench plan: the law does not determine a plan: B and beta fitted on 2 value(s) of D, not "
        "determined by the runs (a memory budget alone does not read the D term)")
    choices = _json(capsys, ["plan", "--store", str(store), "--memory-bits", "1e9", "--format", "json"])
    assert {c["label"] for c in choices} == set(EFFS) and all(c["d"] is None for c in choices)


@pytest.mark.parametrize(("at_bound", "flops", "why"), [
    (["alpha"], None, "alpha at the search bound"),
    (["beta"], None, ""),
    (["beta", "E"], 1e20, "beta at the search bound"),
    (["E"], 1e20, ""),
    (["alpha", "beta"], 1e20, "alpha and beta at the search bound"),
])
def test_a_plan_reads_the_terms_its_budgets_need(store_path, at_bound, flops, why):
    from dataclasses import replace

    from cslaws.laws.fit import fit_compression
    from cslaws.laws.leaderboard import runs_of
    from cslaws.laws.plan import undetermined_terms

    law = replace(fit_compression(runs_of(ResultsStore(store_path).runs())), at_bound=at_bound)
    said = undetermined_terms(law, flops)
    assert (said == "") if not why else said.startswith(f"the law does not determine a plan: {why}, not determined")


def test_a_non_positive_loss_is_named_by_its_run_id(capsys, store_path, tmp_path):
    """It was named by its position among the selected runs, which is no id a user can find in the store."""
    copy = tmp_path / "neg.db"
    copy.write_bytes(store_path.read_bytes())
    with closing(sqlite3.connect(copy)) as db, db:
        db.execute("UPDATE runs SET final_val_loss = -1 WHERE run_id IN (7, 9)")
    assert bench(["leaderboard", "--store", str(copy), "--bootstrap", "2"]) == 2
    assert "2 run(s) of the store have a NaN, infinite or non-positive N, D or loss (run ids [7, 9])" in capsys.readouterr().err


def test_an_option_given_twice_adds_to_the_first(capsys, store_path):
    """argparse kept the last occurrence alone: `--formats int2 --formats int4` planned int4 only."""
    choices = _json(capsys, ["plan", "--store", str(store_path), "--memory-bits", "1e9", "--formats", "int2",
                             "--formats", "int4", "--format", "json"])
    assert sorted(c["label"] for c in choices) == ["int2", "int4"]
    board = _json(capsys, ["leaderboard", "--store", str(store_path), "--bootstrap", "2", "--format", "json",
                           "--where", "dataset=synthetic", "--where", "label=dense"])
    assert [r["label"] for r in board["rows"]] == ["dense"]


def test_fit_on_refuses_a_label_listed_twice(capsys, store_path):
    assert bench(["law", "unified", "--store", str(store_path), "--fit-on", "int4", "int3", "int4"]) == 2
    assert "--fit-on lists 'int4' twice; give each label once" in capsys.readouterr().err


def test_json_output_has_null_where_a_number_is_not_finite(capsys):
    from cslaws.laws.cli import _print_json

    _print_json({"eff_ci": {"int4": [0.0, float("nan")]}, "hi": (float("inf"), 1), "n": 2})
    assert json.loads(capsys.readouterr().out) == {"eff_ci": {"int4": [0.0, None]}, "hi": [None, 1], "n": 2}


def test_plan_compares_with_the_reference_it_was_given(capsys, store_path):
    """With --dense int4 the gains are over int4's plan, and the table and the JSON say so (they said dense)."""
    argv = ["plan", "--store", str(store_path), "--dense", "int4", "--memory-bits", "2e9", "--formats", "int2", "dense"]
    choices = {c["label"]: c for c in _json(capsys, [*argv, "--format", "json"])}
    assert set(choices) == {"int2", "dense"}
    int4 = choices["int2"]["reference_loss"]
    assert all(c["improvement"] == pytest.approx(int4 - c["loss"], abs=1e-12) for c in choices.values())
    assert choices["dense"]["improvement"] < 0  # dense, 16 bits a parameter, holds 4x fewer than int4 in 2e9 bits
    assert main(argv) == 0
    assert "better than int4 by" in capsys.readouterr().out


def test_plan_needs_a_budget(capsys, no_store_read):
    assert bench(["plan"]) == 2
    assert capsys.readouterr().err.strip() == ("bench: error: plan: give --memory-bits, --flops, or both "
                                               "(the options: bench plan --help)")


def test_plan_unknown_format_is_refused_before_the_fit(capsys, store_path, monkeypatch):
    import cslaws.laws.cli as cli

    def no_fit(*_):
        raise AssertionError("the law was fitted before the check")

    monkeypatch.setattr(cli, "fit_compression", no_fit)
    assert bench(["plan", "--store", str(store_path), "--flops", "1e20", "--formats", "int9"]) == 2
    assert "plan: no runs of ['int9'] among the selected runs; formats: dense, " in capsys.readouterr().err


def test_unknown_subcommand(capsys):
    assert main(["nope"]) == 2
    assert "usage: bench" in capsys.readouterr().err


def test_shipped_data_sets_are_the_test_copies(chinchilla_csv, quest_csv):
    from importlib.resources import files

    from cslaws.bench.cli import SHIPPED_DATA, runs_csv_path

    for name, copy in zip(SHIPPED_DATA, (chinchilla_csv, quest_csv)):
        assert runs_csv_path(type(copy)(name)).read_bytes() == copy.read_bytes()
        assert (files("cslaws.laws") / name).is_file()


def test_missing_runs_file(capsys, tmp_path):
    assert bench(["law", "fit", "--runs", str(tmp_path / "none.csv")]) == 2
    assert "none.csv': no such file, nor a shipped data set (data/chinchilla/" in capsys.readouterr().err


def test_leaderboard_rejects_a_label_with_two_formats(capsys, tmp_path):
    path = tmp_path / "mixed.db"
    store = ResultsStore(path)
    n, d, loss, lab = synthetic(effs={"dense": 1.0, "int4": 0.7})
    for i, (ni, di, li, label) in enumerate(zip(n, d, loss, lab)):
        spec = None if label == "dense" else _spec(4 if i % 2 else 3)
        store.add_finished(RunRecord(label=label, model="m", n_params=int(ni), tokens=int(di), bits_per_value=16.0,
                                     seed=i, dataset="s", tokenizer="t", code_version="v", weight=spec,
                                     final_val_loss=float(li)))
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2"]) == 2
    assert "label 'int4' has runs with different weight" in capsys.readouterr().err


@pytest.mark.parametrize("flops, beyond", [(1e20, True), (1e18, False), (1e14, True)])
def test_plan_names_the_choices_it_extrapolates(capsys, store_path, flops, beyond):
    """A plan whose N lies outside the stored model sizes is the law's extrapolation: the text output says
    which formats' plans are, and says nothing when every plan is inside."""
    choices = _json(capsys, ["plan", "--store", str(store_path), "--flops", str(flops), "--format", "json"])
    runs = ResultsStore(store_path, create=False).runs()
    sizes, tokens = [r.n_params for r in runs], [r.tokens for r in runs]
    outside = [c["label"] for c in choices if not min(sizes) <= c["n"] <= max(sizes)]
    outside_d = [c["label"] for c in choices if not min(tokens) <= c["d"] <= max(tokens)]
    assert bool(outside) == beyond  # the budgets reach past the stored sizes at both ends, and stay inside
    assert bench(["plan", "--store", str(store_path), "--flops", str(flops)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    if outside:
        assert f"note: The plans of {', '.join(outside)} lie outside the measured range of N" in out
    if outside_d:
        assert f"The plans of {', '.join(outside_d)} lie outside the measured range of D" in out
    if not outside and not outside_d:
        assert "outside the measured range" not in out


@pytest.fixture
def no_store_read(monkeypatch):
    """Reading the store's runs (and so any fit after it) fails the test: the checks under test come first."""
    import cslaws.laws.cli as cli

    def read(*_):
        raise AssertionError("the runs were read before the check")

    for name in ("_store", "_store_records", "_read_runs"):
        monkeypatch.setattr(cli, name, read)


@pytest.mark.parametrize("argv", [["leaderboard"], ["plot", "--out", "figs"], ["report", "--out", "r.html"],
                                  ["law", "penalty"], ["law", "unified"], ["law", "fit", "--runs", "runs.csv"]])
def test_a_negative_seed_is_refused_before_any_fit(capsys, no_store_read, argv):
    assert bench([*argv, "--seed", "-3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: --seed must be a non-negative integer, got -3"), err


@pytest.mark.parametrize("argv", [["law", "penalty", "--bootstrap", "0"], ["law", "unified"],
                                  ["law", "fit", "--runs", "runs.csv"], ["law", "fit", "--runs", "runs.csv", "--bootstrap", "0"]])
def test_a_seed_without_resamples_is_refused_before_any_fit(capsys, no_store_read, argv):
    assert bench([*argv, "--seed", "5"]) == 2
    assert capsys.readouterr().err.strip() == ("bench: error: --seed 5 seeds the bootstrap, and there is none: "
                                               "give --bootstrap K too")


def test_law_fit_refuses_a_reference_label_without_a_format_column(capsys, no_store_read):
    """Without --format-col the Chinchilla form is fitted: a --dense label would be ignored."""
    assert bench(["law", "fit", "--runs", "runs.csv", "--dense", "bf16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: --dense bf16 names the reference label of --format-col's column"), err


@pytest.mark.parametrize(("argv", "allowed"), [(["leaderboard"], "at least 2 resamples"),
                                              (["plot", "--out", "figs"], "at least 2 resamples"),
                                              (["report", "--out", "r.html"], "at least 2 resamples"),
                                              (["law", "penalty"], "0 (no intervals) or at least 2 resamples"),
                                              (["law", "unified"], "0 (no intervals) or at least 2 resamples"),
                                              (["law", "fit", "--runs", "runs.csv"], "0 (no intervals) or at least 2 resamples")])
@pytest.mark.parametrize("k", [1, -1])
def test_too_few_resamples_are_refused_before_any_fit(capsys, no_store_read, argv, allowed, k):
    assert bench([*argv, "--bootstrap", str(k)]) == 2
    assert capsys.readouterr().err.strip() == f"bench: error: --bootstrap must be {allowed}, got {k}"


@pytest.mark.parametrize("argv", [["leaderboard"], ["law", "unified", "--fit-on", "int4"]])
def test_commands_that_show_intervals_need_resamples(capsys, no_store_read, argv):
    """The leaderboard shows intervals; held-out predictions are judged against the measured ones."""
    assert bench([*argv, "--bootstrap", "0"]) == 2
    assert capsys.readouterr().err.strip() == "bench: error: --bootstrap must be at least 2 resamples, got 0"


def test_plot_refuses_an_out_that_is_a_file_before_the_fit(capsys, no_store_read, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for out in (notes, notes / "figs"):
        assert bench(["plot", "--out", str(out)]) == 2
        assert f"--out {out}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("command", ["plot", "report"])
def test_an_empty_out_is_no_path(capsys, no_store_read, tmp_path, monkeypatch, command):
    """`Path("")` is the working directory: plot wrote its figures there."""
    monkeypatch.chdir(tmp_path)
    assert bench([command, "--out", ""]) == 2
    assert f"bench: error: {command}: argument --out: '' is no path (the options: bench {command} --help)" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_csv_that_names_a_column_twice_is_refused(capsys, tmp_path):
    """The second `loss` column was fitted, unsaid."""
    runs = tmp_path / "runs.csv"
    runs.write_text("N,D,loss,loss\n1e6,2e7,3.0,9.0\n")
    assert bench(["law", "fit", "--runs", str(runs)]) == 2
    assert "the header names column(s) 'loss' more than once; give each column its own name" in capsys.readouterr().err


def test_a_run_without_a_format_label_is_refused(capsys, quest_csv, tmp_path):
    """It was fitted as a format of its own, whose multiplier no label named."""
    lines = quest_csv.read_text().splitlines()
    column = lines[0].split(",").index("format")
    fields = lines[3].split(",")
    fields[column] = " "
    runs = tmp_path / "runs.csv"
    runs.write_text("\n".join([*lines[:3], ",".join(fields), *lines[4:]]) + "\n")
    assert bench(["law", "fit", "--runs", str(runs), "--format-col", "format"]) == 2
    assert f"row 3 after the header of {runs} has no label in column 'format'" in capsys.readouterr().err


def test_law_fit_names_a_file_that_is_not_a_csv(capsys, store_path):
    assert bench(["law", "fit", "--runs", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: --runs {store_path}: not a CSV text file")
    assert "expected a CSV of runs: a header row, then one run per row" in err


def test_a_plan_past_the_measured_tokens_is_named_too():
    from types import SimpleNamespace

    from cslaws.laws.plan import Choice, extrapolation_note

    def choice(label, n, d):
        return Choice(label, 4.0, 1.0, n, d, 3.0, 3.0, 0.0)

    records = [SimpleNamespace(n_params=10, tokens=800), SimpleNamespace(n_params=40, tokens=100)]
    law = SimpleNamespace(alpha=0.3, beta=0.2)
    note = extrapolation_note([choice("a", 20, 500), choice("b", 20, 900), choice("c", 50, None)], records, law)
    assert note == ("The plans of c lie outside the measured range of N [10, 40]: they extrapolate the law (alpha = 0.3) "
                    "and are no better than its exponents. The plans of b lie outside the measured range of D [100, 800]: "
                    "they extrapolate the law (beta = 0.2) and are no better than its exponents.")
    assert extrapolation_note([choice("a", 20, 500)], records, law) == ""


def test_the_leaderboard_reads_the_gmse_each_run_stored(capsys, tmp_path):
    """Results are data: the GMSE a run stored is the one fitted, even where this code cannot rebuild the
    format (a renamed class); a run stored without one is measured from its spec, or named when it cannot be."""
    path = tmp_path / "stored.db"
    store = ResultsStore(path)
    n, d, loss, lab = synthetic(effs={"dense": 1.0, "int4": 0.7})
    capacity = {"weight": {"gmse": 0.0123, "parts": [{"class": "Int", "family": "scalar", "gmse": 0.0123}]}, "activation": None}
    renamed = {"class_path": "cslaws.formats.int_v1.Int", "init_args": {"bits": 4}}
    for i, (ni, di, li, label) in enumerate(zip(n, d, loss, lab)):
        store.add_finished(RunRecord(label=label, model="m", n_params=int(ni), tokens=int(di), bits_per_value=16.0, seed=i,
                                     dataset="s", tokenizer="t", code_version="v", final_val_loss=float(li),
                                     weight=None if label == "dense" else renamed,
                                     capacity=None if label == "dense" else capacity))
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2", "--format", "json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out)["rows"] if r["label"] == "int4")
    assert row["gmse_weight"] == 0.0123 and row["rho"] == pytest.approx(float(rho(0.0123)))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE runs SET capacity = NULL WHERE run_id = (SELECT MIN(run_id) FROM runs WHERE label = 'int4')")
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2"]) == 2
    err = capsys.readouterr().err
    assert "('int4') stored no GMSE" in err and "int_v1" in err and "Traceback" not in err
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE runs SET capacity = ? WHERE capacity IS NULL AND label = 'int4'",
                   (json.dumps({**capacity, "weight": {**capacity["weight"], "gmse": 0.02}}),))
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2"]) == 2
    assert "label 'int4' has runs whose stored GMSEs differ" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# Outputs that must not replace what is there, and checks that come before any fit


def _one_error(capsys) -> str:
    """The one line `bench: error: ...` a refused command printed (no traceback, no usage block)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("bench: error: "), err
    return err.strip()


def test_report_refuses_to_write_over_its_store_or_another_sqlite_file(capsys, no_store_read, constant_eff_store, tmp_path):
    from shutil import copyfile

    store = tmp_path / "runs.db"
    copyfile(constant_eff_store, store)
    before = store.read_bytes()
    other = tmp_path / "other.db"
    copyfile(constant_eff_store, other)
    notes = tmp_path / "notes.html"
    notes.write_text("<!DOCTYPE html><p>mine</p>")
    for out, what in ((store, "the results store the page is made from"), (tmp_path / "." / "runs.db", "the results store"),
                      (other, "a SQLite database"), (notes, "a file that bench report did not write")):
        assert bench(["report", "--store", str(store), "--bootstrap", "2", "--out", str(out)]) == 2
        assert f"bench: error: --out {out} is {what}" in _one_error(capsys)
    assert store.read_bytes() == before and other.read_bytes() == before
    assert notes.read_text() == "<!DOCTYPE html><p>mine</p>"


def test_report_replaces_a_page_it_wrote_before(capsys, constant_eff_store, tmp_path, monkeypatch):
    from cslaws.laws import report

    monkeypatch.setattr(report, "render", lambda *_: report.page(report.TITLE, "the new page"))  # no fits
    page = tmp_path / "report.html"
    page.write_bytes(report.REPORT_HEAD + b"<style></style></head><body>an older page</body></html>")
    assert bench(["report", "--store", str(constant_eff_store), "--bootstrap", "2", "--out", str(page)]) == 0
    assert page.read_text() == report.page(report.TITLE, "the new page")
    # the shipped page is one, as every page render writes begins with REPORT_HEAD
    shipped = Path(__file__).resolve().parents[2] / "results" / "cpu-matrix.html"
    if shipped.is_file():
        assert shipped.read_bytes().startswith(report.REPORT_HEAD)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc, where no file can be made")
@pytest.mark.parametrize("argv", [["report", "--out", "/proc/cslaws/r.html"], ["report", "--out", "/proc/r.html"],
                                  ["plot", "--out", "/proc/figs"]])
def test_an_out_that_cannot_be_written_is_refused_before_any_fit(capsys, no_store_read, argv):
    assert bench([*argv, "--bootstrap", "2"]) == 2
    assert _one_error(capsys).startswith(f"bench: error: --out {argv[-1]}: cannot write in /proc (")


def test_an_unwritable_out_folder_is_refused_before_any_fit(capsys, no_store_read, tmp_path):
    import os

    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):  # root writes anyway: make the write fail as /sys does
        pytest.skip("permission bits do not bind this user")
    for argv in (["report", "--out", str(locked / "r.html")], ["plot", "--out", str(locked / "figs")]):
        assert bench([*argv, "--bootstrap", "2"]) == 2
        assert f"cannot write in {locked} (Permission denied)" in _one_error(capsys)


def test_plot_replaces_its_own_figures_only(capsys, no_store_read, tmp_path):
    from cslaws.laws.plot import FIGURES, figure_path

    store_like = figure_path(tmp_path, FIGURES[1])
    store_like.write_bytes(b"SQLite format 3\x00 and the runs")
    figure_path(tmp_path, FIGURES[0]).write_bytes(b"\x89PNG\r\n\x1a\n an earlier figure")
    assert bench(["plot", "--out", str(tmp_path), "--bootstrap", "2"]) == 2
    assert f"--out {tmp_path}: {store_like} is not a PNG file" in _one_error(capsys)
    assert store_like.read_bytes() == b"SQLite format 3\x00 and the runs"


def test_law_fit_names_a_row_with_too_few_or_too_many_fields(capsys, tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("N,D,loss\n1e6,1e9\n")
    assert bench(["law", "fit", "--runs", str(path)]) == 2
    assert _one_error(capsys) == (f"bench: error: --runs {path}: row 1 after the header has 2 field(s), the header 3; "
                                  "give every row a field per column (an empty field for a missing value)")
    path.write_text("N,D,loss\n1e6,1e9,3.0,4.0\n")  # a field too many: its values shifted
    assert bench(["law", "fit", "--runs", str(path)]) == 2
    assert "row 1 after the header has 4 field(s), the header 3" in _one_error(capsys)


@pytest.mark.parametrize(("argv", "message"), [
    (["--flops", "-1"], "the compute budget (--flops) must be a positive number, got -1.0"),
    # read as an option, not a number: "argument --flops: expected one argument"
    (["--flops", "-1e15"], "the compute budget (--flops) must be a positive number, got -1000000000000000.0"),
    (["--memory-bits", "nan", "--flops", "1e18"], "the memory budget (--memory-bits) must be a positive number, got nan"),
    (["--flops", "1e18", "--formats", "int4", "dense", "int4"],
     "the candidate formats (--formats) list 'int4' twice; give each label once"),
])
def test_plan_refuses_a_bad_budget_or_a_label_twice_before_the_fit(capsys, no_store_read, argv, message):
    assert bench(["plan", *argv]) == 2
    assert _one_error(capsys) == f"bench: error: {message}"


@pytest.mark.parametrize(("argv", "message"), [
    (["leaderboard", "--min-params", "abc"], "leaderboard: argument --min-params: invalid int value: 'abc'"),
    (["plot", "--out", "figs", "--bootstrap", "x"], "plot: argument --bootstrap: invalid int value: 'x'"),
    (["report"], "report: the following arguments are required: --out"),
    (["plan", "--flops", "lots"], "plan: argument --flops: invalid float value: 'lots'"),
    (["capacity", "--format", "xml"], "capacity: argument --format: invalid choice: 'xml'"),
    (["law", "fit", "--runs", "r.csv", "--exclude-top", "1.5"], "law fit: argument --exclude-top: invalid int value"),
    (["law", "gaps", "--nope"], "law: unrecognized arguments: --nope"),
])
def test_a_bad_option_is_one_error_line(capsys, no_store_read, argv, message):
    assert bench(argv) == 2
    err = _one_error(capsys)
    command = argv[0] if argv[0] != "law" or "unrecognized" in message else " ".join(argv[:2])
    assert err.startswith(f"bench: error: {message}") and err.endswith(f"(the options: bench {command} --help)"), err


def test_help_still_prints_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench(["leaderboard", "--help"])
    assert exit_info.value.code == 0 and "--min-params N" in capsys.readouterr().out

