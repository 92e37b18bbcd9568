"""Composed sparse-quantized formats: survivor-only scales, product backward rule, order rule, bits of every
shipped sparse / sparse-quantized / VQ config, and a tiny Llama trained over int4_sp50."""

import math
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from cslaws.formats.base import Format
from cslaws.formats.compose import Compose
from cslaws.formats.dense import Dense
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int, gaussian_clip
from cslaws.formats.linear import CompressedLinear, LinearFactory
from cslaws.formats.sparse import NM, Magnitude
from cslaws.models.llama import SIZES, Llama

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "formats"
INT4_ROW = 4 + 16 / 1024  # 4-bit values, one 16-bit scale per reference row of 1024
LOG2_C42 = math.log2(6) / 4  # the 2:4 pattern: one of C(4, 2) = 6 per group of 4


def parse_config(stem: str) -> tuple[str, Format, Format | None]:
    """The YAML through jsonargparse, as the `bench` CLI parses `model.label/weight/activation`."""
    parser = ArgumentParser()
    parser.add_argument("--model.label", type=str)
    parser.add_argument("--model.weight", type=Optional[Format])
    parser.add_argument("--model.activation", type=Optional[Format])
    cfg = parser.instantiate(parser.parse_path(str(CONFIGS / f"{stem}.yaml")))
    return cfg.model.label, cfg.model.weight, cfg.model.activation


def int4(scale: str = "gaussian", backward: str = "trust") -> Int:
    return Int(bits=4, grid="midrise", scale=scale, granularity="row", backward=backward)


def midrise4(x: torch.Tensor, rms: float) -> torch.Tensor:
    """Reference 4-bit mid-rise rounding at the Gaussian-optimal clip for the given RMS."""
    step = 2 * gaussian_clip(16) * rms / 16
    return (torch.floor(x / step).clamp(-8, 7) + 0.5) * step


ROW = torch.tensor([[0.05, -1.2, 0.3, 0.02, -0.9, 2.5, -0.04, 0.6]])


def test_survivors_are_quantized_with_a_scale_over_the_survivors_only() -> None:
    keep = torch.tensor([[False, True, False, False, True, True, False, True]])  # the four largest
    rms_kept = math.sqrt((1.2**2 + 0.9**2 + 2.5**2 + 0.6**2) / 4)
    expected = torch.where(keep, midrise4(ROW, rms_kept), torch.zeros(()))
    y = Compose([Magnitude(0.5), int4()])(ROW)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    rms_all = ROW.square().mean().sqrt().item()
    assert not torch.allclose(y, torch.where(keep, midrise4(ROW, rms_all), torch.zeros(()))), "scale must ignore pruned"


def test_backward_is_the_product_of_the_sparse_and_quantizer_rules() -> None:
    """Survivors 1, -1, 1, 1, 1, -1, 1, 60 of a 50%-pruned row: RMS over them = sqrt(3607 / 8) = 21.2 and
    clip = 2.68 * 21.2 = 56.9 < 60, so the trust rule cuts only 60; the pruned values get what the
    sparsifier's rule gives them (nothing under "forward", everything under "ste")."""
    row = torch.tensor([[1.0, 0.01, -1.0, 0.02, 1.0, -0.03, 1.0, 0.04, 1.0, 0.05, -1.0, -0.06, 1.0, 0.07, 60.0, 0.08]])
    rms_kept = math.sqrt((7 + 3600) / 8)
    clip = gaussian_clip(16) * rms_kept
    step = 2 * clip / 16
    assert 60 - (clip - step / 2) > step / 2, "60 must sit outside the trust region"
    kept = row.abs() >= 1
    trusted = kept & (row.abs() < 2)
    for backward, pruned_grad in [("forward", 0.0), ("ste", 1.0)]:
        x = row.clone().requires_grad_(True)
        Compose([Magnitude(0.5, backward=backward), int4()])(x).sum().backward()
        expected = torch.where(kept, trusted.float(), torch.full_like(row, pruned_grad))
        assert torch.equal(x.grad, expected), backward


def test_rbbm_mask_passes_through_the_quantizer() -> None:
    """2:4 with rbbm and an STE quantizer: the gradient is the sparsifier's banded mask alone."""
    x = torch.tensor([[0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8]], requires_grad=True)
    Compose([NM(2, 4, backward="rbbm", rbbm_p=0.19), int4(backward="ste")])(x).sum().backward()
    # same hand-built case as tests/formats/test_sparse.py: bands (0.2504, 0.3) and (0.2504, 0.7)
    assert torch.equal(x.grad, torch.tensor([[1.0, 1, 1, 1, 0, 0, 1, 1]]))


def test_progress_reaches_the_sparsifier() -> None:
    sparse = Magnitude(0.5, schedule="cubic", ramp_start=0.0, ramp_end=1.0)
    fmt = Compose([sparse, int4()])
    x = torch.randn(4, 64)
    assert int((fmt(x) == 0).sum()) == 0
    fmt.set_progress(1.0)
    assert sparse.progress == 1.0
    assert int((fmt(x) == 0).sum()) == 128


@pytest.mark.parametrize(
    ("formats", "match"),
    [
        (lambda: [int4(), Magnitude(0.5)], r"sparsifier first in `formats`.*\['Int', 'Magnitude'\]"),
        (lambda: [Magnitude(0.5), NM(2, 4)], r"sparsifier first.*\['Magnitude', 'NM'\]"),
        (lambda: [Magnitude(0.5)], r"exactly \[sparsifier, value format\], got \['Magnitude'\]"),
        (lambda: [int4(), int4()], r"exactly \[sparsifier, value format\], got \['Int', 'Int'\]"),
        (lambda: [Magnitude(0.5), Dense()], r"Dense has no `element_bits`"),
        (lambda: [Magnitude(0.5), Hadamard(int4(), variant="half")], r"keeps a rotated basis"),
        (lambda: [Magnitude(0.5), Compose([NM(2, 4), int4()])], r"cannot nest another Compose"),
    ],
)
def test_bad_compositions_raise(formats, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Compose(formats())


# bits per value, derived by hand from the rules in sparse.py and compose.py
EXPECTED_BITS = {
    "sp50": (0.5 * 16 + 1, None),
    "sp75": (0.25 * 16 + 1, None),
    "2of4": (0.5 * 16 + LOG2_C42, None),
    "int4_sp50": (0.5 * 4 + 16 / 1024 + 1, None),
    "int4_2of4": (0.5 * 4 + 16 / 1024 + LOG2_C42, None),
    "w4a4_sp50": (0.5 * 4 + 16 / 1024 + 1, INT4_ROW),
    "vq2_d2": (math.log2(16) / 2 + 16 / 1024, None),
}


@pytest.mark.parametrize("stem", sorted(EXPECTED_BITS))
def test_shipped_config_parses_and_charges_its_bits(stem: str) -> None:
    label, weight, activation = parse_config(stem)
    assert label == stem
    bits_w, bits_a = EXPECTED_BITS[stem]
    assert weight.bits_per_value == pytest.approx(bits_w, abs=1e-12)
    if bits_a is None:
        assert activation is None
    else:
        assert activation.bits_per_value == pytest.approx(bits_a, abs=1e-12)
    # spec() round-trips through the parser (the results store records it)
    raw = yaml.safe_load((CONFIGS / f"{stem}.yaml").read_text())["model"]["weight"]
    assert weight.spec()["class_path"] == raw["class_path"]


def test_compose_spec_lists_its_formats() -> None:
    spec = Compose([NM(2, 4), int4()]).spec()
    assert spec["class_path"] == "cslaws.formats.compose.Compose"
    paths = [f["class_path"] for f in spec["init_args"]["formats"]]
    assert paths == ["cslaws.formats.sparse.NM", "cslaws.formats.int.Int"]
    assert spec["init_args"]["formats"][0]["init_args"] == {"n": 2, "m": 4, "backward": "forward", "rbbm_p": None}


def test_w4a4_sp50_weights_are_sparse_in_the_rotated_basis() -> None:
    _, weight, activation = parse_config("w4a4_sp50")
    w = torch.randn(64, 256)
    q = weight(w)
    assert int((q == 0).sum()) == w.numel() // 2
    assert weight.rotation_key == activation.rotation_key and weight.keeps_rotated_basis


def test_int4_sp50_trains_a_tiny_llama() -> None:
    torch.manual_seed(0)
    _, weight, activation = parse_config("int4_sp50")
    vocab = 16
    model = Llama(SIZES["nano"], vocab_size=vocab, linear=LinearFactory(weight, activation))
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    assert layers and all(m.weight_format is weight for m in layers)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    starts = torch.randint(0, vocab, (8, 1))
    tokens = (3 * starts + 5 * torch.arange(33)) % vocab  # next token = this one + 5: learnable
    losses = []
    steps = 40
    for step in range(steps):
        weight.set_progress(step / steps)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    for m in layers:  # the layers really compute over 50%-sparse 4-bit weights
        w = weight(m.weight.detach())
        assert int((w == 0).sum()) == w.numel() // 2
        assert all(len(row[row != 0].unique()) <= 16 for row in w)


def test_order_settings_are_checked() -> None:
    from cslaws.formats.blocknm import BlockNM
    from cslaws.formats.vq import VQ

    with pytest.raises(ValueError, match="order"):
        Compose([NM(2, 4), Int(4)], order="sideways")
    with pytest.raises(ValueError, match="defined for order"):
        Compose([NM(2, 4), Int(4)], pruned_backward="value")
    with pytest.raises(ValueError, match="scalar quantizer"):
        Compose([BlockNM(4, 8), VQ(2, 16)], order="quantize_then_prune")
    with pytest.raises(ValueError, match="triton"):
        Compose([NM(2, 4), Int(4)], order="quantize_then_prune", backend="triton")


def test_a_vector_code_is_kept_for_every_vector_of_the_dense_layout() -> None:
    """Pruning saves a scalar quantizer's codes at the pruned positions, but a VQ code stands for `dim`
    positions, survivors and pruned alike: 2:4 over 2-D VQ with 16 points keeps 2 bits per position (a
    4-bit code per pair), plus the row scale and the 2:4 pattern; 1-D VQ is scalar and is charged half."""
    import math

    from cslaws.formats.vq import VQ

    pattern = math.log2(6) / 4
    assert Compose([NM(2, 4), VQ(dim=2, points=16)]).bits_per_value == pytest.approx(2 + 16 / 1024 + pattern)
    assert Compose([NM(2, 4), VQ(dim=1, points=16)]).bits_per_value == pytest.approx(0.5 * 4 + 16 / 1024 + pattern)
    assert Compose([NM(2, 4), VQ(dim=2, points=16)]).storage_bits((8, 32)) == pytest.approx(2 + 16 / 32 + pattern)
