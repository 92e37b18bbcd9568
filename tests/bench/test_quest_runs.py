"""QuEST's configurations trained through the real `bench fit`, and a CPU-sized grid of them fitted by
`bench law unified` the same way as QuEST's imported runs (`bench store import`)."""

import json
import math
from pathlib import Path

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore
from cslaws.laws.capacity import load_format_config
from cslaws.laws.fit import rho
from cslaws.models.llama import SIZES, non_embedding_params

CONFIGS = Path(__file__).parents[2] / "configs" / "formats" / "quest"


def fit(config: str, size: str, budget: str, store: Path, corpus: list[str]) -> None:
    """One `bench fit` of a shipped config on the small corpus (16-token sequences in batches of 8);
    `budget` is `--model.tokens N` or `--model.tokens_per_param R`."""
    data = ["--data.path", "text", "--data.data_files", f"[{','.join(corpus)}]", "--data.vocab_size", "300",
            "--data.seq_len", "16", "--data.batch_size", "8", "--data.val_sequences", "16", "--data.num_workers", "0"]
    trainer = ["--trainer.logger", "false", "--trainer.enable_model_summary", "false", "--trainer.val_check_interval", "1.0"]
    # a rate of its own: the sizes' defaults are tuned for the CPU study's corpus and budgets, and at 1e-2
    # these few dozen steps on 16-token windows already saturate INT2 to INT4 alike
    assert bench(["fit", "--config", config, "--model.size", size, "--model.lr", "3e-3", *budget.split(), *data, *trainer,
                  "--store.path", str(store)]) == 0


@pytest.mark.parametrize("name", ["w4a4-4of8", "fp4"])
def test_a_quest_config_trains_through_bench_fit(tmp_path, small_corpus, name) -> None:
    """The two QuEST configs built from the new parts (pair 4:8 quantize-then-prune; RMS-scaled FP4) train a
    nano model for 12 steps and record the run with the config's label and format specs."""
    store = tmp_path / "s.db"
    fit(f"formats/quest/{name}.yaml", "nano", f"--model.tokens {12 * 128}", store, small_corpus[:1])
    (run,) = ResultsStore(store).runs()
    label, weight, activation = load_format_config(CONFIGS / f"{name}.yaml")
    assert (run.label, run.model, run.steps, run.status) == (label, "nano", 12, "finished")
    assert (run.weight, run.activation) == (weight.spec(), activation.spec())
    assert math.isfinite(run.final_val_loss) and run.final_val_loss < math.log(300)  # below a uniform guess


#: The grid: dense, the rotated INT2-4 formats (three scalar GMSEs, so the scalar family's F, C and Lsat are
#: all free) and the 4:8 format (the sparse family's one GMSE: its C and Lsat pinned, as for QuEST's runs).
GRID = ["dense", "w2a2", "w3a3", "w4a4", "w4a4-4of8"]
#: Two sizes, each at two budgets: 12-52 steps of 128 tokens.
RATIOS = [0.06, 0.12]


def test_a_cpu_grid_of_quest_configs_is_fitted_like_the_imported_runs(tmp_path, small_corpus, capsys) -> None:
    store = tmp_path / "grid.db"
    for name in GRID:
        for size in ("nano", "micro"):
            for ratio in RATIOS:
                fit(f"formats/quest/{name}.yaml", size, f"--model.tokens_per_param {ratio}", store, small_corpus[:1])
    runs = ResultsStore(store).runs()
    assert len(runs) == len(GRID) * 2 * len(RATIOS)
    capsys.readouterr()
    assert bench(["law", "unified", "--store", str(store), "--fix", "sparse.C=1.39", "sparse.Lsat=1",
                  "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    law, family = out["law"], out["law"]["family"]
    assert family["sparse"]["C"] == 1.39 and family["sparse"]["Lsat"] == 1.0 and set(family) == {"scalar", "sparse"}
    rows = {r["label"]: r for r in out["rows"]}
    assert set(rows) == {load_format_config(CONFIGS / f"{name}.yaml")[0] for name in GRID}
    eff = {}
    for label, row in rows.items():
        assert row["runs"] == 2 * len(RATIOS)
        eff[label] = math.prod(float(rho(g, **family[fam])) for fam, g in row["components"])
        assert row["eff_unified"] == pytest.approx(eff[label], rel=1e-9)
    # rho falls with GMSE, and the sparse part is at most Lsat = 1: more bits never cost capacity, pruning never
    # adds. A few dozen steps barely separate INT3 from INT4 (the fit may saturate rho there); INT2 costs.
    assert eff["w2a2"] < eff["w4a4"] < 1.0
    assert eff["w2a2"] <= eff["w3a3"] <= eff["w4a4"] and eff["w4a4-4:8"] <= eff["w4a4"]
    # the law's stated fit quality, recomputed from its constants and the stored runs
    logs = []
    for r in runs:
        n_eff = r.n_params * eff[r.label]
        pred = law["A"] * n_eff ** -law["alpha"] + law["B"] * r.tokens ** -law["beta"] + law["E"]
        logs.append(math.log(pred / r.final_val_loss))
    assert math.sqrt(sum(x * x for x in logs) / len(logs)) == pytest.approx(law["rmse_log"], rel=1e-6)
    assert law["rmse_log"] < 0.05 and law["runs"] == len(runs)
    assert {r.n_params for r in runs} == {non_embedding_params(SIZES[s]) for s in ("nano", "micro")}
