"""Shared synthetic runs for the law tests: losses drawn from known constants plus log-normal noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.formats.int import Int
from cslaws.laws.capacity import gaussian_mse_of_levels

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


#: The model sizes and tokens-per-parameter ratios of `int_store`.
STORE_SIZES = (1e6, 2e6, 4e6, 8e6, 1.6e7)
STORE_BUDGETS = (5, 20)


def int_spec(bits: int) -> dict:
    return {"class_path": "cslaws.formats.int.Int", "init_args": {"bits": bits, "scale": "gaussian"}}


def int_gmse(bits: int) -> float:
    return gaussian_mse_of_levels(Int(bits=bits).gaussian_grid().numpy())


def int_store(path, effs_of_bits, noise: float = 0.002, w4a4: bool = True) -> ResultsStore:
    """A results store of dense, int2, int3, int4 (and w4a4) runs at every size and budget, losses from the
    law TRUE with eff = prod over a format's parts of effs_of_bits(bits)."""
    formats = {"dense": (None, None), **{f"int{b}": (b, None) for b in (2, 3, 4)}}
    if w4a4:
        formats["w4a4"] = (4, 4)
    rng = np.random.default_rng(5)
    store = ResultsStore(path)
    for label, (w, a) in formats.items():
        eff = float(np.prod([effs_of_bits(b) for b in (w, a) if b is not None]))
        for n in STORE_SIZES:
            for tpp in STORE_BUDGETS:
                store.add_finished(RunRecord(
                    label=label, model=f"m{int(n)}", n_params=int(n), tokens=int(tpp * n),
                    bits_per_value=16.0 if w is None else Int(bits=w).bits_per_value, seed=0, dataset="synthetic",
                    tokenizer="none", code_version="test-1", weight=None if w is None else int_spec(w),
                    activation=None if a is None else int_spec(a), epochs=0.5,
                    config="fit:\n  model:\n    lr: 0.003\n  data:\n    batch_size: 16\n    seq_len: 64\n",
                    final_val_loss=float(law_loss(n, tpp * n, eff) * np.exp(rng.normal(0, noise)))))
    return store


@pytest.fixture(scope="session")
def constant_eff_store(tmp_path_factory) -> Path:
    """`int_store` with constant multipliers int2 0.4, int3 0.6, int4 0.8 (w4a4 0.64) and 0.2% noise."""
    path = tmp_path_factory.mktemp("constant-eff") / "runs.db"
    int_store(path, lambda b: {2: 0.4, 3: 0.6, 4: 0.8}[b])
    return path


@pytest.fixture(scope="session")
def chinchilla_csv() -> Path:
    return DATA / "chinchilla" / "svg_extracted_data.csv"


@pytest.fixture(scope="session")
def quest_csv() -> Path:
    return DATA / "quest" / "runs.csv"
