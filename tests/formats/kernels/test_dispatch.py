"""The backend dispatcher: CPU tensors go to torch under "auto", CUDA tensors to Triton, forcing Triton
where it cannot run is an error, an unknown backend name is an error at construction. No kernel runs
here (the kernels are checked under the interpreter by `test_interpreter.py`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cslaws.formats import quant
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int, Ternary
from cslaws.formats.kernels import fused, use_triton
from cslaws.formats.lloydmax import LloydMax

KERNEL_FORMATS = [Int, Ternary, FP, MX, NVFP4, lambda **kw: Hadamard(Int(), **kw)]


def fake_cuda_tensor() -> SimpleNamespace:
    return SimpleNamespace(is_cuda=True, device=torch.device("cuda"))


def test_use_triton_rules(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.zeros(2)
    assert not use_triton(cpu, "auto")
    assert not use_triton(cpu, "torch")
    assert use_triton(fake_cuda_tensor(), "auto")
    assert use_triton(fake_cuda_tensor(), "triton")
    assert not use_triton(fake_cuda_tensor(), "torch")
    with pytest.raises(RuntimeError, match="backend='triton' was forced but Triton cannot run on a cpu tensor"):
        use_triton(cpu, "triton")
    with pytest.raises(ValueError, match="unknown backend 'cuda'; allowed: auto, torch, triton"):
        use_triton(cpu, "cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(cpu, "triton")  # the interpreter runs kernels on CPU tensors
    assert not use_triton(cpu, "auto")  # but "auto" never picks the (slow) interpreter


@pytest.mark.parametrize("make", KERNEL_FORMATS)
def test_backend_is_an_init_arg_checked_at_construction(make):
    with pytest.raises(ValueError, match="unknown backend 'gpu'; allowed: auto, torch, triton"):
        make(backend="gpu")
    fmt = make(backend="torch")
    assert fmt.spec()["init_args"]["backend"] == "torch"
    assert make().backend == "auto"


@pytest.mark.parametrize("make", KERNEL_FORMATS)
def test_auto_on_cpu_takes_the_torch_path(make, monkeypatch):
    def no_kernels(*args, **kwargs):
        raise AssertionError("a kernel was called for a CPU tensor under backend='auto'")

    monkeypatch.setattr(fused, "fake_quantize", no_kernels)
    monkeypatch.setattr(quant, "fake_quantize", no_kernels)
    monkeypatch.setattr(fused, "fwht", no_kernels)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(3, 64, requires_grad=True)
    fmt = make()
    fmt.compress(x).sum().backward()
    ref = make(backend="torch").compress(x)
    assert torch.equal(fmt.compress(x), ref)


@pytest.mark.parametrize("make", KERNEL_FORMATS)
def test_forced_triton_on_cpu_without_interpreter_is_an_error(make, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="backend='triton' was forced"):
        make(backend="triton").compress(torch.randn(3, 64))


def test_kernel_plans_follow_the_format():
    """The plan carries the format's own constants (e.g. Int's step multiplier) into the kernel."""
    plan = Int(
        bits=3, grid="midtread", scale="absmax", granularity="group", group_size=32, backward="clipped"
    ).kernel_plan()
    assert (plan.kind, plan.levels, plan.stat, plan.granularity, plan.group_size, plan.backward) == (
        "int",
        7,
        "absmax",
        "group",
        32,
        "clipped",
    )
    assert plan.mult == 2 / 6
    assert MX(element="e4m3").kernel_plan().element == (3, -6, 8, 448.0)
    assert NVFP4().kernel_plan().group_size == 16
    assert LloydMax().kernel_plan() is None  # no kernel: LloydMax has no backend and stays on torch
