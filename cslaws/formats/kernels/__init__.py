"""Triton kernels for the compressed forward and backward, and the dispatcher that picks them.

CUDA tensors go to Triton, CPU tensors to the torch reference; `backend="torch"` or `"triton"` forces
one. Forcing Triton where it cannot run is an error, never a silent fallback. Under Triton's
interpreter (`TRITON_INTERPRET=1`) the kernels run on CPU tensors, which is how the tests check them.
"""

from __future__ import annotations

import os

from torch import Tensor

BACKENDS = ("auto", "torch", "triton")


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
    if backend == "triton" and not runnable:
        raise RuntimeError(
            f"backend='triton' was forced but Triton cannot run on a {x.device.type} tensor here: "
            "it needs a CUDA tensor, or TRITON_INTERPRET=1 for CPU tensors; use backend='torch' or 'auto'"
        )
    return backend == "triton" or x.is_cuda
