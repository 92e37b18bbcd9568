"""A nano Llama trains through the Triton kernels (under the interpreter) with the losses of the torch path.

Both runs start from the same weights and see the same batches; the only difference is the formats'
backend. Losses agree to float32 rounding: the kernels reproduce the torch numerics except for the
summation order of the RMS scales and the Hadamard transform (a few ulps), see `kcheck_quantize.py`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cslaws.formats import LinearFactory
from cslaws.formats.fp import MX
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.kernels import interpreting
from cslaws.formats.kernels import triton_ops as ops
from cslaws.models.llama import SIZES, Llama

if not interpreting():
    raise RuntimeError("kcheck_*.py run under TRITON_INTERPRET=1: use tests/formats/kernels/test_interpreter.py")

VOCAB, BATCH, SEQ, STEPS = 64, 4, 16, 4

FACTORIES = {
    "w4a4-hadamard-half-trust": lambda b: LinearFactory(
        Hadamard(Int(bits=4, backward="trust"), variant="half", backend=b),
        Hadamard(Int(bits=4, backward="trust"), variant="half", backend=b),
    ),
    "mxfp4-weights-int8-absmax-activations": lambda b: LinearFactory(
        MX(element="e2m1", backward="trust", backend=b), Int(bits=8, scale="absmax", backend=b)
    ),
}


class Launches:
    """Counts the launches of a kernel (stands in for it in `triton_ops`)."""

    def __init__(self, kernel) -> None:
        self.kernel, self.count = kernel, 0

    def __getitem__(self, grid):
        self.count += 1
        return self.kernel[grid]


def train(factory: LinearFactory) -> list[float]:
    torch.manual_seed(0)
    model = Llama(SIZES["nano"], vocab_size=VOCAB, linear=factory)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(STEPS):
        tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=gen)
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("name", list(FACTORIES))
def test_nano_llama_trains_with_the_torch_losses(name, monkeypatch):
    fwd, bwd = Launches(ops.quantize_fwd_kernel), Launches(ops.masked_bwd_kernel)
    monkeypatch.setattr(ops, "quantize_fwd_kernel", fwd)
    monkeypatch.setattr(ops, "masked_bwd_kernel", bwd)
    ref = train(FACTORIES[name]("torch"))
    assert fwd.count == bwd.count == 0
    ker = train(FACTORIES[name]("triton"))
    # every compressed linear (5 per block, 2 blocks), both sides, every step; straight-through
    # (the int8 activations) needs no backward launch
    sides_with_mask = 2 if "hadamard" in name else 1
    assert fwd.count == STEPS * 2 * 5 * 2
    assert bwd.count == STEPS * 2 * 5 * sides_with_mask
    assert ref[-1] < ref[0]  # it learns (the batches repeat no tokens, but the unigram prior is learnt)
    assert ker == pytest.approx(ref, rel=1e-4)
