"""Speed and peak memory of `bench data prepare` at two corpus sizes.

The corpus is made from files already on the machine: the Python sources and text files under the
installed packages (site-packages), concatenated until the size is reached (nothing is shipped or
downloaded). Each size is prepared by `bench data prepare text --data-files ...` in a child process with a
byte-level BPE of 2048 trained on an 8 MB sample, on all cores; the parent samples the resident memory of the
child's whole process tree (workers included) from /proc every 50 ms.

    python benchmarks/prepare_speed.py                 # 25 and 100 MB
    python benchmarks/prepare_speed.py --sizes 50 200

Prints, per size: the text MB, the seconds (tokenizing and writing, from the index; and the whole command,
BPE training and start-up included), MB/s, MB/s per core, and the peak RSS of the process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_corpus(path: Path, megabytes: float) -> int:
    """Concatenate source and text files of the installed packages into `path` until it holds `megabytes`."""
    target, written = int(megabytes * 1e6), 0
    roots = [Path(p) for p in site.getsitepackages()]
    with open(path, "w", encoding="utf-8") as out:
        while written < target:  # the packages hold less than the target: pass over them again
            before = written
            for root in roots:
                for f in sorted(root.rglob("*")):
                    if f.suffix not in (".py", ".md", ".txt", ".rst") or not f.is_file():
                        continue
                    try:
                        text = f.read_text(encoding="utf-8")
                    except (UnicodeDecodeError, OSError):
                        continue
                    out.write(text)
                    written += len(text)
                    if written >= target:
                        return written
            if written == before:
                raise SystemExit("no text files found under site-packages")
    return written


def tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants, from /proc."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(l.split()[1] for l in status.splitlines() if l.startswith("VmRSS:"))) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total


def run(corpus: Path, out: Path, num_proc: int) -> tuple[float, int, dict]:
    cmd = [sys.executable, "-m", "cslaws", "data", "prepare", "text", "--data-files", str(corpus), "--out", str(out),
           "--vocab-size", "2048", "--sample-mb", "8", "--num-proc", str(num_proc)]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss(child.pid))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(child.stderr.read())
    return wall, peak, json.loads((out / "index.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[25, 100], help="corpus sizes in MB")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"{'MB':>6} {'tokens':>12} {'s (tokenize)':>12} {'s (command)':>11} {'MB/s':>6} {'MB/s/core':>9} {'peak RSS MiB':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            corpus = Path(tmp) / f"corpus-{size:g}.txt"
            build_corpus(corpus, size)
            mb = corpus.stat().st_size / 1e6
            wall, peak, index = run(corpus, Path(tmp) / f"prepared-{size:g}", args.num_proc)
            rate = mb / index["seconds"]
            tokens = index["tokens"]["train"] + index["tokens"]["val"]
            print(f"{mb:6.0f} {tokens:12,} {index['seconds']:12.1f} {wall:11.1f} {rate:6.1f} {rate / args.num_proc:9.2f} "
                  f"{peak / 2**20:12.0f}")
    print(f"({args.num_proc} processes on {os.cpu_count()} cores; other load on the machine slows these figures)")


if __name__ == "__main__":
    main()
