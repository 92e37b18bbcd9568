"""The compressed linear layer: y = A(x) W(w)^T, with A and W the activation and weight formats."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cslaws.formats.base import Format
from cslaws.formats.dense import Dense
from cslaws.formats.kernels import interpreting


def check_pair(weight: Format, activation: Format) -> None:
    """A layer whose formats keep a rotated basis is right only if both sides share that basis; an
    activation format must compress each token on its own (see `Format.mixes_rows`)."""
    if activation.mixes_rows:
        raise ValueError(
            f"the activation format {activation!r} compresses each token with a statistic of the whole tensor "
            "(a per-tensor scale or threshold), so a token's inputs would depend on later tokens and on the "
            "batch's other sequences; use per-row (per-token) or per-group statistics for activations "
            "(granularity row or group, Magnitude per_row true, NVFP4 outer_scale row)"
        )
    if weight.keeps_rotated_basis or activation.keeps_rotated_basis:
        if not (weight.keeps_rotated_basis and activation.keeps_rotated_basis):
            side = "weight" if weight.keeps_rotated_basis else "activation"
            raise ValueError(
                f"the {side} format {getattr(weight if side == 'weight' else activation, 'name', '')!r} keeps "
                "values in the rotated (half-Hadamard) basis, so both weight and activation formats must; "
                f"got weight={weight!r}, activation={activation!r}"
            )
        if weight.rotation_key != activation.rotation_key:
            raise ValueError(
                "weight and activation formats rotate in different bases "
                f"({weight.rotation_key!r} vs {activation.rotation_key!r}); they must match"
            )


class CompressedLinear(nn.Linear):
    """nn.Linear without bias whose weight and input pass through their formats on every call."""

    def __init__(self, in_features: int, out_features: int, weight: Format, activation: Format) -> None:
        super().__init__(in_features, out_features, bias=False)
        check_pair(weight, activation)
        self.weight_format = weight
        self.activation_format = activation

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.activation_format.compress(x), self.weight_format.compress(self.weight))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={self.weight_format!r}, activation={self.activation_format!r}"


class LinearFactory:
    """Builds every linear layer inside the transformer blocks from one (weight, activation) pair."""

    def __init__(self, weight: Format | None = None, activation: Format | None = None) -> None:
        self.weight = weight if weight is not None else Dense()
        self.activation = activation if activation is not None else Dense()
        check_pair(self.weight, self.activation)

    def __call__(self, in_features: int, out_features: int) -> nn.Linear:
        if isinstance(self.weight, Dense) and isinstance(self.activation, Dense):
            return nn.Linear(in_features, out_features, bias=False)
        return CompressedLinear(in_features, out_features, self.weight, self.activation)

    @property
    def formats(self) -> list[Format]:
        return [self.weight, self.activation]


def storage_bits(model: nn.Module) -> tuple[float, float]:
    """(weight bits, activation bits) per value of `model`'s compressed linears, on their real shapes.

    Weights: each layer's `storage_bits` of its (out_features, in_features) weight, averaged weighted by
    the layer's number of weights. Activations: each layer's cost on one token's input row (in_features
    values; `check_pair` refuses statistics shared across tokens), averaged weighted by in_features, the
    values per token. A model without compressed linears is
    dense: (16.0, 16.0).
    """
    layers = [m for m in model.modules() if isinstance(m, CompressedLinear)]
    if not layers:
        return Dense().bits_per_value, Dense().bits_per_value
    w_values = sum(m.weight.numel() for m in layers)
    weight = sum(m.weight_format.storage_bits(tuple(m.weight.shape)) * m.weight.numel() for m in layers) / w_values
    a_values = sum(m.in_features for m in layers)
    activation = sum(m.activation_format.storage_bits((m.in_features,)) * m.in_features for m in layers) / a_values
    return float(weight), float(activation)


def check_runs_on(model: nn.Module, device: torch.device) -> None:
    """Run each compressed linear's formats once on `device`, on the layer's own weight and on one input row,
    where a Triton kernel may launch (a CUDA device, Triton's interpreter, or a format forced to backend
    'triton'); else the torch path runs, which pricing the layers (`check_fits`) has checked already.

    The kernels refuse some nestings of scale groups, Hadamard blocks and N:M groups that the torch path takes,
    and a format forced to 'triton' on a device that cannot run it; training would meet either only at its
    first step, after the data and the sanity check. The probe goes through the formats' own dispatch, so it
    checks exactly what training will run. Raises ValueError naming the layer.
    """
    probed: set[tuple[int, tuple[int, ...]]] = set()
    for name, layer in model.named_modules():
        if not isinstance(layer, CompressedLinear):
            continue
        row = torch.randn(1, layer.in_features, generator=torch.Generator().manual_seed(0))
        for side, fmt, values in (("weight", layer.weight_format, layer.weight.detach()), ("input", layer.activation_format, row)):
            key = (id(fmt), tuple(values.shape))
            if key in probed or not _may_launch(fmt, device):
                continue
            probed.add(key)
            try:
                with torch.no_grad():
                    fmt.compress(values.to(device))
            except ValueError as err:
                raise ValueError(f"layer {name}, its {side} of shape {tuple(values.shape)}: {err}") from err


def _may_launch(fmt: Format, device: torch.device) -> bool:
    return device.type == "cuda" or interpreting() or any(getattr(f, "backend", None) == "triton" for f in fmt.walk())
