"""The backend dispatcher: CPU tensors go to torch under "auto", CUDA tensors to Triton, forcing Triton
where it cannot run is an error, an unknown backend name is an error at construction. No kernel runs
here (the kernels are checked under the interpreter by `test_interpreter.py`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cslaws.formats import compose, hadamard, quant
from cslaws.formats.compose import Compose
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int, Ternary
from cslaws.formats.kernels import check_backend, fused, use_triton
from cslaws.formats.sparse import NM, Magnitude
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
    with pytest.raises(ValueError, match="backend='triton' was forced but Triton cannot run on a cpu tensor"):
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
    with pytest.raises(ValueError, match="backend='triton' was forced"):
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


def pretend_gpu(monkeypatch, rotations: bool = False) -> None:
    """Every tensor counts as a CUDA tensor, where "auto" picks Triton, and every kernel raises (but for the
    standalone rotation with `rotations`, done by the torch one): a format that reaches a kernel fails."""
    def on_gpu(x, backend: str) -> bool:
        return check_backend(backend) != "torch"

    def no_kernels(*args, **kwargs):
        raise AssertionError("a Triton kernel was called")

    for module in (quant, hadamard, compose):
        monkeypatch.setattr(module, "use_triton", on_gpu)
    monkeypatch.setattr(fused, "fake_quantize", no_kernels)
    monkeypatch.setattr(quant, "fake_quantize", no_kernels)
    monkeypatch.setattr(fused, "fwht", no_kernels)
    monkeypatch.setattr(fused, "rotate", hadamard.rotate if rotations else no_kernels)


WRAPPED = {
    "hadamard(int4)": lambda **kw: Hadamard(Int(), **kw),
    "hadamard(compose(magnitude, int4))": lambda **kw: Hadamard(Compose([Magnitude(0.5, per_row=True), Int()]), **kw),
    "compose(magnitude, int4)": lambda **kw: Compose([Magnitude(0.5, per_row=True), Int()], **kw),
    "compose(2:4, mxfp4)": lambda **kw: Compose([NM(2, 4), MX()], **kw),
}


@pytest.mark.parametrize("make", WRAPPED.values(), ids=WRAPPED.keys())
def test_torch_on_a_wrapper_holds_for_the_formats_inside(make, monkeypatch):
    """On a GPU, `backend="torch"` on a Hadamard or a Compose ran the formats inside it ("auto") on Triton."""
    x = torch.randn(4, 64, requires_grad=True)
    expected = make().compress(x)  # CPU: the torch code throughout
    fmt = make(backend="torch")
    pretend_gpu(monkeypatch)
    y = fmt.compress(x)
    y.sum().backward()
    assert torch.equal(y, expected)
    assert "'backend': 'auto'" not in str(fmt.spec()), fmt.spec()  # the stored spec says what ran


@pytest.mark.parametrize("wrap", [lambda f: Hadamard(f, backend="torch"),
                                  lambda f: Compose([Magnitude(0.5, per_row=True), f], backend="torch")],
                         ids=["hadamard", "compose"])
def test_a_wrapper_given_torch_leaves_the_caller_s_format_as_it_was(wrap):
    """A format object also given to another layer (`weight=Hadamard(f, backend="torch"), activation=f`) became
    torch there too: the wrapper sets its backend on its own copy."""
    f = Int()
    wrapped = wrap(f)
    assert f.backend == "auto" and f.spec() == Int().spec()
    assert [g.backend for g in wrapped.walk() if hasattr(g, "backend")] == ["torch"] * len([g for g in wrapped.walk() if hasattr(g, "backend")])


def test_a_format_forced_to_triton_inside_one_given_torch_is_refused():
    with pytest.raises(ValueError, match=r"forced to backend='triton' inside a format given backend='torch'"):
        Hadamard(Compose([NM(2, 4), Int(backend="triton")]), backend="torch")


@pytest.mark.parametrize("make", [lambda: Hadamard(Int(backend="torch")),
                                  lambda: Compose([Magnitude(0.5, per_row=True), Int(backend="torch")])],
                         ids=["hadamard(int4 torch)", "compose(magnitude, int4 torch)"])
def test_a_format_given_torch_inside_an_auto_one_keeps_torch(make, monkeypatch):
    """The wrapper's fused kernel took the inner format's plan whatever backend that one was given."""
    x = torch.randn(4, 64)
    expected = make().compress(x)
    pretend_gpu(monkeypatch, rotations=True)
    assert torch.equal(make().compress(x), expected)
