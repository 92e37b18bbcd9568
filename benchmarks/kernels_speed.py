"""Speed of the fused Triton kernels against the torch path of the same formats (not a test).

On a CUDA device: for the layer shapes of the model family (widths 640..2048, 8192 tokens; activations
(tokens, d) and the weights of one block), times forward and forward+backward of each format with
`backend="torch"` and `backend="triton"` (median of repeats, CUDA events) and prints the speed-up and the
fused forward's achieved bandwidth (bytes read + written) beside the device's copy
bandwidth measured here with a torch copy. On a machine without CUDA it says so and exits 0.

    python benchmarks/kernels_speed.py [--widths 640 1024 2048] [--tokens 8192] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Callable

import torch

from cslaws.formats.base import Format
from cslaws.formats.compose import Compose
from cslaws.formats.fp import FP, MX, NVFP4
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.sparse import NM
from cslaws.models.llama import Size

FORMATS: dict[str, Callable[[str], Format]] = {
    "int4-row-trust": lambda b: Int(bits=4, backward="trust", backend=b),
    "int4-g128-absmax": lambda b: Int(
        bits=4, scale="absmax", granularity="group", group_size=128, backward="clipped", backend=b
    ),
    "had-half-int4-trust": lambda b: Hadamard(Int(bits=4, backward="trust"), variant="half", backend=b),
    "had-full-int4-trust": lambda b: Hadamard(Int(bits=4, backward="trust"), variant="full", backend=b),
    "fp8-row-trust": lambda b: FP(element="e4m3", backward="trust", backend=b),
    "mxfp4-trust": lambda b: MX(element="e2m1", backward="trust", backend=b),
    "nvfp4-trust": lambda b: NVFP4(backward="trust", backend=b),
    "2:4+int4-g32": lambda b: Compose(
        [NM(2, 4), Int(bits=4, scale="absmax", granularity="group", group_size=32, backward="trust", backend=b)],
        backend=b,
    ),
}


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def copy_bandwidth(repeats: int) -> float:
    """GB/s of a device-to-device torch copy of 256 MiB (read + write)."""
    x = torch.empty(1 << 26, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x), repeats)
    return 2 * x.numel() * x.element_size() / ms / 1e6


def shapes(widths: list[int], tokens: int) -> list[tuple[str, tuple[int, int]]]:
    out = []
    for d in widths:
        d_ff = Size(n_layer=1, d_model=d, n_head=1, lr=0.0).d_ff
        out += [(f"act d={d}", (tokens, d)), (f"act d_ff={d_ff}", (tokens, d_ff)), (f"w {d_ff}x{d}", (d_ff, d))]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[640, 1024, 1536, 2048])
    p.add_argument("--tokens", type=int, default=8192)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("kernels_speed: no CUDA device here; the Triton kernels run on GPUs (nothing to time)")
        return 0
    dtype = getattr(torch, args.dtype)
    copy = copy_bandwidth(args.repeats)
    print(f"device: {torch.cuda.get_device_name()}, dtype {args.dtype}, torch copy bandwidth {copy:.0f} GB/s")
    print(
        f"{'format':22s} {'shape':18s} {'fwd torch':>10s} {'fwd triton':>10s} {'x':>6s} {'GB/s':>6s} "
        f"{'f+b torch':>10s} {'f+b triton':>10s} {'x':>6s}"
    )
    for label, shape in shapes(args.widths, args.tokens):
        x = torch.randn(shape, device="cuda").to(dtype).requires_grad_(True)
        grad = torch.randn_like(x)
        # bytes of the fused forward without a gradient: read x, write the output (no mask is needed)
        moved = 2 * x.numel() * x.element_size()
        for name, make in FORMATS.items():
            if name.startswith("had") and shape[-1] % 2:
                continue
            ref, ker = make("torch"), make("triton")
            with torch.no_grad():
                f_t = median_ms(lambda: ref.compress(x), args.repeats)
                f_k = median_ms(lambda: ker.compress(x), args.repeats)
            b_t = median_ms(lambda: ref.compress(x).backward(grad), args.repeats)
            b_k = median_ms(lambda: ker.compress(x).backward(grad), args.repeats)
            print(
                f"{name:22s} {label:18s} {f_t:10.3f} {f_k:10.3f} {f_t / f_k:6.2f} {moved / f_k / 1e6:6.0f} "
                f"{b_t:10.3f} {b_k:10.3f} {b_t / b_k:6.2f}"
            )
    print(
        "times in ms (median); x = torch time / triton time; GB/s = fused forward bytes / time, "
        f"against {copy:.0f} GB/s for a copy"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
