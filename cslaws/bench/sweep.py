"""`bench sweep`: run a benchmark matrix (models x formats x token budgets x seeds) into the results store.

Each cell is an ordinary `bench fit` command, so a sweep is resumable (cells the store already holds as
finished are skipped), can run several cells at a time, and can be handed to a cluster instead:
`--emit` prints the commands one per line, `--emit slurm` a SLURM array script in which each array task
writes its own store, `<store stem>.parts/<cell hash>.db` beside the store (SQLite over a network file
system is no place for many concurrent writers); `bench store merge STORE STORE.parts/*.db` folds them in.

The shared fit settings go to `<store dir>/sweep/fit-<hash of their content>.yaml`, so two sweeps on one
store keep their own settings files.

Resume: a cell whose run is `running` but whose process is gone is relaunched with `--ckpt_path last`
(the run continues from its last checkpoint, in the same store row). "Gone" means the row names this
host and its pid is no longer alive, or the row names no host (written before hosts were recorded). A
row of another host cannot be checked from here: it is treated as alive and listed, not relaunched (resume
it on its host, or with `bench fit ... --store.cell KEY --ckpt_path last`). A failed cell is relaunched
with `--ckpt_path last` too: a run stopped short (SIGTERM, a time limit) goes on from its last checkpoint,
in its row; one that left no checkpoint starts again from scratch, in a new row. `--dry-run` and `--emit` only read the store (a missing one is empty, and is not created).
`--keep-checkpoints` passes `--store.keep_checkpoints true` to every fit. Before anything is planned or run,
each format's first cell is built as `bench fit` builds it (nothing trains), so a bad `fit` value is refused
once, up front; so is a cell's budget that `bench fit` would refuse (below one step, or, when the sweep runs,
more passes over the corpus than `data.max_epochs`).

A matrix file:

    models: [nano, micro]              # names from cslaws.models.llama.SIZES
    formats: [formats/dense.yaml, formats/int4.yaml]   # format configs (shipped or paths)
    tokens_per_param: [10, 20]         # token budgets, as tokens per non-embedding parameter; or
                                       # tokens: [1000000, 2000000], the same D for every size
    seeds: [0]
    model_seeds: {nano: [0, 1, 2]}     # optional: these models' cells run with these seeds instead (repeat
                                       # the cheapest cells, so that the fit's intervals include seed noise)
    fit:                               # shared `bench fit` settings for every cell (any fit config keys)
      data: {seq_len: 64, batch_size: 16}
      trainer: {val_check_interval: 0.5}
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shlex
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cslaws.bench.budget import check_optimizer_settings, check_trainer_settings, requested_tokens
from cslaws.bench.cli import SECTIONS, check_can_create, resolve_config
from cslaws.bench.store import ResultsStore, RunRecord, check_can_hold_store, given_store_path, process_gone
from cslaws.console import console as rich_console
from cslaws.console import quiet_logs
from cslaws.errors import BenchError
from cslaws.laws.capacity import check_fits, load_format_config
from cslaws.models.llama import get_size, non_embedding_params

#: The top-level keys of a `bench fit` config (its parser's sections and options, `bench fit --help`): any
#: other key in the matrix's `fit` block would fail every cell, so it is refused before the sweep starts.
FIT_KEYS = ("model", "data", "trainer", "store", "checkpoint", "optimizer", "lr_scheduler", "seed_everything",
            "ckpt_path", "weights_only")

@dataclass(frozen=True)
class Cell:
    """One run of the matrix. Its budget is `tokens_per_param` (D grows with N) or `tokens` (the same D
    at every size), never both."""

    model: str
    format_config: str
    seed: int
    fit: str  # the shared fit settings as canonical JSON
    tokens_per_param: float | None = None
    tokens: int | None = None

    @property
    def label(self) -> str:
        return Path(self.format_config).stem

    @property
    def key(self) -> str:
        """Names the cell in the store: readable, plus a hash of everything that defines the run."""
        fmt_text = Path(resolve_config(self.format_config)).read_text()
        # a tokens-per-parameter budget hashes as a bare number, as before absolute budgets existed, so
        # the cells of stores written then keep their keys
        budget = self.tokens_per_param if self.tokens is None else {"tokens": self.tokens}
        digest = hashlib.sha256(json.dumps([self.model, fmt_text, budget, self.seed, self.fit]).encode()).hexdigest()[:10]
        name = f"tpp{self.tokens_per_param:g}" if self.tokens is None else f"D{self.tokens}"
        return f"{self.model}/{self.label}/{name}/s{self.seed}/{digest}"

    @property
    def part_name(self) -> str:
        """The file name of this cell's own store under `<store stem>.parts/` (`--emit slurm`)."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:16] + ".db"

    @property
    def n_params(self) -> int:
        return non_embedding_params(get_size(self.model))

    @property
    def requested_tokens(self) -> int:
        """D asked for (the run rounds it to whole optimizer steps and stores what it trained)."""
        return requested_tokens(self.n_params, self.tokens, self.tokens_per_param)

    @property
    def flops(self) -> float:
        """Training compute 6 N D (Kaplan et al. 2020), N non-embedding."""
        return 6.0 * self.n_params * self.requested_tokens

    @property
    def budget_args(self) -> list[str]:
        if self.tokens is not None:
            return ["--model.tokens", str(self.tokens)]
        return ["--model.tokens_per_param", f"{self.tokens_per_param:g}"]

    def command(
        self, store: Path, fit_config: Path, program: tuple[str, ...] = ("bench",), *, resume: bool = False,
        keep_checkpoints: bool = False,
    ) -> list[str]:
        """The `bench fit` command of this cell; `resume` continues its run from the last checkpoint."""
        return [
            *program, "fit",
            "--config", str(fit_config),
            "--config", resolve_config(self.format_config),
            "--model.size", self.model,
            *self.budget_args,
            "--seed_everything", str(self.seed),
            "--store.path", str(store),
            "--store.cell", self.key,
            "--store.refit", "false",
            # said either way: `bench fit` keeps a run's checkpoint by default, a sweep deletes finished ones
            "--store.keep_checkpoints", "true" if keep_checkpoints else "false",
            *(["--ckpt_path", "last"] if resume else []),
        ]


def matrix_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="bench sweep", description="Run a benchmark matrix into the results store.", exit_on_error=False)
    parser.add_argument("--matrix", action="config", help="matrix YAML (shipped, e.g. matrix/cpu.yaml, or a path)")
    parser.add_argument("--models", type=list[str], required=True, help="model sizes")
    parser.add_argument("--formats", type=list[str], required=True, help="format configs")
    parser.add_argument("--tokens_per_param", type=list[float] | None, default=None,
                        help="token budgets per non-embedding parameter (or --tokens)")
    parser.add_argument("--tokens", type=list[int] | None, default=None,
                        help="token budgets D, the same for every size (or --tokens_per_param)")
    parser.add_argument("--seeds", type=list[int], default=[0])
    parser.add_argument("--model_seeds", type=dict[str, list[int]], default={},
                        help="per model size, the seeds its cells run with instead of --seeds")
    parser.add_argument("--fit", type=dict[str, Any], default={}, help="shared bench fit settings")
    parser.add_argument("--store", type=str | None, default=None, help="results store (default $CSLAWS_STORE or runs/results.db)")
    parser.add_argument("--jobs", type=int, default=1, help="cells run at a time")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true", help="list the cells and their FLOPs")
    parser.add_argument("--emit", type=str | None, default=None, help="'lines' (one command per line) or 'slurm'")
    parser.add_argument("--keep-checkpoints", "--keep_checkpoints", dest="keep_checkpoints", action="store_true",
                        help="keep the checkpoints of finished runs (passed to every fit as --store.keep_checkpoints)")
    return parser


def check_fit_given_once(argv: list[str]) -> None:
    """`--fit` replaces the fit settings given before it, whole (the parser does not merge mappings): with a
    matrix's `fit:`, the matrix's data and trainer settings were dropped unsaid. Refused where it would."""
    given = [arg for arg in argv if arg == "--fit" or arg.startswith("--fit=")]
    matrices = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--matrix"]
    matrices += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--matrix=")]
    with_fit = [m for m in matrices if "fit" in (yaml.safe_load(Path(m).read_text(encoding="utf-8")) or {})]
    if len(given) > 1 or (given and with_fit):
        where = f"the matrix {with_fit[0]}'s fit: settings" if given and with_fit else "the first --fit"
        raise BenchError(f"--fit replaces {where} whole, it does not add to them: give the fit settings in one "
                         "place (a copy of the matrix with the settings changed, or one --fit with all of them)")


def parse(argv: list[str]) -> Any:
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--matrix" and i + 1 < len(argv):
            argv[i + 1] = resolve_config(argv[i + 1])
        elif arg.startswith("--matrix="):
            argv[i] = "--matrix=" + resolve_config(arg.split("=", 1)[1])
    check_fit_given_once(argv)
    try:
        cfg = matrix_parser().parse_args(argv)
    except ArgumentError as err:  # `bench` reports it as one error, as `bench fit` does (its import is slow: here only)
        from cslaws.bench.lightning_cli import parse_text

        raise BenchError(f"sweep: {parse_text(err)} (the options: bench sweep --help)") from err
    check_distinct("models", cfg.models)
    for name in cfg.models:
        get_size(name)
    check_seeds("seeds", cfg.seeds)
    for name, seeds in cfg.model_seeds.items():
        if name not in cfg.models:
            raise BenchError(f"model_seeds names {name!r}, which is not among the matrix's models {cfg.models}")
        if not seeds:
            raise BenchError(f"model_seeds of {name!r} is empty; give at least one seed")
        check_seeds(f"model_seeds of {name!r}", seeds)
    # two spellings of one format file (a shipped name and its path) are the same cells
    check_distinct("formats", cfg.formats, key=lambda f: Path(resolve_config(f)).resolve())
    for f in cfg.formats:
        try:
            _, weight, activation = load_format_config(f)
        except ValueError as err:  # a BenchError (unknown config) or a file that is not a format config
            raise BenchError(f"the matrix's format {err}") from None  # the message starts with the file's path
        for name in cfg.models:
            try:
                check_fits(weight, activation, name)
            except BenchError as err:
                raise BenchError(f"the matrix pairs {f} with {name}: {err}") from None
    if (cfg.tokens_per_param is None) == (cfg.tokens is None):
        raise BenchError("the matrix must give its token budgets as exactly one of tokens_per_param (D grows with "
                         f"N) and tokens (one D for every size); got tokens_per_param={cfg.tokens_per_param}, "
                         f"tokens={cfg.tokens}")
    for name in ("tokens_per_param", "tokens"):
        budgets = getattr(cfg, name)
        if budgets is None:
            continue
        # `not t > 0` refuses NaN too, which no comparison admits; an infinite budget never ends
        if not budgets or any(not (t > 0 and math.isfinite(t)) for t in budgets):
            raise BenchError(f"{name} must be positive finite numbers; got {budgets}")
        check_distinct(name, budgets)
    cfg.fit = plain(cfg.fit)
    unknown = sorted(set(cfg.fit) - set(FIT_KEYS))
    if unknown:
        raise BenchError(f"the matrix's fit settings: unknown key(s) {', '.join(unknown)}; a bench fit config "
                         f"has: {', '.join(FIT_KEYS)}")
    check_not_owned(cfg.fit)
    given_store_path(cfg.store, "--store")  # an empty --store is refused with the matrix's other values
    # a section of null too: `bench fit` ended each cell in a traceback (`trainer: null`)
    for key, value in cfg.fit.items():
        if key in SECTIONS and not isinstance(value, dict):
            raise BenchError(f"the matrix's fit settings: {key} is {value!r}; it must be a mapping of bench fit's "
                             f"{key} options (such as {{val_check_interval: 0.25}} for trainer)")
    trainer = cfg.fit.get("trainer", {})
    try:
        check_trainer_settings(trainer)
        check_optimizer_settings(cfg.fit, where="fit.")
    except BenchError as err:
        raise BenchError(f"the matrix's fit settings: {err}") from None
    if cfg.dry_run and cfg.emit:
        raise BenchError(f"--dry-run and --emit {cfg.emit} together: --dry-run lists the cells, --emit prints their "
                         "commands; give one of them")
    if cfg.jobs < 1:
        raise BenchError(f"--jobs {cfg.jobs} is not allowed; it must be at least 1")
    if cfg.emit not in (None, "lines", "slurm"):
        raise BenchError(f"--emit {cfg.emit!r} is not allowed; use 'lines' or 'slurm'")
    return cfg


#: `bench fit` settings that every cell sets itself (`Cell.command`), and the matrix entry that sets them: in
#: the matrix's `fit` block they would be overridden without a word.
SWEEP_OWNED = {
    "seed_everything": "seeds", "ckpt_path": "the sweep (it resumes a cell's run)",
    "model.size": "models", "model.tokens": "tokens", "model.tokens_per_param": "tokens_per_param",
    "model.weight": "formats", "model.activation": "formats", "model.label": "formats",
    "store.path": "--store", "store.cell": "the sweep (each cell's key)", "store.refit": "the sweep",
    "store.keep_checkpoints": "--keep-checkpoints",
}


def check_not_owned(fit: dict[str, Any]) -> None:
    """Refuse `fit` settings that each cell sets for itself (SWEEP_OWNED)."""
    given = [key for key in fit if key in SWEEP_OWNED] + [
        f"{key}.{sub}" for key, value in fit.items() if isinstance(value, dict) for sub in value
        if f"{key}.{sub}" in SWEEP_OWNED]
    if given:
        owners = "; ".join(f"{key} by {SWEEP_OWNED[key]}" for key in given)
        raise BenchError(f"the matrix's fit settings set {', '.join(given)}, which each cell sets for itself ({owners}); "
                         "give them there, not under fit")


def check_distinct(name: str, values: list[Any], key: Callable[[Any], Any] = lambda v: v) -> None:
    """A matrix list is non-empty (an empty one makes no cells) and names each value once (a repeated one
    makes the same cells twice, which the sweep would train twice, perhaps at the same time)."""
    if not values:
        raise BenchError(f"the matrix's {name} is empty; give at least one")
    seen: set[Any] = set()
    for value in values:
        if key(value) in seen:
            raise BenchError(f"the matrix's {name} lists {value!r} twice; give each once: {values}")
        seen.add(key(value))


def check_seeds(name: str, seeds: list[int]) -> None:
    """Distinct seeds that `bench fit` can seed with."""
    check_distinct(name, seeds)
    for seed in seeds:
        if not min_seed_value <= seed <= max_seed_value:  # `bench fit`'s range (`check_seed`)
            raise BenchError(f"the matrix's {name} has seed {seed}, which is not allowed; seeds are whole numbers "
                             f"from {min_seed_value} to {max_seed_value}")


def plain(value: Any) -> Any:
    """A matrix's `fit` block as plain YAML data: jsonargparse parses a mapping with a `class_path` (a logger,
    a callback) into a Namespace, which neither JSON (the cell's key) nor YAML (its settings file) writes."""
    if isinstance(value, Namespace):
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def cells(cfg: Any) -> list[Cell]:
    fit = json.dumps(cfg.fit, sort_keys=True)
    budgets = ([{"tokens_per_param": t} for t in cfg.tokens_per_param] if cfg.tokens is None
               else [{"tokens": t} for t in cfg.tokens])
    return [
        Cell(m, f, s, fit, **b)
        for m in cfg.models
        for f in cfg.formats
        for b in budgets
        for s in cfg.model_seeds.get(m, cfg.seeds)
    ]


def write_fit_config(cfg: Any, directory: Path) -> Path:
    """The shared fit settings as `fit-<content hash>.yaml`: two sweeps with different settings on one
    store never overwrite each other's file, and the same settings always land in the same file."""
    text = yaml.safe_dump(cfg.fit, sort_keys=True)
    path = directory / f"fit-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
    path.write_text(text)
    return path


def check_cells_build(all_cells: list[Cell], cfg: Any) -> None:
    """Build each format's first cell as `bench fit` builds it (model, data, trainer, callbacks; nothing
    runs and no file is written): a value the matrix's `fit` block or a format config gives wrongly
    (`data.seq_len: -5`, `trainer.accelerator: tpu`) is refused here, once, not in every cell's log. Then
    every cell's budget is checked as `bench fit` checks it when training starts (`check_budgets`). For a dry run
    or `--emit` the cells run elsewhere, so the build uses this machine's CPU in place of the matrix's devices."""
    from cslaws.bench.lightning_cli import run_lightning_cli  # Lightning's import costs seconds: only here

    first = {}
    for cell in all_cells:
        first.setdefault(cell.format_config, cell)
    # Lightning's INFO lines ("GPU available", "Seed set") are about a trainer that never runs here
    with tempfile.TemporaryDirectory() as tmp, quiet_logs("lightning.pytorch", "lightning.fabric"):
        fit_config = write_fit_config(cfg, Path(tmp))
        for cell in first.values():
            args = cell.command(Path(tmp) / "check.db", fit_config, program=())[1:]  # no subcommand: build only
            if cfg.dry_run or cfg.emit:  # the cells run on other machines (a GPU cluster): this one's devices don't count
                args += ELSEWHERE
            try:
                cli = run_lightning_cli(args, run=False)
            except BenchError as err:
                raise BenchError(f"the matrix's cell {cell.key} does not build: {err}") from None
    check_budgets(all_cells, cli.datamodule, cli.trainer, passes=not (cfg.dry_run or cfg.emit))


#: Build-check settings for cells that run elsewhere (`--dry-run`, `--emit`): the machine that plans or writes
#: the script (a login node) need not have the accelerator the matrix asks for.
ELSEWHERE = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto"]


def check_budgets(all_cells: list[Cell], dm: Any, trainer: Any, passes: bool) -> None:
    """Each cell's budget as `bench fit` refuses it when training starts: less than one step, or steps that
    no validation ends on; with `passes`, more passes over the training split than `data.max_epochs` (the
    corpus is prepared for it, as the first cell would; a dry run or `--emit` leaves that to the cells). The
    shared `fit` settings make the step of every cell the same."""
    from cslaws.bench.module import budget_steps, step_tokens

    per_step = step_tokens(dm, trainer)
    if passes:
        dm.prepare_data()
        dm.setup("fit")
    for cell in all_cells:
        try:
            steps = budget_steps(cell.requested_tokens, per_step, trainer.val_check_interval, trainer.accumulate_grad_batches)
            if passes:
                dm.check_passes(steps * per_step // dm.seq_len)
        except (BenchError, ValueError) as err:  # ValueError: `align_to_validation`'s refusal
            raise BenchError(f"the matrix's cell {cell.key} cannot train: {err}") from None


def parts_dir(store: Path) -> Path:
    """Where `--emit slurm` puts the array tasks' own stores: `<store stem>.parts/` beside the store."""
    return store.parent / f"{store.stem}.parts"


@dataclass
class Plan:
    """What a sweep does with each cell: already done, run fresh, resume, or leave to a live process."""

    done: set[str]
    fresh: list[Cell]
    resume: list[Cell]
    live: list[tuple[Cell, RunRecord]]

    @property
    def todo(self) -> list[Cell]:
        return self.resume + self.fresh


def plan_cells(all_cells: list[Cell], stores: list[ResultsStore]) -> Plan:
    """Sort the cells by what the stores hold for them (finished, running with a live or dead process)."""
    keys = {c.key for c in all_cells}
    done: set[str] = set()
    running: dict[str, RunRecord] = {}
    failed: set[str] = set()
    for store in stores:
        done |= store.finished_cells() & keys
        for r in store.runs(status="running"):
            if r.cell is not None:
                running[r.cell] = r
        failed |= {r.cell for r in store.runs(status="failed")}
    host = socket.gethostname()
    fresh, resume, live = [], [], []
    for cell in all_cells:
        if cell.key in done:
            continue
        row = running.get(cell.key)
        if row is None:
            # a failed run stopped short (SIGTERM, a time limit) goes on from its checkpoint, in its row
            (resume if cell.key in failed else fresh).append(cell)
        elif process_gone(row, host):
            resume.append(cell)
        else:
            live.append((cell, row))
    return Plan(done, fresh, resume, live)


def run_cell(cell: Cell, store: Path, fit_config: Path, log_dir: Path, threads: int, resume: bool, keep: bool) -> int:
    log = log_dir / (cell.key.replace("/", "_") + ".log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    with open(log, "a" if resume else "w") as out:
        command = cell.command(store, fit_config, program=(sys.executable, "-m", "cslaws"), resume=resume,
                               keep_checkpoints=keep)
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def emit(
    todo: list[Cell], store: Path, fit_config: Path, kind: str, resume: set[str] = frozenset(), keep: bool = False
) -> str:
    """The cells' commands, one per line, or a SLURM array script whose tasks each write their own store."""
    if kind == "lines":
        return "\n".join(shlex.join(c.command(store, fit_config, resume=c.key in resume, keep_checkpoints=keep))
                         for c in todo)
    parts = parts_dir(store)
    lines = [shlex.join(c.command(parts / c.part_name, fit_config, resume=c.key in resume, keep_checkpoints=keep))
             for c in todo]
    body = "\n".join(f"  {shlex.quote(line)}" for line in lines)
    return (
        "#!/bin/bash\n"
        f"#SBATCH --array=0-{len(lines) - 1}\n"
        "#SBATCH --job-name=cslaws-sweep\n"
        "#SBATCH --gpus=1\n"
        f"# each task writes its own store under {parts}/; afterwards fold them into the store with\n"
        f"#   bench store merge {store} {parts}/*.db\n"
        f"mkdir -p {shlex.quote(str(parts))}\n"
        f"COMMANDS=(\n{body}\n)\n"
        'eval "${COMMANDS[$SLURM_ARRAY_TASK_ID]}"\n'
    )


def main(argv: list[str]) -> int:
    cfg = parse(argv[1:])
    console = rich_console()
    store_path = given_store_path(cfg.store, "--store")
    work_dir = store_path.parent / "sweep"
    if not cfg.dry_run:  # it holds the fit settings and the cells' logs: a folder that cannot be made stops here
        check_can_create(work_dir, f"--store {store_path}: the sweep's folder {work_dir}")
    if not (cfg.dry_run or cfg.emit):  # before the cells build, which prepares the corpus
        check_can_hold_store(store_path)
    all_cells = cells(cfg)
    check_cells_build(all_cells, cfg)
    if cfg.dry_run or cfg.emit:  # only reading: a missing or empty store holds nothing yet and is not created
        stores = [ResultsStore(store_path, create=False)] if store_path.exists() and store_path.stat().st_size else []
    else:
        stores = [ResultsStore(store_path)]
    parts = [ResultsStore(parts_dir(store_path) / c.part_name, create=False) for c in all_cells
             if (parts_dir(store_path) / c.part_name).is_file()]
    plan = plan_cells(all_cells, [*stores, *parts])
    todo, resume = plan.todo, {c.key for c in plan.resume}
    here = socket.gethostname()
    for cell, row in plan.live:
        why = ("its process is alive" if row.host == here
               else "a process on another host cannot be checked from here, and a live one must not be doubled")
        console.print(f"[yellow]not relaunched[/] {cell.key}: run {row.run_id} is running on {row.host} (pid {row.pid}); {why}")
    if cfg.dry_run:
        table = Table(title=f"{len(all_cells)} cells, {len(todo)} to run ({len(plan.resume)} to resume)")
        for col in ("cell", "N", "D", "FLOPs", "status"):
            table.add_column(col)
        live = {c.key for c, _ in plan.live}
        for c in all_cells:
            status = ("done" if c.key in plan.done else "resume" if c.key in resume
                      else "running (live)" if c.key in live else "to run")
            table.add_row(c.key, f"{c.n_params:,}", f"{c.requested_tokens:,}", f"{c.flops:.3g}", status)
        console.print(table)
        console.print(f"total to run: {sum(c.flops for c in todo):.3g} FLOPs")
        return 0
    work_dir.mkdir(parents=True, exist_ok=True)
    fit_config = write_fit_config(cfg, work_dir)
    if cfg.emit:
        if not todo:  # an array of no tasks is no script (SLURM refuses `--array=0--1`); said on stderr, not into it
            print(f"bench sweep: nothing to emit: each of the {len(all_cells)} cells is in the store or run by a live "
                  "process", file=sys.stderr)
            return 0
        print(emit(todo, store_path.resolve(), fit_config.resolve(), cfg.emit, resume, cfg.keep_checkpoints))
        return 0
    threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
    failed: list[str] = []
    columns = (TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(cfg.jobs) as pool:
        task = progress.add_task("", total=len(todo))
        futures = {pool.submit(run_cell, c, store_path, fit_config, work_dir, threads, c.key in resume,
                               cfg.keep_checkpoints): c for c in todo}
        for future in as_completed(futures):
            cell = futures[future]
            if future.result() != 0:
                failed.append(cell.key)
            progress.update(task, advance=1, description=cell.key)
    console.print(f"{len(todo) - len(failed)} cells finished ({len(plan.resume)} resumed), {len(failed)} failed, "
                  f"{len(plan.done)} already in the store")
    for key in failed:
        console.print(f"[red]failed[/] {key}: see {work_dir / (key.replace('/', '_') + '.log')}")
    if len(todo) > len(failed):
        print_leaderboard(store_path, {c.key for c in all_cells}, console)
    return 1 if failed else 0


def print_leaderboard(store_path: Path, keys: set[str], console: Console) -> None:
    """The leaderboard over this sweep's cells (runs chosen as every law command chooses them); a store
    that cannot support a fit yet says why, without failing the sweep."""
    from cslaws.laws import leaderboard as lb
    from cslaws.laws.select import select

    records = [r for r in ResultsStore(store_path, create=False).runs() if r.cell in keys]
    try:
        selection = select(records, source=f"this sweep's runs in {store_path}")
        board = lb.build(selection.records)
    except BenchError as err:
        console.print(f"[yellow]no leaderboard yet[/]: {err}")
        return
    for notice in selection.notices:
        console.print(f"note: {notice}")
    console.print(lb.render_table(board))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
