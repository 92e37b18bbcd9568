"""`bench fit / validate / test`: LightningCLI over `LanguageModel` and `TextDataModule`.

Defaults: a rich progress bar, a CSV logger under `runs/`, gradient clipping at 1, one epoch sized to the
token budget with validation every fifth of it, and the results-store callback (`--store.*`).
"""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from cslaws.bench.callback import StreamToStore
from cslaws.bench.data import TextDataModule
from cslaws.bench.module import LanguageModel
from cslaws.console import console


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without `v_num`, the logger's run counter, which is not a metric."""

    def get_metrics(self, trainer, pl_module) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "val_check_interval": 0.2,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": False,
    "default_root_dir": "runs",
    "callbacks": [ProgressBar(leave=True)],
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "csv"}},
}


class BenchCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size")
        parser.link_arguments("seed_everything", "data.seed")
        parser.add_lightning_class_args(StreamToStore, "store")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        # `bench` hands over the whole command line with its config paths resolved; sys.argv holds the same
        # words unresolved, which is not the mix-up LightningCLI warns about. sys.argv stays as it is:
        # DDP relaunches the command from it.
        self.config = parser.parse_args(args)

    def before_fit(self) -> None:
        store_cb = next(cb for cb in self.trainer.callbacks if isinstance(cb, StreamToStore))
        store_cb.config_text = self.parser.dump(self.config, skip_none=False)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        model, dm = self.model, self.datamodule
        val = self.trainer.callback_metrics.get("val_loss")
        console().print(
            f"[bold]{model.label}[/] {model.size_name}: N={model.n_params:,} D={model.tokens:,} tokens "
            f"({model.total_steps} steps); final val_loss={float(val):.4f} nats "
            f"vs unigram entropy {dm.entropy:.4f} nats"
        )


def run_lightning_cli(args: list[str], run: bool = True, **trainer_overrides) -> BenchCLI:
    """Parse `args` (a subcommand first when `run`) and run it; `run=False` only parses and builds."""
    torch.set_float32_matmul_precision("high")
    return BenchCLI(
        LanguageModel,
        TextDataModule,
        args=args,
        run=run,
        seed_everything_default=0,
        trainer_defaults={**TRAINER_DEFAULTS, **trainer_overrides},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": "bench"} if run else {},
    )
