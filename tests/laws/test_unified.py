"""`bench law unified`: rho's family constants fitted over a results store whose runs were drawn from
known constants, with each format rebuilt from its stored spec and split into its capacity parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.formats.base import Format
from cslaws.formats.compose import Compose
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.sparse import Magnitude
from cslaws.laws.capacity import gmse
from cslaws.laws.cli import main
from cslaws.laws.fit import rho
from cslaws.laws.unified import parse_fixed

from conftest import TRUE, law_loss

SCALAR = {"F": 0.45, "C": 1.3, "Lsat": 1.0}
SPARSE = {"F": 0.7, "C": 1.0, "Lsat": 1.0}
SIZES = [1e7, 2e7, 5e7, 1e8, 2e8, 5e8]
RATIOS = [10, 40]


def _formats() -> dict[str, tuple[Format | None, Format | None]]:
    q = lambda bits: Int(bits=bits, granularity="row")  # noqa: E731
    return {
        "dense": (None, None),
        "int4": (q(4), None),
        "int3": (q(3), None),
        "int2": (q(2), None),
        "sp50": (Magnitude(sparsity=0.5), None),
        "sp75": (Magnitude(sparsity=0.75), None),
        "int4_sp50": (Compose([Magnitude(sparsity=0.5), q(4)]), None),
        "w4a4": (Hadamard(q(4), variant="half"), Hadamard(q(4), variant="half")),
    }


def _true_eff(weight: Format | None, activation: Format | None) -> float:
    """Independent of the code under test's decomposition: parts named by hand for each kind of format."""
    eff = 1.0
    for fmt in (weight, activation):
        if fmt is None:
            continue
        parts = [fmt.sparsifier, fmt.value] if isinstance(fmt, Compose) else [fmt]
        for p in parts:
            consts = SPARSE if isinstance(p, Magnitude) else SCALAR
            eff *= float(rho(gmse(p)[0], **consts))
    return eff


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("unified") / "results.db"
    store = ResultsStore(path)
    rng = np.random.default_rng(3)
    for label, (w, a) in _formats().items():
        eff = _true_eff(w, a)
        for n in SIZES:
            for ratio in RATIOS:
                loss = float(law_loss(np.array(n), np.array(n * ratio), eff)) * math.exp(rng.normal(0.0, 0.001))
                store.add_finished(RunRecord(
                    label=label, model=f"m{int(n)}", n_params=int(n), tokens=int(n * ratio),
                    bits_per_value=16.0 if w is None else w.bits_per_value, seed=0, dataset="synthetic",
                    tokenizer="none", code_version="test", config="", weight=None if w is None else w.spec(),
                    activation=None if a is None else a.spec(), final_val_loss=loss,
                ))
    return path


def _json(capsys, argv: list[str]):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_unified_fit_recovers_family_constants(capsys, store_path):
    out = _json(capsys, ["law", "unified", "--store", str(store_path), "--fix", "Lsat=1", "--format", "json"])
    family = out["law"]["family"]
    assert set(family) == {"scalar", "sparse"}
    for name, true in (("scalar", SCALAR), ("sparse", SPARSE)):
        assert family[name]["Lsat"] == pytest.approx(1.0, abs=1e-12)
        assert family[name]["F"] == pytest.approx(true["F"], rel=0.1)
        assert family[name]["C"] == pytest.approx(true["C"], rel=0.15)
    assert out["law"]["alpha"] == pytest.approx(TRUE["alpha"], rel=0.05)
    rows = {r["label"]: r for r in out["rows"]}
    formats = _formats()
    assert set(rows) == set(formats)
    for label, (w, a) in formats.items():
        row = rows[label]
        # The unified eff is the product of rho over the parts with the fitted constants...
        by_hand = math.prod(float(rho(g, **family[fam])) for fam, g in row["components"])
        assert row["eff_unified"] == pytest.approx(by_hand, rel=1e-9)
        # ...and both it and the free multiplier find the eff the runs were drawn from.
        assert row["eff_unified"] == pytest.approx(_true_eff(w, a), rel=0.03)
        assert row["eff_free"] == pytest.approx(_true_eff(w, a), rel=0.03)
        assert row["runs"] == len(SIZES) * len(RATIOS)
    assert [fam for fam, _ in rows["int4_sp50"]["components"]] == ["sparse", "scalar"]
    assert [fam for fam, _ in rows["w4a4"]["components"]] == ["scalar", "scalar"]
    assert rows["dense"]["components"] == [] and rows["dense"]["eff_unified"] == 1.0


def test_unified_text_output_with_intervals(capsys, store_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["law", "unified", "--store", str(store_path), "--fix", "Lsat=1", "--bootstrap", "5"]) == 0
    out = capsys.readouterr().out
    assert "scalar" in out and "sparse" in out and "1 (fixed)" in out
    assert "sparse(0.07" in out and "bench capacity --F" in out


def test_unidentified_family_names_what_to_add_or_pin(capsys, store_path):
    # Two sparse GMSEs cannot determine three sparse constants.
    assert bench(["law", "unified", "--store", str(store_path)]) == 2
    err = capsys.readouterr().err
    assert "family 'sparse' has formats at 2 distinct GMSE value(s)" in err and "--fix" in err


@pytest.mark.parametrize("bad,match", [(["Q=1"], "NAME one of F, C, Lsat; got 'Q=1'"), (["Lsat"], "got 'Lsat'"),
                                       (["C=x"], "'x' is not a number"), (["F=-1"], r"lie in \[0.01, 100\] \(the range a fit searches\), got -1"),
                                       (["Lsat=1", "C=inf"], "--fix 'C=inf': .* got inf"),
                                       # it was fitted: numpy overflowed, and effs printed with 300 digits
                                       (["Lsat=1e300", "C=1"], r"--fix 'Lsat=1e300': unified-law constants lie in \[0.01, 100\]"),
                                       (["Lsat=1e-300"], r"--fix 'Lsat=1e-300': .* got 1e-300"),
                                       (["Lsat=1e400"], "--fix 'Lsat=1e400': .* got inf"),
                                       (["sparse.F=nan"], "--fix 'sparse.F=nan': .* got nan"),
                                       (["Lsat=1", "Lsat=2"], "--fix 'Lsat=2': Lsat is already pinned to 1; give each"),
                                       (["sparse.C=1", "sparse.C=1"], "sparse.C is already pinned")])
def test_fix_rejects_bad_pins(bad, match):
    with pytest.raises(ValueError, match=match):
        parse_fixed(bad)


def test_family_scoped_pins_fit_the_other_constants_of_that_family_only(capsys, store_path):
    """`sparse.C=1 sparse.Lsat=1` pins two sparse constants (its true values) and nothing in `scalar`:
    sparse F is fitted from the two sparse GMSEs, scalar keeps its three constants free."""
    out = _json(capsys, ["law", "unified", "--store", str(store_path), "--fix", "sparse.C=1", "sparse.Lsat=1",
                         "--format", "json"])
    family = out["law"]["family"]
    assert family["sparse"]["C"] == pytest.approx(1.0, abs=1e-12)
    assert family["sparse"]["Lsat"] == pytest.approx(1.0, abs=1e-12)
    assert family["sparse"]["F"] == pytest.approx(SPARSE["F"], rel=0.05)
    assert abs(family["scalar"]["Lsat"] - 1.0) > 1e-9  # free: not held at a bound
    assert out["fixed"] == {"sparse.C": 1.0, "sparse.Lsat": 1.0}


def test_family_pin_overrides_the_global_one_and_names_a_family_the_runs_have(capsys, store_path):
    out = _json(capsys, ["law", "unified", "--store", str(store_path), "--fix", "Lsat=1", "sparse.Lsat=0.9",
                         "--format", "json"])
    assert out["law"]["family"]["sparse"]["Lsat"] == pytest.approx(0.9, abs=1e-12)
    assert out["law"]["family"]["scalar"]["Lsat"] == pytest.approx(1.0, abs=1e-12)
    assert bench(["law", "unified", "--store", str(store_path), "--fix", "Lsat=1", "vq.C=1"]) == 2
    assert "--fix vq.C=1: no format of the selected runs is of family 'vq'; families: scalar, sparse" in \
        capsys.readouterr().err


@pytest.mark.parametrize("bad", [".C=1", "sparse.Q=1", "sparse.C"])
def test_fix_rejects_bad_family_pins(bad):
    with pytest.raises(ValueError, match="NAME=VALUE or FAMILY.NAME=VALUE"):
        parse_fixed([bad])
