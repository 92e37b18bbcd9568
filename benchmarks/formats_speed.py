"""Training-step time of every shipped format config relative to dense (not a test).

Trains one Llama of the model family per config of `configs/formats` (and `configs/formats/quest`) for a
fixed number of AdamW steps on random tokens, eager or `torch.compile(fullgraph=True)`; the formats are
timed in turns, repeat after repeat, so that drift of a shared machine hits all alike. On a CPU the time
is this process's CPU time (`time.process_time`), so that other processes on a shared machine do not
count while this one waits (run it with one thread: with more, CPU time adds up over threads); on CUDA
it is wall time after a synchronize, and the table adds MFU (6 N_all tokens / s over the peak bf16
dense rate given by `--peak-tflops`) and peak memory. Prints the median ms per step, its ratio to dense
in the same run and tokens/s. CPU target (medium, one thread, eager): every format within 1.30x.

    python benchmarks/formats_speed.py --size medium --steps 2 --repeats 5 --threads 1
    python benchmarks/formats_speed.py --device cuda --size 100M --batch 32 --seq 512 --vocab 32000 --compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from cslaws.formats import LinearFactory
from cslaws.laws.capacity import load_format_config
from cslaws.models.llama import SIZES, Llama

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "formats"
STEMS = tuple(p.relative_to(CONFIGS).with_suffix("").as_posix() for p in sorted(CONFIGS.rglob("*.yaml")))


def load(stem: str) -> LinearFactory:
    """The (weight, activation) formats of the shipped config `formats/<stem>.yaml`."""
    _, weight, activation = load_format_config(CONFIGS / f"{stem}.yaml")
    return LinearFactory(weight, activation)


def step_times(model: torch.nn.Module, opt: torch.optim.Optimizer, tokens: torch.Tensor, steps: int, vocab: int) -> float:
    """Seconds per step, averaged over `steps` steps: CPU time on a CPU, wall time on CUDA."""
    cuda = tokens.is_cuda
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter() if cuda else time.process_time()
    for _ in range(steps):
        with torch.autocast(tokens.device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if cuda:
        torch.cuda.synchronize()
    return ((time.perf_counter() if cuda else time.process_time()) - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="medium", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True) every model")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s for MFU (H100 SXM)")
    ap.add_argument("--only", nargs="*", default=None, help="config stems to time (dense is always timed)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    stems = ["dense"] + [s for s in (args.only or STEMS) if s != "dense"]
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1), device=device)
    runs = {}
    for stem in stems:
        torch.manual_seed(0)
        model = Llama(SIZES[args.size], vocab_size=args.vocab, linear=load(stem)).to(device)
        step_model = torch.compile(model, fullgraph=True) if args.compile else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step_times(step_model, opt, tokens, 2, args.vocab)  # warm-up: compilation, allocator, cached constants
        runs[stem] = (step_model, opt, sum(p.numel() for p in model.parameters()))
    times: dict[str, list[float]] = {stem: [] for stem in stems}
    peak: dict[str, float] = {}
    for _ in range(args.repeats):
        for stem, (step_model, opt, _) in runs.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[stem].append(step_times(step_model, opt, tokens, args.steps, args.vocab))
            if device.type == "cuda":
                peak[stem] = torch.cuda.max_memory_allocated() / 2**30
    size = SIZES[args.size]
    print(
        f"size={args.size} (d_model={size.d_model}, d_ff={size.d_ff}, layers={size.n_layer}) batch={args.batch} "
        f"seq={args.seq} vocab={args.vocab} threads={args.threads} device={args.device} "
        f"{'compiled' if args.compile else 'eager'}; median of {args.repeats} x {args.steps} steps"
    )
    base = statistics.median(times["dense"])
    tok = args.batch * args.seq
    cuda = device.type == "cuda"
    print(f"| format | ms/step | x dense | tokens/s |" + (" MFU | peak GiB |" if cuda else ""))
    print("|---|---|---|---|" + ("---|---|" if cuda else ""))
    for stem in stems:
        med = statistics.median(times[stem])
        row = f"| {stem} | {1e3 * med:.1f} | {med / base:.2f} | {tok / med:,.0f} |"
        if cuda:
            mfu = 6 * runs[stem][2] * tok / med / (args.peak_tflops * 1e12)
            row += f" {100 * mfu:.0f}% | {peak[stem]:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
