"""Shared quantizer machinery: the closed-form Gaussian MSE, compress_sparse, the shipped configs' bits,
and a format defined here that trains a tiny Llama through the registry."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from jsonargparse import ArgumentParser, ActionConfigFile
from scipy import integrate, stats
from torch import Tensor

from cslaws.formats import Format, LinearFactory, get_format, register_format
from cslaws.formats.fp import MX, NVFP4, FP
from cslaws.formats.int import Int, gaussian_clip
from cslaws.formats.lloydmax import LloydMax
from cslaws.formats.quant import gaussian_mse
from cslaws.models.llama import SIZES, Llama

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "formats"


def test_gaussian_mse_matches_quadrature_for_arbitrary_levels():
    levels = np.array([-2.0, -0.3, 0.1, 0.9, 3.5])
    edges = np.concatenate([[-np.inf], (levels[1:] + levels[:-1]) / 2, [np.inf]])
    ref = sum(
        integrate.quad(lambda x, c=c: (x - c) ** 2 * stats.norm.pdf(x), a, b)[0] for a, b, c in zip(edges[:-1], edges[1:], levels)
    )
    assert gaussian_mse(levels) == pytest.approx(ref, rel=1e-9)
    assert gaussian_mse(np.array([0.0])) == pytest.approx(1.0)


def test_compress_sparse_scales_over_survivors_and_passes_pruned_gradient():
    x = torch.tensor([[10.0, 1.0, -2.0, 0.5], [3.0, -0.1, 0.2, 9.0]], requires_grad=True)
    keep = torch.tensor([[False, True, True, True], [True, True, False, False]])
    f = Int(bits=3, grid="midtread", scale="absmax", backward="trust", trust=0.1)
    q = f.compress_sparse(x, keep)
    # row 0: absmax of survivors 2 -> step 2/3: 1 -> 4/3, -2 -> -2, 0.5 -> 2/3; row 1: absmax 3 -> step 1
    expect = torch.tensor([[0.0, 4 / 3, -2.0, 2 / 3], [3.0, -0.0, 0.0, 0.0]])
    assert torch.allclose(q, expect, rtol=1e-6, atol=0) and (q[~keep] == 0).all()
    q.sum().backward()
    # survivors: trust 0.1 step -> |q - x| <= 0.0667 (row 0) / 0.1 (row 1); pruned: pass-through
    err_ok = torch.tensor([[True, False, True, False], [True, True, True, True]])
    assert torch.equal(x.grad, (err_ok | ~keep).float())


def test_compress_sparse_gaussian_rms_of_survivors():
    x = torch.tensor([[100.0, 1.0, -2.0, 0.5]])
    keep = torch.tensor([[False, True, True, True]])
    q = Int(bits=2).compress_sparse(x, keep)
    rms = math.sqrt((1 + 4 + 0.25) / 3)
    step = 2 * gaussian_clip(4) * rms / 4
    ref = (torch.clamp(torch.floor(x[0, 1:].double() / step), -2, 1) + 0.5) * step
    assert torch.allclose(q[0, 1:].double(), ref, rtol=1e-6) and q[0, 0] == 0


@pytest.mark.parametrize("fmt", [Int(bits=4), LloydMax(bits=2), FP(element="e2m1"), MX(), NVFP4()], ids=repr)
def test_compress_sparse_all_kept_equals_compress_and_empty_groups_are_zero(fmt):
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fmt.compress_sparse(x, torch.ones_like(x, dtype=torch.bool)), fmt.compress(x))
    keep = torch.zeros_like(x, dtype=torch.bool)
    keep[0, :8] = True
    q = fmt.compress_sparse(x, keep)
    assert torch.isfinite(q).all() and (q[~keep] == 0).all() and (q[keep] != 0).any()


def test_compress_sparse_rejects_bad_mask():
    with pytest.raises(ValueError, match="keep must be a bool tensor of the shape of x"):
        Int().compress_sparse(torch.randn(2, 8), torch.ones(2, 8))


EXPECTED_BITS = {  # (weight, activation); per-row scales at the reference row length 1024
    "dense": (16, 16),
    "int8": (8 + 1 / 64, 16),
    "int4": (4 + 1 / 64, 16),
    "int2": (2 + 1 / 64, 16),
    "int1": (1 + 1 / 64, 16),
    "w8a8": (8 + 1 / 64, 8 + 1 / 64),
    "w4a4": (4 + 1 / 64, 4 + 1 / 64),
    "w2a2": (2 + 1 / 64, 2 + 1 / 64),
    "w1a1": (1 + 1 / 64, 1 + 1 / 64),
    "fp8": (8 + 1 / 64, 8 + 1 / 64),
    "fp4": (4.5, 4.5),
    "mxfp4": (4.25, 4.25),
    "nvfp4": (4.5, 4.5),
}


class _Model:
    def __init__(self, label: str | None = None, weight: Format | None = None, activation: Format | None = None) -> None:
        self.label, self.weight, self.activation = label, weight, activation


def load_config(path: Path) -> _Model:
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(_Model, "model")
    return parser.instantiate(parser.parse_args(["--config", str(path)])).model


@pytest.mark.parametrize("stem", sorted(EXPECTED_BITS))
def test_shipped_config_bits_and_label(stem):
    m = load_config(CONFIGS / f"{stem}.yaml")
    assert m.label == stem
    lf = LinearFactory(m.weight, m.activation)
    assert (lf.weight.bits_per_value, lf.activation.bits_per_value) == pytest.approx(EXPECTED_BITS[stem])


@register_format("test_toy_grid")
class ToyGrid(Format):
    """Rounds to multiples of 1/8 with a straight-through backward: a minimal format from outside the package."""

    def __init__(self, denominator: int = 8) -> None:
        super().__init__()
        self.denominator = denominator

    def compress(self, x: Tensor) -> Tensor:
        return x + (torch.round(x * self.denominator) / self.denominator - x).detach()

    @property
    def bits_per_value(self) -> float:
        return 8.0


def train_losses(weight: Format, activation: Format, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    vocab = 16
    model = Llama(SIZES["nano"], vocab_size=vocab, linear=LinearFactory(weight, activation))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.randint(0, vocab, (8, 1))
    tokens = (starts + torch.arange(33)) % vocab  # next token = this token + 1: learnable
    losses = []
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_toy_format_registered_in_a_test_trains_a_tiny_llama():
    assert get_format("test_toy_grid") is ToyGrid
    losses = train_losses(ToyGrid(), ToyGrid())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("stem", ["w4a4", "nvfp4"])
def test_shipped_quantized_configs_train_a_tiny_llama(stem):
    m = load_config(CONFIGS / f"{stem}.yaml")
    losses = train_losses(m.weight, m.activation)
    assert losses[-1] < 0.5 * losses[0]
