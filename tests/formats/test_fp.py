"""FP / MX / NVFP4: element grids decoded from bit patterns, round-half-even ties, subnormals, saturation,
MX shared exponents, NVFP4 two-level scales, idempotence, backward masks, errors."""

import pytest
import torch

from cslaws.formats.fp import ELEMENTS, FP, MX, NVFP4, fp_round, mx_scale


def decode_all(name: str) -> list[tuple[float, int]]:
    """Every finite non-negative value of the element format, with its mantissa field, from the bit
    layout of OCP MX v1.0 sec. 5.3 (E4M3: S.1111.111 is NaN; E5M2: exponent 11111 is Inf/NaN)."""
    eb, mb = ELEMENTS[name].ebits, ELEMENTS[name].mbits
    bias = 2 ** (eb - 1) - 1
    out = []
    for e in range(2**eb):
        for m in range(2**mb):
            if name == "e4m3" and e == 15 and m == 7 or name == "e5m2" and e == 31:
                continue
            v = m / 2**mb * 2.0 ** (1 - bias) if e == 0 else (1 + m / 2**mb) * 2.0 ** (e - bias)
            out.append((v, m))
    return out


def brute_round(v: float, name: str) -> float:
    """Nearest representable value, ties to the even mantissa field, saturating beyond the max."""
    grid = decode_all(name)
    a = abs(v)
    best = min(grid, key=lambda gm: (abs(gm[0] - a), gm[1] % 2))
    return best[0] if v >= 0 else -best[0]


@pytest.mark.parametrize("name, maxval", [("e4m3", 448), ("e5m2", 57344), ("e3m2", 28), ("e2m3", 7.5), ("e2m1", 6)])
def test_grid_is_decoded_bit_patterns(name, maxval):
    grid = torch.tensor(sorted({v for v, _ in decode_all(name)}))
    assert grid.max().item() == maxval == ELEMENTS[name].max
    q, _ = fp_round(grid, ELEMENTS[name])
    assert torch.equal(q, grid)  # every representable value is a fixed point
    assert torch.equal(fp_round(-grid, ELEMENTS[name])[0], -grid)
    # midpoints between neighbours are ties; random points too; compare with brute force
    mids = (grid[1:] + grid[:-1]) / 2
    rnd = torch.rand(300, generator=torch.Generator().manual_seed(3)) * maxval * 1.2
    probe = torch.cat([mids, rnd, torch.tensor([maxval * 1.5, maxval * 100.0])])
    probe = torch.cat([probe, -probe])
    ref = torch.tensor([brute_round(v, name) for v in probe.tolist()])
    assert torch.equal(fp_round(probe, ELEMENTS[name])[0], ref)


def test_e2m1_hand_values():
    v = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0, -5.0, -0.2, 0.26])
    expect = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -4.0, -0.0, 0.5])
    assert torch.equal(fp_round(v, ELEMENTS["e2m1"])[0], expect)


def test_e4m3_subnormals_and_saturation():
    s = 2.0**-9  # smallest subnormal
    v = torch.tensor([s, s / 2, 3 * s / 2, 5 * s / 2, 2.0**-6, 464.0, 480.0, 1e6])
    # s/2: tie 0 vs s -> 0 (even); 3s/2: tie s vs 2s -> 2s; 5s/2: tie 2s vs 3s -> 2s; 464: tie 448/480 -> 448
    expect = torch.tensor([s, 0.0, 2 * s, 2 * s, 2.0**-6, 448.0, 448.0, 448.0])
    assert torch.equal(fp_round(v, ELEMENTS["e4m3"])[0], expect)


def test_fp_absmax_scale_maps_extreme_to_max():
    f = FP(element="e2m1", granularity="group", group_size=4)
    x = torch.tensor([[3.0, 1.0, -0.4, 0.6, -12.0, 7.0, 1.0, 0.0]])
    # group 1: scale 3/6 = 0.5 -> v = 6, 2, -0.8, 1.2 -> 6, 2, -1, 1; group 2: scale 2 -> -6, 3.5, .5, 0 -> -6, 4, .5, 0
    expect = torch.tensor([[3.0, 1.0, -0.5, 0.5, -12.0, 8.0, 1.0, 0.0]])
    assert torch.equal(f.compress(x), expect)
    assert f.bits_per_value == 4 + 16 / 4
    assert FP(element="e4m3", granularity="tensor").bits_per_value == 8
    assert FP(element="e3m2").bits_per_value == 6 + 16 / 1024


def test_fp_idempotent_up_to_scale_rounding():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(4))
    for el in ELEMENTS:
        f = FP(element=el)
        q = f.compress(x)
        assert torch.allclose(f.compress(q), q, rtol=1e-6, atol=0), el


def test_mx_shared_exponent_and_elements():
    el = ELEMENTS["e2m1"]
    amax = torch.tensor([5.0, 0.3, 6.0, 8.0, 0.0, 2.0**-130])
    # X = floor(log2 amax) - 2: 0, -4, 0, 1, (zero block) -127, clamped to -127
    assert torch.equal(mx_scale(amax, el), torch.exp2(torch.tensor([0.0, -4.0, 0.0, 1.0, -127.0, -127.0])))
    f = MX(element="e2m1")
    x = torch.zeros(1, 64)
    x[0, :4] = torch.tensor([0.3, -0.1, 0.05, 0.2])  # block 1: scale 1/16 -> 4.8, -1.6, 0.8, 3.2
    x[0, 32:35] = torch.tensor([7.5, -7.9, 1.0])  # block 2: scale 1 -> 7.5 saturates to 6, -7.9 to -6
    q = f.compress(x)
    assert torch.equal(q[0, :4], torch.tensor([4.0, -1.5, 1.0, 3.0]) / 16)
    assert torch.equal(q[0, 32:35], torch.tensor([6.0, -6.0, 1.0]))
    assert q[0, 4:32].abs().sum() == 0 and q[0, 35:].abs().sum() == 0


@pytest.mark.parametrize("el, bits", [("e2m1", 4.25), ("e3m2", 6.25), ("e2m3", 6.25), ("e4m3", 8.25), ("e5m2", 8.25)])
def test_mx_exactly_idempotent_and_bits(el, bits):
    f = MX(element=el)
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(5)) * 10
    q = f.compress(x)
    assert torch.equal(f.compress(q), q)
    assert f.bits_per_value == bits


def test_mx_block_must_divide_row():
    with pytest.raises(ValueError, match="group_size 32 does not divide the row length 48"):
        MX().compress(torch.randn(2, 48))


def test_nvfp4_two_level_scale_by_hand():
    x = torch.zeros(1, 32)
    x[0, :3] = torch.tensor([6.0, 2.9, -1.0])  # block 1: absmax 6 = the tensor's
    x[0, 16:18] = torch.tensor([0.5, -0.07])  # block 2: absmax 0.5
    q = NVFP4().compress(x)
    st = 6.0 / (6 * 448)
    # block 1: s_b = fp8(6 / (6 st)) = 448, scale 448 st = 1 -> 6, 3, -1
    assert torch.allclose(q[0, :3], torch.tensor([6.0, 3.0, -1.0]), rtol=1e-6, atol=0)
    # block 2: 0.5 / (6 st) = 37.33.. -> E4M3 36 (quantum 4: 37.33/4 = 9.33 -> 9), scale 36 st = 36/448
    sb = 36.0 * st
    v = torch.tensor([0.5, -0.07]) / sb  # 6.22 -> 6, -0.871 -> -1
    assert torch.allclose(q[0, 16:18], torch.tensor([6.0, -1.0]) * sb, rtol=1e-6, atol=0)
    assert v[0] > 6
    assert NVFP4().bits_per_value == 4.5


def test_nvfp4_underflowing_block_scale_gives_zeros():
    x = torch.zeros(1, 32)
    x[0, 0] = 1000.0
    x[0, 16] = 1e-6  # 1e-6 / (6 * 1000/2688) = 4.5e-7 < half the smallest E4M3 subnormal 2^-9/2
    q = NVFP4().compress(x)
    assert q[0, 16] == 0 and torch.isfinite(q).all()


def test_trust_mask_uses_local_spacing():
    f = FP(element="e2m1", granularity="tensor", backward="trust", trust=0.5)
    x = torch.tensor([[6.0, 2.4, 0.3, 5.1, 0.05]], requires_grad=True)
    f.compress(x).sum().backward()
    # scale 1; errors 0, .4, .2, 1.1(5.1->6? no: quantum 2 -> round(2.55)=3 -> 6, err .9), .05; spacings 2, 1, .5, 2, .5
    assert torch.equal(x.grad, torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]]))
    x.grad = None
    FP(element="e2m1", granularity="tensor", backward="trust", trust=0.2).compress(x).sum().backward()
    # thresholds .4, .2, .1, .4, .1 against errors 0, .4, .2, .9, .05
    assert torch.equal(x.grad, torch.tensor([[1.0, 0.0, 0.0, 0.0, 1.0]]))
    x.grad = None
    MX(element="e2m1", backward="clipped").compress(torch.cat([x, torch.zeros(1, 27)], 1)).sum().backward()
    assert torch.equal(x.grad, torch.ones(1, 5))  # MX scale 1 for absmax 6: nothing beyond 6


@pytest.mark.parametrize("element", ["e2m1", "e4m3", "e3m2"])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_absmax_scaled_fp_clips_nothing_so_the_clipped_rule_passes_every_gradient(element, granularity):
    """With an absmax scale no value lies beyond the grid's edge. Computed as (absmax / max) * max, the edge came
    out one float32 ulp below the absmax in 2-3% of rows, and the clipped rule cut the largest value's gradient."""
    x = torch.randn(2000, 64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    FP(element=element, granularity=granularity, backward="clipped", backend="torch").compress(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_mx_clipped_mask_drops_saturated():
    x = torch.zeros(1, 32)
    x[0, :2] = torch.tensor([7.9, 3.0])
    x.requires_grad_(True)
    MX(element="e2m1", backward="clipped").compress(x).sum().backward()
    assert x.grad[0, 0] == 0 and x.grad[0, 1] == 1 and x.grad[0, 2:].eq(1).all()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: FP(element="e4m4"), "unknown FP element format 'e4m4'; allowed: e4m3, e5m2, e3m2, e2m3, e2m1"),
        (lambda: MX(element="fp4"), "unknown FP element format 'fp4'"),
        (lambda: MX(backward="none"), "unknown backward rule 'none'"),
        (lambda: NVFP4(trust=-1.0), "trust must be > 0"),
        (lambda: FP(granularity="block"), "unknown granularity 'block'"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nvfp4_outer_scale_per_row_is_each_row_alone() -> None:
    x = torch.zeros(2, 32)
    x[0, :3] = torch.tensor([6.0, 2.9, -1.0])
    x[1, :2] = torch.tensor([0.5, -0.07])
    q = NVFP4(outer_scale="row").compress(x)
    for r in range(2):  # independent reference: the specified (per-tensor) NVFP4 on the row by itself
        assert torch.equal(q[r], NVFP4().compress(x[r : r + 1])[0])
    # row 1 by hand: s_t = 0.5 / 2688, s_b = fp8(0.5 / (6 s_t)) = 448, scale 0.5 / 6: 0.5 -> 6, -0.84 -> -1
    assert torch.allclose(q[1, :2], torch.tensor([0.5, -0.5 / 6]), rtol=1e-6, atol=0)
    assert not torch.equal(q[1], NVFP4().compress(x)[1])  # the tensor's absmax (row 0's) sets the other


def test_nvfp4_outer_scale_storage_bits() -> None:
    assert NVFP4().storage_bits((64, 256)) == pytest.approx(4.5 + 32 / (64 * 256))
    assert NVFP4(outer_scale="row").storage_bits((64, 256)) == pytest.approx(4.5 + 32 / 256)
    assert NVFP4().mixes_rows and not NVFP4(outer_scale="row").mixes_rows


def test_nvfp4_unknown_outer_scale_lists_the_allowed() -> None:
    with pytest.raises(ValueError, match="outer_scale 'token'; allowed: tensor, row"):
        NVFP4(outer_scale="token")
