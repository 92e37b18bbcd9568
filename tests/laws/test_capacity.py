"""GMSE capacity: the closed-form Voronoi integral, the sampled estimate, and `bench capacity` against
Gaussian MSEs derived independently here (scipy quadrature and optimisation, closed forms)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, optimize
from scipy.stats import norm
from torch import Tensor

from cslaws.bench.cli import main as bench
from cslaws.formats import Format, register_format
from cslaws.laws.capacity import gaussian_mse_of_levels, gaussian_mse_sampled
from cslaws.laws.cli import main
from cslaws.laws.fit import rho, rho_inverse
from cslaws.models.llama import SIZES


@register_format("toy_levels")
class ToyLevels(Format):
    """Test format: rounds to the nearest of fixed levels (uniform mid-rise, 2^bits levels of `step`)."""

    def __init__(self, bits: int = 2, step: float = 0.9956) -> None:
        super().__init__()
        self.bits = bits
        self.step = step

    def _levels(self) -> Tensor:
        half = 2 ** (self.bits - 1)
        return (torch.arange(-half, half, dtype=torch.float64) + 0.5) * self.step

    def compress(self, x: Tensor) -> Tensor:
        half = 2 ** (self.bits - 1)
        return ((x / self.step).floor().clamp(-half, half - 1) + 0.5) * self.step

    @property
    def bits_per_value(self) -> float:
        return float(self.bits)

    def gaussian_grid(self) -> Tensor | None:
        return self._levels()


@register_format("toy_levels_sampled")
class ToyLevelsSampled(ToyLevels):
    """The same quantizer without a Gaussian grid: its GMSE must be sampled."""

    def gaussian_grid(self) -> Tensor | None:
        return None


def _quad_mse(levels: np.ndarray) -> float:
    """E[(X - q(X))^2] by adaptive quadrature on each Voronoi cell."""
    q = np.sort(levels)
    edges = np.concatenate([[-np.inf], (q[1:] + q[:-1]) / 2, [np.inf]])
    return sum(integrate.quad(lambda x, c=c: (x - c) ** 2 * norm.pdf(x), lo, hi, epsabs=1e-13, epsrel=1e-12)[0]
               for c, lo, hi in zip(q, edges[:-1], edges[1:]))


def _optimal_uniform_mse(bits: int) -> float:
    """Gaussian MSE of the best symmetric uniform 2^bits-level mid-rise quantizer (Max 1960, table)."""
    half = 2 ** (bits - 1)
    levels = lambda step: (np.arange(-half, half) + 0.5) * step  # noqa: E731
    res = optimize.minimize_scalar(lambda s: _quad_mse(levels(s)), bounds=(0.05, 3.0), method="bounded",
                                   options={"xatol": 1e-10})
    return float(res.fun)


def _capacity_json(capsys, *names: str) -> list[dict]:
    assert main(["capacity", *names, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def _write_config(tmp_path, label: str, weight: str, activation: str | None = None) -> str:
    text = f"model:\n  label: {label}\n  weight:\n{weight}"
    if activation is not None:
        text += f"  activation:\n{activation}"
    path = tmp_path / f"{label}.yaml"
    path.write_text(text)
    return str(path)


def test_voronoi_integral_matches_quadrature():
    rng = np.random.default_rng(0)
    for size in (2, 5, 16):
        levels = np.sort(rng.normal(size=size) * 1.5)
        assert gaussian_mse_of_levels(levels) == pytest.approx(_quad_mse(levels), rel=1e-9)
    # One level at 0: the MSE is E[X^2] = 1.
    assert gaussian_mse_of_levels(np.array([0.0])) == pytest.approx(1.0, rel=1e-12)


def test_sampled_gmse_agrees_with_integral_within_its_error():
    fmt = ToyLevelsSampled(bits=2, step=0.9956)
    value, se = gaussian_mse_sampled(fmt)
    exact = gaussian_mse_of_levels(ToyLevels(bits=2, step=0.9956).gaussian_grid().numpy())
    assert 0 < se < 6e-4 * exact  # 3 significant digits
    assert abs(value - exact) < 4 * se


def test_capacity_cli_on_toy_formats(capsys):
    integral, sampled = _capacity_json(capsys, "toy_levels", "toy_levels_sampled")
    exact = _quad_mse(ToyLevels().gaussian_grid().numpy())
    assert integral["method"] == "integral" and integral["gmse"] == pytest.approx(exact, rel=1e-9)
    assert integral["gmse_se"] == 0.0
    assert sampled["method"] == "sampled" and sampled["gmse"] == pytest.approx(exact, rel=1e-3)
    for line in (integral, sampled):
        assert line["bits"] == 2.0
        assert line["rho"] == pytest.approx(float(rho(line["gmse"])), rel=1e-12)
        assert line["rho_per_bit"] == pytest.approx(line["rho"] / 2.0, rel=1e-12)
        assert line["floor"] == pytest.approx(2.0**-4, rel=1e-12)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_capacity_reproduces_optimal_uniform_int(capsys, tmp_path, bits):
    """Int with Gaussian-optimal scale = the best uniform quantizer: same MSE to 3 significant digits."""
    weight = ("    class_path: cslaws.formats.int.Int\n"
              f"    init_args: {{bits: {bits}, grid: midrise, scale: gaussian, granularity: row}}\n")
    (line,) = _capacity_json(capsys, _write_config(tmp_path, f"int{bits}", weight))
    assert line["name"] == f"int{bits}"
    assert line["gmse"] == pytest.approx(_optimal_uniform_mse(bits), rel=1e-3)
    if bits == 1:  # sign quantizer at +-sqrt(2/pi): 1 - 2/pi
        assert line["gmse"] == pytest.approx(1 - 2 / math.pi, rel=1e-3)


@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_capacity_reproduces_magnitude_pruning_closed_form(capsys, tmp_path, sparsity):
    """Pruning the fraction s of smallest |x| of N(0,1) zeroes |x| < t, t = Phi^-1((1+s)/2), so
    GMSE = E[X^2; |X| < t] = int_{-t}^{t} x^2 phi(x) dx = (2 Phi(t) - 1) - 2 t phi(t) = s - 2 t phi(t)."""
    t = norm.ppf((1 + sparsity) / 2)
    expected = sparsity - 2 * t * norm.pdf(t)
    weight = f"    class_path: cslaws.formats.sparse.Magnitude\n    init_args: {{sparsity: {sparsity}}}\n"
    (line,) = _capacity_json(capsys, _write_config(tmp_path, f"sp{int(sparsity * 100)}", weight))
    assert line["method"] == "sampled"
    assert line["gmse_se"] < 6e-4 * expected
    assert abs(line["gmse"] - expected) < 4 * line["gmse_se"]
    assert line["gmse"] == pytest.approx(expected, rel=1e-3)


def test_weight_and_activation_config_multiplies_capacities(capsys, tmp_path):
    w = "    class_path: cslaws.formats.int.Int\n    init_args: {bits: 4}\n"
    a = "    class_path: cslaws.formats.int.Int\n    init_args: {bits: 2}\n"
    weight, activation, product = _capacity_json(capsys, _write_config(tmp_path, "w4a2", w, a))
    assert (weight["name"], activation["name"], product["name"]) == ("w4a2/weight", "w4a2/activation", "w4a2/product")
    assert product["rho"] == pytest.approx(weight["rho"] * activation["rho"], rel=1e-12)
    assert product["bits"] is None and product["gmse_se"] is None
    assert float(rho(product["gmse"])) == pytest.approx(product["rho"], rel=1e-9)
    assert product["gmse"] == pytest.approx(float(rho_inverse(product["rho"])), rel=1e-12)


def test_shipped_config_by_path_under_configs(capsys):
    (line,) = _capacity_json(capsys, "formats/int4.yaml")
    assert line["name"] == "int4"
    assert line["gmse"] == pytest.approx(_optimal_uniform_mse(4), rel=1e-3)


def test_no_names_lists_registered_formats(capsys, monkeypatch):
    import cslaws.laws.capacity as cap
    from cslaws.formats import FORMATS

    # A few registered formats keep this quick; "hadamard" needs an inner format, so it cannot be listed.
    monkeypatch.setattr(cap, "FORMATS", {k: FORMATS[k] for k in ("dense", "toy_levels", "int", "hadamard")})
    assert main(["capacity", "--format", "json"]) == 0
    captured = capsys.readouterr()
    names = {line["name"] for line in json.loads(captured.out)}
    assert names == {"dense", "toy_levels", "int"}
    dense = next(line for line in json.loads(captured.out) if line["name"] == "dense")
    assert dense["gmse"] == 0.0 and dense["rho"] == 1.0
    assert "need arguments" in captured.err and "hadamard" in captured.err


def test_unknown_format_is_a_clear_error(capsys):
    assert bench(["capacity", "no_such_format"]) == 2
    err = capsys.readouterr().err
    assert "unknown format 'no_such_format'" in err and "toy_levels" in err and "formats/int4.yaml" in err


@pytest.mark.parametrize("name, needed", [("compose", "formats"), ("hadamard", "format")])
def test_a_format_that_needs_arguments_is_a_clear_error(capsys, name, needed):
    # a wrapper's inner formats have no default: built bare it was a TypeError traceback
    assert bench(["capacity", name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: format '{name}' needs arguments ({needed})") and "Traceback" not in err
    assert "formats/w4a4.yaml" in err


def test_text_table_has_every_column(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["capacity", "toy_levels"]) == 0
    out = capsys.readouterr().out
    for column in ("GMSE", "bits/value", "rho", "rho/bit", "floor 2^-2b", "toy_levels"):
        assert column in out


def test_half_hadamard_error_is_measured_in_the_rotated_basis():
    """A rotation is orthogonal and maps i.i.d. Gaussian rows to i.i.d. Gaussian rows, so a rotated
    format's GMSE equals its inner format's, also when the output stays in the rotated basis."""
    from cslaws.formats.hadamard import Hadamard
    from cslaws.laws.capacity import gmse

    exact = gaussian_mse_of_levels(ToyLevels().gaussian_grid().numpy())
    for variant in ("half", "full"):
        value, se, method = gmse(Hadamard(format=ToyLevelsSampled(), block=128, variant=variant))
        assert method == "sampled"
        assert abs(value - exact) < 4 * se and se < 6e-4 * exact


def test_rho_of_useless_format_is_zero():
    assert rho(1.0) == 0.0 and rho(1.9) == 0.0


def test_components_split_compositions_and_refuse_undeclared_families():
    from cslaws.formats import make_format
    from cslaws.formats.compose import Compose
    from cslaws.formats.hadamard import Hadamard
    from cslaws.formats.int import Int
    from cslaws.formats.sparse import NM, Magnitude
    from cslaws.laws.capacity import components_of

    int4 = Int(bits=4, granularity="row")
    exact = gaussian_mse_of_levels(int4.gaussian_grid().numpy())
    assert components_of(int4) == [("scalar", exact)]
    assert components_of(make_format("dense")) == []
    # Rotating a Gaussian leaves it Gaussian: a rotated quantizer is one scalar part of the same error.
    (fam, g), = components_of(Hadamard(Int(bits=4, granularity="row")))
    assert fam == "scalar" and g == pytest.approx(exact, rel=0.01)
    # A composition is its parts, in order, each with its own error (half of the Gaussian's values
    # pruned costs the closed form s - 2 t phi(t), t = Phi^-1((1 + s) / 2)).
    t = norm.ppf(0.75)
    parts = components_of(Compose([NM(n=2, m=4), Int(bits=4, granularity="row")]))
    assert [f for f, _ in parts] == ["sparse", "scalar"] and parts[1][1] == exact
    unstructured = components_of(Compose([Magnitude(sparsity=0.5), Int(bits=4, granularity="row")]))
    assert unstructured[0][1] == pytest.approx(0.5 - 2 * t * norm.pdf(t), rel=0.005)
    with pytest.raises(ValueError, match=r"\['ToyLevels'\] declare no unified-law family"):
        components_of(ToyLevels())


def test_capacity_of_a_composed_config_multiplies_its_parts(capsys):
    """int4_sp50: rho is rho(GMSE of 50% magnitude pruning) x rho(GMSE of INT4), both derived here."""
    from cslaws.formats.int import Int

    assert main(["capacity", "formats/int4_sp50.yaml", "--format", "json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    t = norm.ppf(0.75)
    pruned = 0.5 - 2 * t * norm.pdf(t)
    int4 = gaussian_mse_of_levels(Int(bits=4, granularity="row").gaussian_grid().numpy())
    assert line["rho"] == pytest.approx(float(rho(pruned) * rho(int4)), rel=0.005)
    assert line["method"] == "sampled; rho of 2 parts" and line["bits"] == pytest.approx(3.015625)
    assert line["rho"] < float(rho(line["gmse"])), "the product is not rho of the composite GMSE"


def test_model_size_charges_bits_on_that_models_rows(capsys):
    """int4 with row scales on nano: rows of 32 (qkv, proj, gate, up) and 96 (down); counted by hand."""
    assert main(["capacity", "formats/int4.yaml", "--model-size", "nano", "--format", "json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)
    per_block = {32: 3 * 32 * 32 + 32 * 32 + 2 * 96 * 32, 96: 32 * 96}  # values in rows of each width
    expected = 4 + sum(v * 16 / row for row, v in per_block.items()) / sum(per_block.values())
    assert line["bits"] == pytest.approx(expected, rel=1e-12) and expected == pytest.approx(4.4231, abs=1e-4)
    assert main(["capacity", "formats/int4.yaml", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["bits"] == 4 + 16 / 1024
    assert bench(["capacity", "formats/int4.yaml", "--model-size", "huge"]) == 2
    assert f"--model-size 'huge' is not a model size; allowed: {', '.join(SIZES)}" in capsys.readouterr().err


@pytest.mark.parametrize("init_args, names", [("{bitz: 3}", ["Option 'bitz' is not accepted", '"weight"']),
                                              ("{bits: 99}", ["model.weight (Int)", "got 99"])])
def test_a_bad_format_config_names_the_file_and_the_key(capsys, tmp_path, init_args, names):
    path = _write_config(tmp_path, "typo", f"    class_path: cslaws.formats.int.Int\n    init_args: {init_args}\n")
    assert bench(["capacity", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bench: error: {path}: model") and "Traceback" not in err
    assert all(name in err for name in names), err


@pytest.mark.parametrize("option, value", [("--F", "nan"), ("--Lsat", "inf"), ("--F", "-1"), ("--C", "0"), ("--Lsat", "1e300"),
                                           ("--C", "0.009")])
def test_rho_constants_must_lie_in_the_range_a_fit_searches(capsys, option, value):
    assert bench(["capacity", "int", option, value]) == 2
    assert f"{option}: unified-law constants lie in [0.01, 100] (the range a fit searches), got {float(value)}" in capsys.readouterr().err


def test_the_readmes_capacity_examples_run(capsys):
    """Every `bench capacity` command of README.md that names formats (one mention names only the rho options)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    commands = [args.split() for args in re.findall(r"bench capacity\s+([^`#]*)", readme) if args[:1].isalpha()]
    assert len(commands) >= 2
    for args in commands:
        assert main(["capacity", *args, "--format", "json"]) == 0, (args, capsys.readouterr().err)
    capsys.readouterr()


@pytest.mark.parametrize("group_size", [16, 32])
def test_per_group_scales_are_sampled_not_integrated(group_size):
    """A group's RMS of a few dozen values is not sigma: the quantizer that runs rounds to the unit levels
    times each group's own RMS, which errs less than the integral at sigma says. The GMSE must be that
    quantizer's (an independent float64 simulation here), not the integral's."""
    from cslaws.formats.int import Int
    from cslaws.laws.capacity import gmse

    fmt = Int(bits=4, granularity="group", group_size=group_size)
    levels = Int(bits=4, granularity="row").gaussian_grid().numpy()
    x = np.random.default_rng(7).standard_normal((40_000, group_size))
    scaled = levels[None, None, :] * np.sqrt((x**2).mean(axis=1))[:, None, None]
    nearest = np.take_along_axis(scaled[:, 0, :], np.abs(x[:, :, None] - scaled).argmin(axis=2), axis=1)
    simulated = ((nearest - x) ** 2).mean()
    value, se, method = gmse(fmt)
    assert method == "sampled" and value == pytest.approx(simulated, abs=4 * se + 0.01 * simulated)
    assert value < 0.95 * gaussian_mse_of_levels(levels), "the integral at sigma was taken for per-group scales"


def test_a_pruning_schedule_is_measured_at_its_end():
    """Built from its spec, a gradually pruned format is at progress 0 (dense); its GMSE is that of the
    sparsity it ends at, which its bits charge: the same as the constant schedule's."""
    from cslaws.formats.sparse import Magnitude
    from cslaws.laws.capacity import gmse

    cubic = Magnitude(sparsity=0.5, schedule="cubic")
    t = norm.ppf(0.75)  # pruning the smallest half of a Gaussian costs s - 2 t phi(t), s = 0.5
    assert gmse(cubic)[0] == pytest.approx(0.5 - 2 * t * norm.pdf(t), rel=0.005)
    assert gmse(cubic)[0] == gmse(Magnitude(sparsity=0.5))[0]
    assert cubic.current_sparsity == 0.0, "measuring it moved the format's own schedule"


def test_building_a_format_leaves_its_spec_as_it_was():
    """jsonargparse turns the nested dicts of what it parses into Namespaces; a stored spec must stay data."""
    from cslaws.formats.compose import Compose
    from cslaws.formats.int import Int
    from cslaws.formats.sparse import NM
    from cslaws.laws.capacity import format_from_spec

    spec = Compose([NM(2, 4), Int(bits=4)]).spec()
    before = json.dumps(spec, sort_keys=True)
    assert isinstance(format_from_spec(spec), Compose)
    assert json.dumps(spec, sort_keys=True) == before
