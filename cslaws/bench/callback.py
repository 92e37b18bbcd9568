"""Streams a run's losses into the results store as training goes (global rank 0 only), and checkpoints runs.

At fit start the run is written as `running` with everything that defines it; one train loss per optimizer
step (every `log_every_n_steps`) is buffered and flushed with each validation and each checkpoint; at the end
the run is marked `finished` with its final validation loss when it trained its whole budget, else `failed`
with what stopped it and at which step. The row always holds the steps, tokens and epochs really trained.
Once finished, nothing changes the run's status: the law refit that follows is a best-effort report.

A run resumed from its checkpoint (`bench fit ... --ckpt_path last`) keeps its one row: the callback's
checkpointed state names the row, which is set back to `running` with the new process, and the curve points
past the checkpoint's step are dropped (the resumed run logs them again).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import socket
import subprocess
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, Timer

import cslaws
from cslaws.bench.module import Diverged
from cslaws.bench.store import ResultsStore, RunRecord, check_can_hold_store, given_store_path, process_gone
from cslaws.console import console
from cslaws.errors import BenchError
from cslaws.formats.linear import storage_bits
from cslaws.laws.capacity import run_capacity, without_backend


def code_version() -> str:
    """The package version, plus the git commit (and `.dirty`) when running from a checkout."""
    root = Path(cslaws.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return cslaws.__version__
    if sha.returncode != 0:
        return cslaws.__version__
    return f"{cslaws.__version__}+g{sha.stdout.strip()}{'.dirty' if dirty.stdout.strip() else ''}"


REFIT_BOOTSTRAP = 30


def print_leaderboard_row(store: ResultsStore, run_id: int, label: str) -> None:
    """Refit the compression law over the store's runs comparable with run `run_id` and print `label`'s row."""
    from cslaws.laws import leaderboard as lb
    from cslaws.laws.select import runs_like

    out = console()
    try:
        board = lb.build(runs_like(store, run_id).records, k=REFIT_BOOTSTRAP)
    except BenchError as err:  # the runs cannot support a fit yet (FitError is one)
        out.print(f"[yellow]no law yet[/] for {label!r}: {err}")
        return
    out.print(lb.render_table(replace(board, rows=[r for r in board.rows if r.label == label])))


def checkpoint_dir(root: str | Path, key: str) -> Path:
    """The run's own checkpoint directory under `root`: the same key (sweep cell or config hash) finds it again."""
    return Path(root) / "checkpoints" / re.sub(r"[^\w.=-]+", "_", key)


def step_ended(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the batch `batch_idx` just done ended an optimizer step (the last of its accumulated batches)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0


class RunCheckpoint(ModelCheckpoint):
    """Keeps one checkpoint per run, `last.ckpt`, refreshed every `every_n_steps` optimizer steps or every
    `every_minutes` of training (one of the two; both None: none while training), at the end of training, and
    at the step where a limit (`trainer.max_steps`, `max_time`) or a SIGTERM stops a run short of its budget.

    The directory is set per run by `bench fit` (from the sweep cell, else from the resolved config), so that
    `--ckpt_path last` finds it. It holds the model, optimizer, LR schedule, loop and data position, the
    formats' specs and progress, and the store callback's state (the run's row).
    """

    def __init__(self, every_n_steps: int | None = None, every_minutes: float | None = 10.0) -> None:
        # each value first: 0 with every_minutes at its default was told to give only one of them
        for arg, value in (("every_n_steps", every_n_steps), ("every_minutes", every_minutes)):
            if value is not None and value <= 0:
                raise BenchError(f"checkpoint.{arg}={value} is not allowed; it must be positive (or null)")
        if every_n_steps is not None and every_minutes is not None:
            raise BenchError(
                f"checkpoint.every_n_steps={every_n_steps} and checkpoint.every_minutes={every_minutes}: give one "
                "of them and set the other to null"
            )
        super().__init__(
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_steps or 0,
            every_n_epochs=0,
            train_time_interval=timedelta(minutes=every_minutes) if every_minutes is not None else None,
            enable_version_counter=False,
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # Only at an optimizer step's end: with gradient accumulation, a save between micro-batches (a time
        # period falls anywhere) holds no accumulated gradient, and the resumed step would miss those batches.
        # A save that falls due meanwhile waits for the step's end.
        if not step_ended(trainer, batch_idx):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # A run that stops here, short of its budget, is saved here, inside its epoch: by `on_train_end` Lightning
        # has marked the epoch done, and a run resumed from that state would stop at once, never to finish.
        if stops_here(trainer) and trainer.global_step != self._last_global_step_saved:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning saves `last` at the end only when nothing was saved before; a run's last checkpoint must be
        # its final state, whatever the period. Only a run that trained its budget is saved here (see above).
        if trainer.global_step != self._last_global_step_saved and trainer.global_step >= pl_module.total_steps:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def stops_here(trainer: L.Trainer) -> bool:
    """Whether the fit loop stops after this optimizer step, before the epoch's end: `trainer.max_steps` is
    reached, `trainer.should_stop` is set (by `trainer.max_time`'s timer, which runs before the checkpoint
    callbacks, or by another callback), or a single process got SIGTERM (Lightning raises at this batch's end).
    The ranks of a DDP run learn of a SIGTERM only at the next batch's start, together: a save here by the rank
    that got it would wait for the others forever, so such a run resumes from its last periodic checkpoint."""
    sigterm = trainer.received_sigterm and trainer.world_size == 1
    return trainer.should_stop or 0 < trainer.max_steps <= trainer.global_step or sigterm


def run_identity(trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
    """What this process trains, in the store's columns: the model, its formats (wherever they run), the
    tokens of one optimizer step (batch x seq_len x accumulation x devices), the seed and the data it is
    compared on. A run resumed from a checkpoint must train the same (`check_resumes_as_trained`)."""
    dm = trainer.datamodule
    return {
        "label": pl_module.label, "model": pl_module.size_name, "n_params": pl_module.n_params,
        "weight": without_backend(pl_module.factory.weight.spec()),
        "activation": without_backend(pl_module.factory.activation.spec()),
        "tokens_per_step": pl_module.tokens_per_step, "seed": int(os.environ.get("PL_GLOBAL_SEED", "0")),
        "dataset": dm.provenance["dataset"], "tokenizer": dm.provenance["tokenizer"],
        "val_set": dm.provenance["val_set"], "vocab_size": dm.vocab_size, "seq_len": dm.seq_len,
    }


#: Options a resumed run may give otherwise: where it resumes from, how the checkpoint is read, and where it
#: stops (`config_key` leaves the same out of a run's checkpoint directory name).
RESUME_FREE = ("ckpt_path", "weights_only", "verbose", "trainer.max_steps", "trainer.max_time")


def check_resumes_as_trained(store: ResultsStore, run_id: int, identity: dict[str, Any], config_text: str = "") -> None:
    """A resumed run goes on training its own row: with other data settings, another tokens-per-step (a batch
    size or a device count of its own) or other formats it would finish a row that describes neither half of it
    (its steps, tokens and validation set would be the first half's). A checkpoint file brings back the model's
    settings, not the data's, the trainer's or the devices': refused here, before the row is touched.

    `config_text`, the resolved config as `bench fit` dumps it, must also give every option as the row's config
    does, but for `RESUME_FREE`: another validation interval plans another number of steps and schedule, and
    a batch of 16 accumulated twice runs other micro-batches than one of 32, at the same tokens per step."""
    row = store.record(run_id)
    if row is None or row.status == "finished":  # nothing to resume: `resume_run` says so
        return
    stored = {name: without_backend(getattr(row, name)) for name in identity}
    differ = [name for name in identity if stored[name] != identity[name]]
    changed = changed_options(row.config, config_text)
    # named by the options that differ, in the user's words; by the row's columns where no option says it
    # (a device count that `devices: auto` found otherwise)
    changes = changed or {name: (stored[name], identity[name]) for name in differ}
    if changes:
        was = ", ".join(f"{key}={old!r}" for key, (old, _) in changes.items())
        now = ", ".join(f"{key}={new!r}" for key, (_, new) in changes.items())
        raise BenchError(f"--ckpt_path: run {run_id} in {store.path} trained with {was}; these options give {now}: "
                         "resume it with the options it was trained with (its config is in the store), or train a new "
                         "run without --ckpt_path")


def changed_options(trained: str, given: str) -> dict[str, tuple[Any, Any]]:
    """The options, as dotted keys, whose values differ between two resolved `bench fit` configs as dumped (the
    row's and this command's), but for `RESUME_FREE`. An option one of them lacks (another code version's) is
    not compared, nor is anything when either config is missing (a run written by other code)."""
    old, new = _fit_options(trained), _fit_options(given)
    if not old or not new:
        return {}
    return {key: (old[key], new[key]) for key in sorted(old.keys() & new.keys())
            if old[key] != new[key] and key not in RESUME_FREE}


def _fit_options(text: str) -> dict[str, Any]:
    """The `fit:` section of a dumped config, flattened to dotted keys."""
    loaded = yaml.safe_load(text) if text else None
    section = loaded.get("fit") if isinstance(loaded, dict) else None
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    if isinstance(section, dict):
        walk(section, "")
    return flat


class StreamToStore(L.Callback):
    """Write this run and its loss curve to the results store.

    Args:
        path: the SQLite store; None is `$CSLAWS_STORE` or `runs/results.db`.
        refit: refit the law over the store at the end and print this format's leaderboard row.
        cell: the sweep cell this run fills (set by `bench sweep`).
        keep_checkpoints: False deletes the run's checkpoint directory once the run is finished.
    """

    def __init__(self, path: str | None = None, refit: bool = True, cell: str | None = None, keep_checkpoints: bool = True) -> None:
        self.path, self.refit, self.cell, self.keep_checkpoints = path, refit, cell, keep_checkpoints
        # before any work (the corpus is prepared, the logger writes): the store opens only when training starts
        check_can_hold_store(given_store_path(path, "store.path"))
        self.config_text = ""
        self.store: ResultsStore | None = None
        self.run_id: int | None = None
        self.finished = False
        self._resume: dict[str, Any] | None = None
        self._resume_step = 0
        self._pending: list[tuple[int, int, float | None, float | None]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "store": str(self.store.path.resolve()) if self.store else None}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # The loops' step is restored only after `on_fit_start`; the row's curve is cut at this step there.
        self._resume_step = int(checkpoint["global_step"])

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A resumed run restarts from here: the points up to here must be in the store, not in a lost buffer.
        if self.run_id is not None:
            self._flush()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.store = ResultsStore(self.path)
        resume = self._resume
        identity = run_identity(trainer, pl_module)
        if resume and resume["run_id"] is not None and resume["store"] == str(self.store.path.resolve()):
            # the row is this run's only once the store reopens it: a refused resume (a finished run, other
            # settings) must not let `on_exception` write over it
            check_resumes_as_trained(self.store, resume["run_id"], identity, self.config_text)
            self.store.resume_run(resume["run_id"], self._resume_step, host=socket.gethostname(), pid=os.getpid())
            self.run_id = resume["run_id"]
            self._fail_dead_rows()
            return
        factory = pl_module.factory
        weight_bits, activation_bits = storage_bits(pl_module.model)
        record = RunRecord(
            **{**identity, "weight": factory.weight.spec(), "activation": factory.activation.spec()},
            tokens=0,
            steps=0,
            epochs=0.0,
            bits_per_value=weight_bits,
            activation_bits=activation_bits,
            capacity=run_capacity(factory.weight.spec(), factory.activation.spec()),
            code_version=code_version(),
            config=self.config_text,
            cell=self.cell,
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        self.run_id = self.store.start_run(record)
        self._fail_dead_rows()

    def _fail_dead_rows(self) -> None:
        """A process killed without warning (SIGKILL, out of memory, a lost node) leaves its run `running`; a
        sweep cell that then starts again (from scratch, or from an older row's checkpoint) or a `bench fit`
        run again would leave it so forever. Every `running` row of this host whose process is gone is failed
        here, naming this run. Rows of other hosts cannot be checked and stay as they are."""
        host = socket.gethostname()
        for row in self.store.runs(status="running"):
            if row.run_id != self.run_id and row.host == host and process_gone(row, host):
                self.store.fail(row.run_id, f"its process (pid {row.pid} on {host}) ended without recording why "
                                            f"(killed); found by run {self.run_id}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # one point per optimizer step: the other micro-batches of an accumulated step have no step loss yet
        if self.run_id is None or not step_ended(trainer, batch_idx):
            return
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0:
            self._pending.append((step, step * pl_module.tokens_per_step, pl_module.step_loss, None))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_id is None or trainer.sanity_checking:
            return
        val = float(trainer.callback_metrics["val_loss"])
        self._pending.append((trainer.global_step, pl_module.trained_tokens, None, val))
        self._flush()
        self._record_trained(pl_module)

    def _flush(self) -> None:
        for point in self._pending:
            self.store.log_point(self.run_id, *point)
        self._pending.clear()

    def _record_trained(self, pl_module: L.LightningModule) -> None:
        # Before the loops restore a resumed run's step, the steps done are unknown here: the row keeps its own.
        if pl_module.trained_steps < self._resume_step:
            return
        self.store.set_trained(self.run_id, pl_module.trained_steps, pl_module.trained_tokens, pl_module.trained_epochs)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_id is None:
            return
        self._flush()
        self._record_trained(pl_module)
        stopped = stop_reason(trainer, pl_module)
        if stopped:
            self.store.fail(self.run_id, stopped)
            return
        self.store.finish(self.run_id, float(trainer.callback_metrics["val_loss"]))
        self.finished = True
        if not self.keep_checkpoints and trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            shutil.rmtree(trainer.checkpoint_callback.dirpath, ignore_errors=True)
        if self.refit:
            try:
                print_leaderboard_row(self.store, self.run_id, pl_module.label)
            except Exception as err:  # noqa: BLE001 - a report after the fact; the run is stored and stays finished
                console().print(f"[yellow]leaderboard refit failed[/] (run {self.run_id} stays finished): {type(err).__name__}: {err}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.run_id is None or self.finished:
            return
        self._flush()
        self._record_trained(pl_module)
        if isinstance(exception, Diverged):
            self.store.fail(self.run_id, str(exception))
            return
        where = f"stopped at step {trainer.global_step} of {pl_module.total_steps}"
        if trainer.world_size > 1:
            # only rank 0 writes: another rank's failure reaches it as a broken collective, whose cause is in
            # that rank's own output, not here
            where += f"; as rank 0 of {trainer.world_size} processes saw it"
        self.store.fail(self.run_id, f"{type(exception).__name__}: {exception} ({where})")


def stop_reason(trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
    """Why a run is not finished: it stopped before its budget or ran past it, or its last validation loss is
    missing or not a number (None when it trained exactly its budget and validated at its last step)."""
    step, total = trainer.global_step, pl_module.total_steps
    if step > total:
        return f"trained past its budget: {step} steps of {total}"
    if step == total:
        if "val_loss" not in trainer.callback_metrics:
            return f"not validated at its last step, {step}"
        val = float(trainer.callback_metrics["val_loss"])
        return None if math.isfinite(val) else f"diverged: non-finite validation loss {val} at step {step}"
    timer = next((cb for cb in trainer.callbacks if isinstance(cb, Timer)), None)
    if 0 < trainer.max_steps <= step:
        cause = f"trainer.max_steps={trainer.max_steps}"
    elif timer is not None and timer.time_remaining() <= 0:
        # Lightning's timer counts the training time of all the run's processes, a resumed one's included
        cause = f"trainer.max_time, {timedelta(seconds=round(timer.time_elapsed()))} of training in all"
    elif trainer.interrupted:
        cause = "interrupted"
    else:
        cause = "trainer.should_stop, set by a callback"
    return f"truncated: stopped at step {step} of {total} ({cause})"
