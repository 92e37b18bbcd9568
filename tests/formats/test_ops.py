"""The formats under `torch.compile` and autocast, and the GPU-friendly top-k selection.

- Every shipped format config compiles with `fullgraph=True` (no graph break) and trains with the eager
  losses; one config also through Inductor.
- Under CPU bf16 autocast every shipped config trains a step (forward under autocast, backward outside,
  as Lightning does), and the Hadamard rotation is the float32 one.
- `topk_mask` (a `topk` threshold) keeps exactly the survivors of the former `kthvalue` implementation.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from cslaws.formats import LinearFactory
from cslaws.laws.capacity import load_format_config
from cslaws.formats.hadamard import fwht, rotate
from cslaws.formats.sparse import topk_mask
from cslaws.models.llama import SIZES, Llama

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "formats"
STEMS = sorted(p.relative_to(CONFIGS).with_suffix("").as_posix() for p in CONFIGS.rglob("*.yaml"))
VOCAB, BATCH, SEQ = 64, 2, 32


def factory(stem: str) -> LinearFactory:
    """The (weight, activation) formats of the shipped config `formats/<stem>.yaml`."""
    _, weight, activation = load_format_config(CONFIGS / f"{stem}.yaml")
    return LinearFactory(weight, activation)


def losses(model: torch.nn.Module, step_model: torch.nn.Module, steps: int) -> list[float]:
    """Losses of `steps` SGD steps of `step_model` (which shares `model`'s parameters) on fixed batches."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
        loss = F.cross_entropy(step_model(tokens[:, :-1]).reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def nano(stem: str) -> Llama:
    torch.manual_seed(0)
    return Llama(SIZES["nano"], vocab_size=VOCAB, linear=factory(stem), max_seq_len=SEQ)


def test_every_shipped_config_is_found():
    assert len(STEMS) >= 30 and "int4_sp50" in STEMS and "vq2_d2" in STEMS and "quest/w4a4" in STEMS


#: One config per format class and composition (kept in the quick suite); the rest repeat these formats
#: with other constants and run with `-m slow` (about 2 s each).
QUICK = {"dense", "int4", "fp4", "mxfp4", "nvfp4", "2of4", "int4_sp50", "w4a4_sp50", "vq2_d2", "quest/fp4", "quest/w1a1-noh", "quest/w4a4-4of8"}
COMPILE_CASES = [s if s in QUICK else pytest.param(s, marks=pytest.mark.slow) for s in STEMS]


@pytest.mark.parametrize("stem", COMPILE_CASES)
def test_fullgraph_compile_trains_like_eager(stem):
    torch._dynamo.reset()
    eager = nano(stem)
    ref = losses(eager, eager, 3)
    model = nano(stem)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    got = losses(model, compiled, 3)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert ref[-1] != ref[0]  # the steps changed the weights: the comparison covers the backward


def test_inductor_compiles_a_format_with_eager_losses():
    torch._dynamo.reset()
    eager = nano("w4a4_sp50")
    ref = losses(eager, eager, 2)
    model = nano("w4a4_sp50")
    got = losses(model, torch.compile(model, fullgraph=True), 2)
    assert got == pytest.approx(ref, rel=1e-4)


@pytest.mark.parametrize("stem", STEMS)
def test_every_shipped_config_trains_under_bf16_autocast(stem):
    model = nano(stem)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(tokens[:, :-1])
    assert logits.dtype == torch.bfloat16  # autocast was on
    loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    loss.backward()  # outside autocast, as Lightning runs it
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_rotation_under_autocast_is_the_float32_rotation():
    x = torch.randn(8, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)
    g = torch.randn(8, 256, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = rotate(x, 128)
        y.backward(g)  # backward inside autocast as well
    assert y.dtype == torch.float32
    assert torch.equal(y, fwht(x.detach(), 128))
    assert torch.equal(x.grad, fwht(g, 128))


def test_rotation_without_exact_matmul_is_butterflies_in_float32():
    """With a reduced float32 matmul precision (TF32/bf16) the radix-16 stage is not a matmul: the result
    is still the float32 transform (float64 reference to float32 rounding)."""
    x = torch.randn(4, 256, generator=torch.Generator().manual_seed(2))
    h = torch.tensor(scipy.linalg.hadamard(128) / math.sqrt(128))
    ref = (x.double().reshape(-1, 128) @ h).reshape(x.shape)
    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        y = fwht(x, 128)
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    assert (y.double() - ref).abs().max() < 1e-5  # bf16 products would be ~1e-2 off
    assert torch.allclose(fwht(y, 128), x, atol=1e-5)


def kthvalue_mask(a: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The former implementation: threshold by `kthvalue`, ties to the lowest indices."""
    n = a.shape[dim]
    if k <= 0:
        return torch.zeros_like(a, dtype=torch.bool)
    t = a.kthvalue(n - k + 1, dim=dim, keepdim=True).values
    above, tie = a > t, a == t
    need = k - above.sum(dim=dim, keepdim=True)
    return above | (tie & (tie.cumsum(dim=dim) <= need))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("per_row", [False, True])
def test_topk_mask_keeps_the_kthvalue_survivors(dtype, ties, per_row):
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(33, 200, generator=gen).abs()
    if ties:
        a = (a * 3).round()  # a handful of distinct magnitudes: most values tie with the threshold
    a = a.to(dtype)
    dim = -1 if per_row else 0
    t = a if per_row else a.reshape(-1)
    n = t.shape[dim]
    for k in (0, 1, 7, n // 2, n // 2 + 1, n - 3, n - 1, n):
        got = topk_mask(t, k, dim=dim)
        assert torch.equal(got, kthvalue_mask(t, k, dim)), k
        assert (got.sum(dim) == k).all()
