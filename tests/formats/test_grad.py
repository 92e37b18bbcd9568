"""QuEST's clip bound (a multiple of the outer level) beside the present one (the grid's edge)."""

import math

import pytest
import torch
from scipy.stats import norm

from cslaws.formats.grad import check_clip_scale, clip_bound
from cslaws.formats.int import Int


def test_clip_bound_definitions() -> None:
    edge, outer = torch.tensor(2.0), torch.tensor(1.5)
    assert clip_bound(edge, outer, None) == edge
    assert clip_bound(edge, outer, 1.3) == pytest.approx(1.95)
    for bad in (0.0, -1.0, "1"):
        with pytest.raises(ValueError, match="clip_scale"):
            check_clip_scale(bad)


@pytest.mark.parametrize("clip_scale", [1.25, 1.3])
def test_one_bit_clip_mask_is_quests(clip_scale: float) -> None:
    """QuEST's ClipQuantizer(bits=1): gradient iff |x| <= clip_scale * sqrt(2/pi) * rms(row)."""
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float().requires_grad_()
    Int(1, backward="clipped", clip_scale=clip_scale).compress(x).sum().backward()
    bound = clip_scale * math.sqrt(2 / math.pi) * x.detach().pow(2).mean(-1, keepdim=True).sqrt()
    assert torch.equal(x.grad != 0, x.detach().abs() <= bound)
    cut = (x.grad == 0).double().mean().item()
    assert cut == pytest.approx(2 * norm.sf(clip_scale * math.sqrt(2 / math.pi)), abs=0.005)  # ~30%


def test_present_bound_is_the_cell_edge() -> None:
    x = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)).requires_grad_()
    fmt = Int(1, backward="clipped")
    fmt.compress(x).sum().backward()
    assert (x.grad == 0).double().mean().item() == pytest.approx(2 * norm.sf(2 * math.sqrt(2 / math.pi)), abs=0.005)  # ~11%
    assert fmt.kernel_plan() is not None and Int(1, backward="clipped", clip_scale=1.3).kernel_plan() is None
    with pytest.raises(ValueError, match="Triton"):
        Int(1, backward="clipped", clip_scale=1.3, backend="triton")
