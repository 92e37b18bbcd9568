"""Training-step time of compressed formats relative to dense, on this machine's CPU (not a test).

Trains one Llama of the model family per format (dense, int4 weight-only, w4a4 Hadamard + trust, fp4)
for a fixed number of AdamW steps on random tokens; the formats are timed in turns, repeat after repeat,
so that drift of a shared machine hits all alike. Time is this process's CPU time (`time.process_time`),
so that other processes on a shared machine do not count while this one waits (run it with one thread:
with more, CPU time adds up over threads). Prints the median step time of each format and its ratio to
dense measured in the same run. Targets on a CPU: int4 <= 1.10x, w4a4 <= 1.30x.

    python benchmarks/formats_speed.py --size small --steps 2 --repeats 9 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from cslaws.formats import Format, LinearFactory
from cslaws.models.llama import SIZES, Llama

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "formats"
STEMS = ("dense", "int4", "w4a4", "fp4")


class _Model:
    def __init__(self, label: str | None = None, weight: Format | None = None, activation: Format | None = None) -> None:
        self.label, self.weight, self.activation = label, weight, activation


def load(stem: str) -> LinearFactory:
    parser = ArgumentParser()
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(_Model, "model")
    m = parser.instantiate(parser.parse_args(["--config", str(CONFIGS / f"{stem}.yaml")])).model
    return LinearFactory(m.weight, m.activation)


def step_times(model: Llama, opt: torch.optim.Optimizer, tokens: torch.Tensor, steps: int) -> float:
    """CPU seconds per step, averaged over `steps` steps."""
    vocab = model.head.out_features
    start = time.process_time()
    for _ in range(steps):
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.process_time() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="small", choices=sorted(SIZES))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    runs = {}
    for stem in STEMS:
        torch.manual_seed(0)
        model = Llama(SIZES[args.size], vocab_size=args.vocab, linear=load(stem))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step_times(model, opt, tokens, 1)  # warm-up: allocator, cached constants
        runs[stem] = (model, opt)
    times: dict[str, list[float]] = {stem: [] for stem in STEMS}
    for _ in range(args.repeats):
        for stem, (model, opt) in runs.items():
            times[stem].append(step_times(model, opt, tokens, args.steps))
    size = SIZES[args.size]
    print(
        f"size={args.size} (d_model={size.d_model}, d_ff={size.d_ff}, layers={size.n_layer}) batch={args.batch} "
        f"seq={args.seq} vocab={args.vocab} threads={args.threads}; median of {args.repeats} x {args.steps} steps"
    )
    base = statistics.median(times["dense"])
    print(f"{'format':8s} {'cpu ms/step':>11s} {'x dense':>8s}")
    for stem in STEMS:
        med = statistics.median(times[stem])
        print(f"{stem:8s} {1e3 * med:11.1f} {med / base:8.2f}")


if __name__ == "__main__":
    main()
