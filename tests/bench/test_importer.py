"""`bench store import`: QuEST's 104 runs into a store, each with its label's config, then fitted by
`bench law unified` (all 104: the sparse family's one format with its C and Lsat pinned)."""

import csv
import json
from pathlib import Path

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore
from cslaws.laws.capacity import load_format_config

RUNS = Path(__file__).parents[1] / "data" / "quest" / "runs.csv"
CONFIGS = Path(__file__).parents[2] / "configs" / "formats" / "quest"


def test_imports_every_run_with_its_config(tmp_path: Path) -> None:
    store = tmp_path / "q.db"
    assert bench(["store", "import", "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(store)]) == 0
    runs = ResultsStore(store).runs()
    rows = list(csv.DictReader(RUNS.open()))
    assert len(runs) == len(rows) == 104
    specs = {}
    for f in CONFIGS.glob("*.yaml"):
        label, w, a = load_format_config(f)
        specs[label] = (None if w is None else w.spec(), None if a is None else a.spec())
    for r in runs:
        k = int(r.source.rsplit(" ", 1)[1])
        row = rows[k - 1]
        assert r.source == f"imported: runs.csv row {k}"
        assert (r.label, r.n_params, r.tokens, r.final_val_loss) == (row["format"], int(row["N"]), int(row["D"]), float(row["loss"]))
        assert (r.weight, r.activation) == specs[r.label]
    assert len({r.comparability for r in runs}) == 1
    dense = next(r for r in runs if r.label == "dense")
    assert dense.bits_per_value == 16.0 and {r.model for r in runs} == {"30M", "50M", "100M", "200M", "430M", "800M"}


def test_exclude_and_unknown_labels(tmp_path: Path, capsys) -> None:
    store = tmp_path / "q.db"
    assert bench(["store", "import", "--runs", str(RUNS), "--configs", str(CONFIGS), "--store", str(store),
                  "--exclude", "w4a4-4:8", "dense"]) == 0
    assert len(ResultsStore(store).runs()) == 104 - 6 - 6
    bad = tmp_path / "bad.csv"
    bad.write_text("N,D,loss,format\n1000,2000,3.0,w9a9\n")
    assert bench(["store", "import", "--runs", str(bad), "--configs", str(CONFIGS), "--store", str(tmp_path / "b.db")]) == 2
    assert "label 'w9a9' has no config" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists() or not ResultsStore(tmp_path / "b.db").runs()


def test_all_104_imported_runs_fit_the_unified_law(tmp_path: Path, capsys) -> None:
    """`w4a4-4:8` alone is the sparse family (one GMSE): its C and Lsat pinned, its F is fitted with the rest."""
    store = tmp_path / "q.db"
    assert bench(["store", "import", "--runs", str(RUNS), "--configs", "formats/quest/", "--store", str(store)]) == 0
    capsys.readouterr()
    assert bench(["law", "unified", "--store", str(store), "--fix", "sparse.C=1.39", "sparse.Lsat=1", "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    law = out["law"]
    assert law["runs"] == 104 and sum(r["runs"] for r in out["rows"]) == 104
    assert (law["family"]["sparse"]["C"], law["family"]["sparse"]["Lsat"]) == (1.39, 1.0)
    assert law["rmse_log"] < 0.02  # the law explains QuEST's losses to within 2% (RMS)
    eff = {r["label"]: r["eff_unified"] for r in out["rows"]}
    assert eff["w1a1"] < eff["w2a2"] < eff["w3a3"] < eff["w4a4"] < eff["w8a8"] < 1.0 and eff["w4a4-4:8"] < eff["w4a4"]
