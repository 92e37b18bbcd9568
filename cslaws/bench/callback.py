"""Streams a run's losses into the results store as training goes (global rank 0 only).

At fit start the run is written as `running` with everything that defines it; train losses are buffered
and flushed with each validation; at the end the run is marked `finished` with its final validation loss
(or `failed` with the error), then the law is refit over the whole store and this format's leaderboard row
is printed.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import lightning as L

import cslaws
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.console import console


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


def print_leaderboard_row(store: ResultsStore, label: str) -> None:
    """Refit the compression law over every finished run in the store and print `label`'s row."""
    from cslaws.laws import leaderboard as lb
    from cslaws.laws.fit import FitError

    out = console()
    try:
        board = lb.build(store.runs(), k=REFIT_BOOTSTRAP)
    except FitError as err:
        out.print(f"[yellow]no law yet[/] for {label!r}: {err}")
        return
    out.print(lb.render_table(replace(board, rows=[r for r in board.rows if r.label == label])))


class StreamToStore(L.Callback):
    """Write this run and its loss curve to the results store.

    Args:
        path: the SQLite store; None is `$CSLAWS_STORE` or `runs/results.db`.
        refit: refit the law over the store at the end and print this format's leaderboard row.
        cell: the sweep cell this run fills (set by `bench sweep`).
    """

    def __init__(self, path: str | None = None, refit: bool = True, cell: str | None = None) -> None:
        self.path, self.refit, self.cell = path, refit, cell
        self.config_text = ""
        self.store: ResultsStore | None = None
        self.run_id: int | None = None
        self._pending: list[tuple[int, int, float | None, float | None]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.store = ResultsStore(self.path)
        factory, dm = pl_module.factory, trainer.datamodule
        record = RunRecord(
            label=pl_module.label,
            model=pl_module.size_name,
            n_params=pl_module.n_params,
            tokens=pl_module.tokens,
            bits_per_value=factory.weight.bits_per_value,
            weight=factory.weight.spec(),
            activation=factory.activation.spec(),
            seed=int(os.environ.get("PL_GLOBAL_SEED", "0")),
            dataset=dm.provenance["dataset"],
            tokenizer=dm.provenance["tokenizer"],
            code_version=code_version(),
            config=self.config_text,
            cell=self.cell,
        )
        self.run_id = self.store.start_run(record)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self.run_id is None or trainer.global_step % trainer.log_every_n_steps:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._pending.append((trainer.global_step, trainer.global_step * pl_module.tokens_per_step, float(loss), None))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_id is None or trainer.sanity_checking:
            return
        val = float(trainer.callback_metrics["val_loss"])
        self._pending.append((trainer.global_step, trainer.global_step * pl_module.tokens_per_step, None, val))
        self._flush()

    def _flush(self) -> None:
        for point in self._pending:
            self.store.log_point(self.run_id, *point)
        self._pending.clear()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.run_id is None:
            return
        self._flush()
        if trainer.interrupted or "val_loss" not in trainer.callback_metrics:
            self.store.fail(self.run_id, "training stopped before its final validation")
            return
        self.store.finish(self.run_id, float(trainer.callback_metrics["val_loss"]))
        if self.refit:
            print_leaderboard_row(self.store, pl_module.label)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.run_id is not None:
            self._flush()
            self.store.fail(self.run_id, f"{type(exception).__name__}: {exception}")
