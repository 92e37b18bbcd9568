"""The compressed linear layer: storage bits on real shapes (each format's `storage_bits(shape)` and the model
average `storage_bits`, checked against costs counted by hand from the layer shapes), the pairing of its
two formats, and the probe of its formats on the device they will run on (`check_runs_on`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cslaws.formats.compose import Compose
from cslaws.formats.dense import Dense
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.linear import CompressedLinear, LinearFactory, check_runs_on, storage_bits
from cslaws.formats.sparse import NM, Magnitude
from cslaws.formats.vq import VQ
from cslaws.laws.capacity import load_format_config
from cslaws.models.llama import SIZES, Llama


def _nano_layers() -> list[tuple[int, int]]:
    """(out, in) of every block linear of `nano` (d_model 32, SwiGLU width 96, 2 layers), by hand."""
    d, ff = 32, 96
    assert SIZES["nano"].d_model == d and SIZES["nano"].d_ff == ff and SIZES["nano"].n_layer == 2
    return [(3 * d, d), (d, d), (ff, d), (ff, d), (d, ff)] * 2


def test_int4_row_scales_on_nano_by_hand() -> None:
    model = Llama(SIZES["nano"], 64, LinearFactory(Int(bits=4), Int(bits=4)))
    layers = _nano_layers()
    values = sum(o * i for o, i in layers)
    # 4 bits a value plus one 16-bit scale per row of the layer's own input width
    weight = sum(o * i * (4 + 16 / i) for o, i in layers) / values
    # activations: one 16-bit scale per token row of in_features values, weighted by in_features
    activation = sum(i * (4 + 16 / i) for _, i in layers) / sum(i for _, i in layers)
    assert storage_bits(model) == pytest.approx((weight, activation), rel=1e-12)
    assert weight == pytest.approx(4 + 5632 / 13312)  # 4.423, not the 4.016 of a 1024-wide reference row


def test_dense_model_is_16_bits_and_dense_side_counts_16() -> None:
    assert storage_bits(Llama(SIZES["nano"], 64)) == (16.0, 16.0)
    w, a = storage_bits(Llama(SIZES["nano"], 64, LinearFactory(Int(bits=8))))
    assert a == 16.0 and w == pytest.approx(8 + 5632 / 13312)


def test_meta_device_model_of_a_large_size() -> None:
    with torch.device("meta"):
        model = Llama(SIZES["100M"], 64, LinearFactory(Int(bits=4, granularity="group", group_size=128)))
    assert storage_bits(model)[0] == pytest.approx(4 + 16 / 128)


@pytest.mark.parametrize(
    ("fmt", "shape", "bits"),
    [
        (Int(bits=4), (96, 32), 4 + 16 / 32),
        (Int(bits=4, granularity="group", group_size=16), (96, 32), 4 + 16 / 16),
        (Int(bits=4, granularity="tensor"), (96, 32), 4 + 32 / (96 * 32)),
        (FP(element="e4m3"), (8, 48), 8 + 16 / 48),
        (MX(element="e2m1"), (8, 64), 4 + 8 / 32),
        (NVFP4(), (8, 64), 4 + 8 / 16 + 32 / (8 * 64)),
        (VQ(dim=2, points=16), (4, 64), 2 + 16 / 64),
        (Magnitude(0.5), (4, 64), 0.5 * 16 + 1),
        (NM(2, 4), (4, 64), 8 + math.log2(6) / 4),
        (Compose([Magnitude(0.5), Int(bits=4)]), (4, 64), 0.5 * 4 + 16 / 64 + 1),
        (Compose([NM(2, 4), Int(bits=4)]), (4, 64), 2 + 16 / 64 + math.log2(6) / 4),
        (Hadamard(Int(bits=4), block=32), (4, 64), 4 + 16 / 64),
        (Dense(), (4, 64), 16.0),
    ],
    ids=lambda v: repr(v) if not isinstance(v, (tuple, float)) else None,
)
def test_format_storage_bits(fmt, shape, bits) -> None:
    assert fmt.storage_bits(shape) == pytest.approx(bits, rel=1e-12)


def test_reference_row_gives_bits_per_value() -> None:
    fmt = Int(bits=3, row_length=1024)
    assert fmt.storage_bits((7, 1024)) == fmt.bits_per_value


def test_group_that_does_not_divide_the_row_is_refused() -> None:
    with pytest.raises(ValueError, match="group_size 128 does not divide the row length 96"):
        Int(bits=4, granularity="group", group_size=128).storage_bits((4, 96))


FORMAT_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "formats"


@pytest.mark.parametrize(
    "activation",
    [
        Int(bits=4, granularity="tensor"),
        NVFP4(),
        Magnitude(0.5),
        Compose([Magnitude(0.5), Int(bits=4)]),
        Compose([NM(2, 4), Int(bits=4, granularity="tensor")]),
        Hadamard(NVFP4()),
    ],
    ids=repr,
)
def test_activation_statistics_over_the_tensor_are_refused(activation) -> None:
    with pytest.raises(ValueError, match="statistic of the whole tensor"):
        LinearFactory(activation=activation)
    LinearFactory(weight=activation)  # on the weight side a tensor-wide scale reads no token


def test_per_token_activation_statistics_are_accepted() -> None:
    for activation in (NVFP4(outer_scale="row"), Int(bits=4), Magnitude(0.5, per_row=True), Hadamard(NVFP4(outer_scale="row"))):
        assert not LinearFactory(activation=activation).activation.mixes_rows


@pytest.mark.parametrize("config", sorted(FORMAT_CONFIGS.rglob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_format_keeps_tokens_causal_and_sequences_apart(config: Path) -> None:
    """A token's logits do not move when a later token or another sequence of the batch changes."""
    _, weight, activation = load_format_config(config)
    torch.manual_seed(0)
    model = Llama(SIZES["nano"], vocab_size=64, linear=LinearFactory(weight, activation), max_seq_len=32).eval()
    tokens = torch.randint(0, 64, (2, 32), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[0, 20:] = (changed[0, 20:] + 7) % 64
    changed[1] = (changed[1] + 11) % 64
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    assert torch.equal(before[0, :20], after[0, :20])
    assert not torch.equal(before[0, 20:], after[0, 20:])  # the change reached the model


def _kernel_refused_layer(backend: str) -> CompressedLinear:
    """Rows of 24 in scale groups of 12 and Hadamard blocks of 8: the torch path rotates and scales them, the
    fused kernel needs the blocks and groups to nest in one segment of the row, and refuses."""
    inner = Int(bits=4, granularity="group", group_size=12, backend=backend)
    return CompressedLinear(24, 16, Hadamard(inner, block=8, backend=backend), Dense())


def test_the_probe_finds_what_the_kernel_refuses_with_the_first_step_s_own_message(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton on CPU tensors; the refusal comes before any launch
    layer = _kernel_refused_layer("triton")
    with pytest.raises(ValueError) as step:
        layer(torch.randn(2, 24))
    with pytest.raises(ValueError) as probe:
        check_runs_on(torch.nn.Sequential(layer), torch.device("cpu"))
    assert "nest" in str(step.value)
    assert str(probe.value) == f"layer 0, its weight of shape (16, 24): {step.value}"
    # the torch path takes the same nesting, and so does the probe
    check_runs_on(torch.nn.Sequential(_kernel_refused_layer("torch")), torch.device("cpu"))
    assert _kernel_refused_layer("torch")(torch.randn(2, 24)).shape == (2, 16)


def test_the_probe_names_a_kernel_forced_on_a_device_that_cannot_run_it(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = Llama(SIZES["nano"], 8, LinearFactory(Dense(), Int(bits=4, backend="triton")))
    with pytest.raises(ValueError, match=r"^layer blocks\.0\.attn\.qkv, its input of shape \(1, 32\): "
                                         "backend='triton' was forced but Triton cannot run on a cpu tensor"):
        check_runs_on(model, torch.device("cpu"))


def test_on_a_cpu_without_a_forced_kernel_nothing_is_probed(monkeypatch) -> None:
    """There the torch path runs, which pricing the layers has checked: the probe would only cost time."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fmt = Int(bits=4)

    def no_call(x):
        raise AssertionError("probed on a CPU")

    monkeypatch.setattr(fmt, "compress", no_call)
    check_runs_on(Llama(SIZES["nano"], 8, LinearFactory(fmt, None)), torch.device("cpu"))
