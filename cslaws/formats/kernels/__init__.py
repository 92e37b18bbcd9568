"""Triton kernels for the compressed forward and backward, and the dispatcher that picks them.

CUDA tensors go to Triton, CPU tensors to the torch reference; `backend="torch"` or `"triton"` forces
one. Forcing Triton where it cannot run is an error, never a silent fallback. Under Triton's
interpreter (`TRITON_INTERPRET=1`) the kernels run on CPU tensors, which is how the tests check them.

- `triton_ops`: the kernels -- fused (rotate ->) (sparsify ->) quantize (-> rotate back) with a bit-packed
  gradient mask, its masked backward, and a standalone fast Walsh-Hadamard transform.
- `fused`: what a format asks of them (`QuantPlan`, `Rotation`, `Sparsity`), launch geometry, autograd.

Formats with a kernel (`Int`, `Ternary`, `FP`, `MX`, `NVFP4`, `Hadamard`, `Compose`) take `backend` as an
init arg and describe themselves to the kernel with `kernel_plan()`; the torch code stays the reference.
"""

from __future__ import annotations

import os
from typing import Literal

from torch import Tensor

Backend = Literal["auto", "torch", "triton"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "triton")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
    return backend


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x: Tensor, backend: str) -> bool:
    """Whether `x` goes through the Triton kernels under the chosen backend."""
    check_backend(backend)
    if backend == "torch":
        return False
    runnable = x.is_cuda or (interpreting() and x.device.type == "cpu")
    if backend == "triton" and not runnable:  # a value of `backend` this device cannot run: the user's to change
        raise ValueError(
            f"backend='triton' was forced but Triton cannot run on a {x.device.type} tensor here: "
            "it needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors; use backend='torch' or 'auto'"
        )
    return backend == "triton" or x.is_cuda
