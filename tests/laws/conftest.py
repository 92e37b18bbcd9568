"""Shared synthetic runs for the law tests: losses drawn from known constants plus log-normal noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1] / "data"

TRUE = {"A": 400.0, "B": 1500.0, "E": 1.8, "alpha": 0.34, "beta": 0.37}
TRUE_EFF = {"dense": 1.0, "int4": 0.7, "int2": 0.4}
SIZES = [1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9]
TOKENS_PER_PARAM = [10, 20, 40, 80]


def law_loss(n: np.ndarray, d: np.ndarray, eff: np.ndarray | float = 1.0, c: dict = TRUE) -> np.ndarray:
    return c["A"] * (n * eff) ** -c["alpha"] + c["B"] * d ** -c["beta"] + c["E"]


def synthetic(noise: float = 0.003, seed: int = 0, effs: dict[str, float] = TRUE_EFF):
    """(N, D, loss, label) arrays: every format at every size and tokens-per-parameter ratio."""
    rng = np.random.default_rng(seed)
    n, d, lab = [], [], []
    for label in effs:
        for size in SIZES:
            for ratio in TOKENS_PER_PARAM:
                n.append(size)
                d.append(size * ratio)
                lab.append(label)
    n, d = np.array(n), np.array(d)
    eff = np.array([effs[s] for s in lab])
    loss = law_loss(n, d, eff) * np.exp(rng.normal(0.0, noise, len(n)))
    return n, d, loss, np.array(lab, dtype=object)


@pytest.fixture(scope="session")
def chinchilla_csv() -> Path:
    return DATA / "chinchilla" / "svg_extracted_data.csv"


@pytest.fixture(scope="session")
def quest_csv() -> Path:
    return DATA / "quest" / "runs.csv"
