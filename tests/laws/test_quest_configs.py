"""One config per QuEST label, with GMSEs checked against float64 quadrature at QuEST's own levels."""

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from cslaws.laws.capacity import capacity_lines, load_format_config

RUNS = Path(__file__).parents[1] / "data" / "quest" / "runs.csv"
CONFIGS = Path(__file__).parents[2] / "configs" / "formats" / "quest"
#: QuEST's OPTIMAL_GAUSSIAN_SCALES: the outer level of its b-bit mid-rise grid in units of the RMS.
QUEST_OGS = {1: 0.7978845587140913, 2: 1.4935346200015913, 3: 2.051068354131873, 4: 2.513930578568423}


def quad_mse(levels: np.ndarray) -> float:
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    return sum(integrate.quad(lambda x, q=q: (x - q) ** 2 * norm.pdf(x), a, b, epsabs=1e-13)[0] for q, a, b in zip(levels, edges[:-1], edges[1:]))


def test_every_label_has_one_config() -> None:
    labels = {row["format"] for row in csv.DictReader(RUNS.open())}
    configs = [load_format_config(p)[0] for p in CONFIGS.glob("*.yaml")]
    assert sorted(configs) == sorted(labels)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_int_gmse_against_quest_levels(bits: int) -> None:
    levels = QUEST_OGS[bits] * (2 * np.arange(2**bits) - 2**bits + 1) / (2**bits - 1)
    line = capacity_lines(str(CONFIGS / f"w{bits}.yaml"))[0]
    assert line.method == "integral"
    # the suite's scale is the exact optimum; QuEST's hard-coded one is within 3e-5 of it, so the MSEs agree
    assert line.gmse == pytest.approx(quad_mse(levels), rel=1e-6)
    assert line.gmse <= quad_mse(levels) + 1e-12


def test_fp4_gmse() -> None:
    line = capacity_lines(str(CONFIGS / "fp4.yaml"))[0]
    assert line.gmse == pytest.approx(0.012685, abs=5e-7)
