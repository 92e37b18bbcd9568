"""On a CUDA GPU (`pytest -m gpu`; skipped elsewhere, CI never needs one): the Triton kernels compiled for
the device, not interpreted, against the torch path on the same device, and a short training run whose
losses match the torch path's.

Numerics as in `kcheck_quantize.py`: absmax scales bit-exact; RMS scales and rotations differ by the
summation order only, so a value may move by at most one grid step (bf16 output).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cslaws.formats import LinearFactory
from cslaws.formats.compose import Compose
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.sparse import NM, Magnitude
from cslaws.models.llama import SIZES, Llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

EXACT = {
    "int4-absmax": lambda b: Int(bits=4, scale="absmax", backward="trust", backend=b),
    "fp8-row": lambda b: FP(element="e4m3", backward="trust", backend=b),
    "mxfp4": lambda b: MX(backward="trust", backend=b),
    "nvfp4": lambda b: NVFP4(backward="trust", backend=b),
    "int4-2of4": lambda b: Compose([NM(2, 4), Int(bits=4, scale="absmax", backward="trust")], backend=b),
}
ONE_STEP = {
    "int4-rms": lambda b: Int(bits=4, backward="trust", backend=b),
    "w4-hadamard-half": lambda b: Hadamard(Int(bits=4, backward="trust"), variant="half", backend=b),
    "int4-sp50": lambda b: Compose([Magnitude(0.5), Int(bits=4, backward="trust")], backend=b),
}


def both(make, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out = []
    for backend in ("torch", "triton"):
        xi = x.detach().clone().requires_grad_(True)
        q = make(backend).compress(xi)
        q.backward(torch.ones_like(q))
        out += [q.detach(), xi.grad]
    return out[0], out[2], out[1], out[3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(EXACT))
def test_absmax_kernels_bit_exact_on_the_gpu(name, dtype):
    x = torch.randn(300, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(0)).to(dtype)
    q_torch, q_triton, g_torch, g_triton = both(EXACT[name], x)
    assert torch.equal(q_torch, q_triton)
    assert torch.equal(g_torch, g_triton)


@pytest.mark.parametrize("name", list(ONE_STEP))
def test_rms_and_rotation_kernels_within_rare_flips_on_the_gpu(name):
    x = torch.randn(300, 1024, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    q_torch, q_triton, _, _ = both(ONE_STEP[name], x)
    differ = (q_torch != q_triton).float().mean().item()
    assert differ < 1e-3  # boundary flips from a few-ulp summation difference only
    assert torch.allclose(q_torch, q_triton, atol=0.35 * x.abs().max().item() / 8)  # at most about one INT4 step


def test_training_losses_match_the_torch_path_on_the_gpu():
    vocab, steps = 256, 5
    tokens = torch.randint(0, vocab, (steps, 4, 65), device="cuda", generator=torch.Generator("cuda").manual_seed(2))
    losses = {}
    for backend in ("torch", "triton"):
        torch.manual_seed(0)
        fmt = lambda: Hadamard(Int(bits=4, backward="trust"), variant="half", backend=backend)  # noqa: E731
        model = Llama(SIZES["small"], vocab_size=vocab, linear=LinearFactory(fmt(), fmt())).cuda()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        run = []
        for t in tokens:
            loss = F.cross_entropy(model(t[:, :-1]).reshape(-1, vocab), t[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses[backend] = run
    assert losses["triton"] == pytest.approx(losses["torch"], rel=2e-3)
