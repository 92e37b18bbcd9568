"""Speed and peak memory of `bench data prepare` at two corpus sizes.

The corpus is made from files already on the machine: the Python sources and text files under the
installed packages (site-packages), one JSON line per file (a document is a file), until the size is reached
(nothing is shipped or downloaded). Each size is prepared by `bench data prepare json --data-files ...` in a
child process with a byte-level BPE of 2048 trained on an 8 MB sample, on all cores; the parent samples the
resident memory of the child's whole process tree (workers included) from /proc every 50 ms.

Then, in this process on one core, the encoder alone on the first `--encoder-mb` MB of the last corpus with
the tokenizer its prepare trained: the `tokenizers` library's `encode_batch` against `wordcache.WordCache`
(what prepare uses), their MB/s, the ratio, and whether the ids are identical.

    python benchmarks/prepare_speed.py                 # 25 and 100 MB
    python benchmarks/prepare_speed.py --sizes 50 200

Prints, per size: the text MB (characters), the seconds (tokenizing and writing, from the index; and the whole command,
BPE training and start-up included), MB/s, MB/s per core, and the peak resident memory of the process tree
(all of it, and its anonymous part: without the memory-mapped files' pages).
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

import numpy as np


def build_corpus(path: Path, megabytes: float) -> int:
    """Write the source and text files of the installed packages to `path` as JSON lines, one document per
    file ({"text": ...}), until it holds `megabytes` of text; returns the characters written."""
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
                    out.write(json.dumps({"text": text}) + "\n")
                    written += len(text)
                    if written >= target:
                        return written
            if written == before:
                raise SystemExit("no text files found under site-packages")
    return written


def tree_rss(pid: int) -> tuple[int, int]:
    """Resident bytes of `pid` and all its descendants, from /proc: all of it (VmRSS), and the anonymous part
    (RssAnon: what the processes allocated, without the pages of memory-mapped files such as the Arrow cache,
    which the kernel can drop)."""
    total, anon, stack = 0, 0, [pid]
    while stack:
        p = stack.pop()
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
            total += int(fields["VmRSS"].split()[0]) * 1024
            anon += int(fields["RssAnon"].split()[0]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, KeyError):
            continue
    return total, anon


def run(corpus: Path, out: Path, num_proc: int) -> tuple[float, tuple[int, int], dict]:
    cmd = [sys.executable, "-m", "cslaws", "data", "prepare", "json", "--data-files", str(corpus), "--out", str(out),
           "--vocab-size", "2048", "--sample-mb", "8", "--num-proc", str(num_proc)]
    started = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = (0, 0)
    while child.poll() is None:
        peak = tuple(max(a, b) for a, b in zip(peak, tree_rss(child.pid)))
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if child.returncode:
        raise SystemExit(child.stderr.read())
    return wall, peak, json.loads((out / "index.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[25, 100], help="corpus sizes in MB")
    parser.add_argument("--num-proc", type=int, default=os.cpu_count())
    parser.add_argument("--encoder-mb", type=float, default=20, help="MB of text for the encoder comparison")
    args = parser.parse_args()
    print(f"{'MB':>6} {'tokens':>12} {'s (tokenize)':>12} {'s (command)':>11} {'MB/s':>6} {'MB/s/core':>9} {'peak RSS MiB':>12} {'anon MiB':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            corpus = Path(tmp) / f"corpus-{size:g}.jsonl"
            mb = build_corpus(corpus, size) / 1e6
            wall, peak, index = run(corpus, Path(tmp) / f"prepared-{size:g}", args.num_proc)
            rate = mb / index["seconds"]
            tokens = index["tokens"]["train"] + index["tokens"]["val"]
            print(f"{mb:6.0f} {tokens:12,} {index['seconds']:12.1f} {wall:11.1f} {rate:6.1f} {rate / args.num_proc:9.2f} "
                  f"{peak[0] / 2**20:12.0f} {peak[1] / 2**20:8.0f}")
            last = corpus, Path(tmp) / f"prepared-{size:g}" / "tokenizer.json"
        print(f"({args.num_proc} processes on {os.cpu_count()} cores; other load on the machine slows these figures)")
        compare_encoders(*last, args.encoder_mb)


def compare_encoders(corpus: Path, tokenizer: Path, megabytes: float) -> None:
    """The library's encode_batch against the word cache, one thread, on the first `megabytes` of `corpus`."""
    os.environ["RAYON_NUM_THREADS"] = "1"  # read when the library first encodes: one thread, like a prepare worker
    from tokenizers import Tokenizer

    from cslaws.bench.wordcache import WordCache, library_encoder

    texts, size = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size >= megabytes * 1e6:
                break
    tok = Tokenizer.from_file(str(tokenizer))
    dtype = np.dtype(np.uint16)  # the benchmark's vocabulary of 2048 fits
    started = time.perf_counter()
    library = library_encoder(tok, dtype)(texts)
    t_library = time.perf_counter() - started
    started = time.perf_counter()
    cached = WordCache(tok, dtype)(texts)
    t_cached = time.perf_counter() - started
    mb = size / 1e6
    print(f"encoder alone, one core, {mb:.0f} MB: tokenizers encode_batch {mb / t_library:.2f} MB/s, word cache "
          f"{mb / t_cached:.2f} MB/s, ratio {t_library / t_cached:.2f}; identical ids: {library == cached}")


if __name__ == "__main__":
    main()
