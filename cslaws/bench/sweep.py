"""`bench sweep`: run a benchmark matrix (models x formats x token budgets x seeds) into the results store.

Each cell is an ordinary `bench fit` command, so a sweep is resumable (cells the store already holds as
finished are skipped), can run several cells at a time, and can be handed to a cluster instead:
`--emit` prints the commands one per line, `--emit slurm` a SLURM array script.

A matrix file:

    models: [nano, micro]              # names from cslaws.models.llama.SIZES
    formats: [formats/dense.yaml, formats/int4.yaml]   # format configs (shipped or paths)
    tokens_per_param: [10, 20]         # token budgets, as tokens per non-embedding parameter
    seeds: [0]
    fit:                               # shared `bench fit` settings for every cell (any fit config keys)
      data: {seq_len: 64, batch_size: 16}
      trainer: {val_check_interval: 0.5}
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cslaws.bench.cli import resolve_config
from cslaws.bench.store import ResultsStore, default_store_path
from cslaws.console import console as rich_console
from cslaws.models.llama import SIZES, get_size, non_embedding_params


@dataclass(frozen=True)
class Cell:
    model: str
    format_config: str
    tokens_per_param: float
    seed: int
    fit: str  # the shared fit settings as canonical JSON

    @property
    def label(self) -> str:
        return Path(self.format_config).stem

    @property
    def key(self) -> str:
        """Names the cell in the store: readable, plus a hash of everything that defines the run."""
        fmt_text = Path(resolve_config(self.format_config)).read_text()
        digest = hashlib.sha256(json.dumps([self.model, fmt_text, self.tokens_per_param, self.seed, self.fit]).encode()).hexdigest()[:10]
        return f"{self.model}/{self.label}/tpp{self.tokens_per_param:g}/s{self.seed}/{digest}"

    @property
    def flops(self) -> float:
        """Training compute 6 N D (Kaplan et al. 2020), N non-embedding."""
        n = non_embedding_params(get_size(self.model))
        return 6.0 * n * n * self.tokens_per_param

    def command(self, store: Path, fit_config: Path, program: tuple[str, ...] = ("bench",)) -> list[str]:
        return [
            *program, "fit",
            "--config", str(fit_config),
            "--config", resolve_config(self.format_config),
            "--model.size", self.model,
            "--model.tokens_per_param", f"{self.tokens_per_param:g}",
            "--seed_everything", str(self.seed),
            "--store.path", str(store),
            "--store.cell", self.key,
            "--store.refit", "false",
        ]


def matrix_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bench sweep", description="Run a benchmark matrix into the results store.")
    parser.add_argument("--matrix", action="config", help="matrix YAML (shipped, e.g. matrix/cpu.yaml, or a path)")
    parser.add_argument("--models", type=list[str], required=True, help="model sizes")
    parser.add_argument("--formats", type=list[str], required=True, help="format configs")
    parser.add_argument("--tokens_per_param", type=list[float], required=True, help="token budgets per parameter")
    parser.add_argument("--seeds", type=list[int], default=[0])
    parser.add_argument("--fit", type=dict[str, Any], default={}, help="shared bench fit settings")
    parser.add_argument("--store", type=str | None, default=None, help="results store (default $CSLAWS_STORE or runs/results.db)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="list the cells and their FLOPs")
    parser.add_argument("--emit", type=str | None, default=None, help="'lines' (one command per line) or 'slurm'")
    return parser


def parse(argv: list[str]) -> Any:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--matrix" and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])
        elif arg.startswith("--matrix="):
            argv[i] = "--matrix=" + resolve_config(arg.split("=", 1)[1])
    cfg = matrix_parser().parse_args(argv)
    for name in cfg.models:
        get_size(name)
    for f in cfg.formats:
        resolve_config(f)
    if not cfg.tokens_per_param or any(t <= 0 for t in cfg.tokens_per_param):
        raise SystemExit(f"bench sweep: tokens_per_param must be positive numbers; got {cfg.tokens_per_param}")
    if cfg.jobs < 1:
        raise SystemExit(f"bench sweep: --jobs {cfg.jobs} is not allowed; it must be at least 1")
    if cfg.emit not in (None, "lines", "slurm"):
        raise SystemExit(f"bench sweep: --emit {cfg.emit!r} is not allowed; use 'lines' or 'slurm'")
    return cfg


def cells(cfg: Any) -> list[Cell]:
    fit = json.dumps(cfg.fit, sort_keys=True)
    return [
        Cell(m, f, t, s, fit)
        for m in cfg.models
        for f in cfg.formats
        for t in cfg.tokens_per_param
        for s in cfg.seeds
    ]


def write_fit_config(cfg: Any, directory: Path) -> Path:
    path = directory / "sweep_fit.yaml"
    path.write_text(yaml.safe_dump(cfg.fit, sort_keys=True))
    return path


def run_cell(cell: Cell, store: Path, fit_config: Path, log_dir: Path, threads: int) -> int:
    log = log_dir / (cell.key.replace("/", "_") + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log, "w") as out:
        command = cell.command(store, fit_config, program=(sys.executable, "-m", "cslaws"))
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def emit(todo: list[Cell], store: Path, fit_config: Path, kind: str) -> str:
    lines = [shlex.join(c.command(store, fit_config)) for c in todo]
    if kind == "lines":
        return "\n".join(lines)
    body = "\n".join(f"  {shlex.quote(line)}" for line in lines)
    return (
        "#!/bin/bash\n"
        f"#SBATCH --array=0-{len(lines) - 1}\n"
        "#SBATCH --job-name=cslaws-sweep\n"
        "#SBATCH --gpus=1\n"
        f"COMMANDS=(\n{body}\n)\n"
        'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"\n'
    )


def main(argv: list[str]) -> int:
    cfg = parse(argv[1:])
    console = rich_console()
    store_path = Path(cfg.store) if cfg.store else default_store_path()
    store = ResultsStore(store_path)
    done = store.finished_cells()
    all_cells = cells(cfg)
    todo = [c for c in all_cells if c.key not in done]
    if cfg.dry_run:
        table = Table(title=f"{len(all_cells)} cells, {len(todo)} to run")
        for col in ("cell", "N", "D", "FLOPs", "status"):
            table.add_column(col)
        for c in all_cells:
            n = non_embedding_params(SIZES[c.model])
            table.add_row(c.key, f"{n:,}", f"{round(n * c.tokens_per_param):,}", f"{c.flops:.3g}", "done" if c.key in done else "to run")
        console.print(table)
        console.print(f"total to run: {sum(c.flops for c in todo):.3g} FLOPs")
        return 0
    work_dir = store_path.parent / "sweep"
    work_dir.mkdir(parents=True, exist_ok=True)
    fit_config = write_fit_config(cfg, work_dir)
    if cfg.emit:
        print(emit(todo, store_path.resolve(), fit_config.resolve(), cfg.emit))
        return 0
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    failed: list[str] = []
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(cfg.jobs) as pool:
        task = progress.add_task("", total=len(todo))
        futures = {pool.submit(run_cell, c, store_path, fit_config, work_dir, threads): c for c in todo}
        for future in as_completed(futures):
            cell = futures[future]
            if future.result() != 0:
                failed.append(cell.key)
            progress.update(task, advance=1, description=cell.key)
    console.print(f"{len(todo) - len(failed)} cells finished, {len(failed)} failed, {len(all_cells) - len(todo)} already in the store")
    for key in failed:
        console.print(f"[red]failed[/] {key}: see {work_dir / (key.replace('/', '_') + '.log')}")
    if len(todo) > len(failed):
        print_leaderboard(store_path, console)
    return 1 if failed else 0


def print_leaderboard(store_path: Path, console: Console) -> None:
    """The refit leaderboard; a store that cannot support a fit yet says why, without failing the sweep."""
    from cslaws.laws.cli import main as laws_main

    if laws_main(["leaderboard", "--store", str(store_path)]) != 0:
        console.print("[yellow]no leaderboard yet[/]: the store cannot support a fit (see above)")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
