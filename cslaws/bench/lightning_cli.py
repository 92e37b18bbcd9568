"""`bench fit / validate / test`: LightningCLI over `LanguageModel` and `TextDataModule`.

Defaults: a rich progress bar, a CSV logger under `runs/`, gradient clipping at 1, one epoch sized to the
token budget with validation every fifth of it, the results-store callback (`--store.*`) and a checkpoint
(`--checkpoint.*`, `last.ckpt` every 10 minutes and at the end) in a directory of the run's own, named by its
sweep cell or else by a hash of its resolved config, so that the same command with `--ckpt_path last` resumes.

A run that does not end `finished` (stopped before its budget, diverged) makes `bench fit` exit 1 with one line
that says why; the store holds it as `failed`.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
import zipfile
from pathlib import Path

import torch
from jsonargparse import ArgumentError, Namespace
from lightning.fabric.connector import _convert_precision_to_unified_args
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from cslaws.bench.budget import check_optimizer_settings, check_trainer_settings
from cslaws.bench.callback import RunCheckpoint, StreamToStore, checkpoint_dir, stop_reason
from cslaws.bench.cli import LIGHTNING_COMMANDS
from cslaws.bench.data import TextDataModule
from cslaws.bench.module import Diverged, LanguageModel, budget_steps, step_tokens
from cslaws.console import console
from cslaws.errors import BenchError
from cslaws.formats import FORMATS, Format
from cslaws.formats.linear import check_runs_on


class ProgressBar(RichProgressBar):
    """Lightning's rich progress bar without `v_num`, the logger's run counter, which is not a metric."""

    def get_metrics(self, trainer, pl_module) -> dict:
        return {k: v for k, v in super().get_metrics(trainer, pl_module).items() if k != "v_num"}


class SaveConfigOnStart(SaveConfigCallback):
    """LightningCLI's `config.yaml` in the run's log folder, written once the run starts training or scoring
    rather than at setup: a run refused in setup or at its start (a budget that needs more passes over the
    corpus than allowed, the resume of a finished run) logs no config of a run that never ran, and does not
    overwrite the config of the run it tried to resume. (Lightning still makes the logger's empty folder.)"""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        pass

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().setup(trainer, pl_module, "fit")

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().setup(trainer, pl_module, "validate")  # a no-op within a fit, whose training start wrote it

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().setup(trainer, pl_module, "test")


TRAINER_DEFAULTS = {
    "max_epochs": 1,
    "val_check_interval": 0.2,
    "gradient_clip_val": 1.0,
    "log_every_n_steps": 10,
    "num_sanity_val_steps": 0,
    "enable_checkpointing": True,
    "default_root_dir": "runs",
    "callbacks": [ProgressBar(leave=True)],
    "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "csv"}},
}


class BenchCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # no `predict`: a language model's data module here has training and validation windows only
        return {name: keys for name, keys in LightningCLI.subcommands().items() if name in LIGHTNING_COMMANDS}

    def add_default_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # an int only: Lightning's true (a random seed) and false (no seeding) would leave the data order,
        # which follows the seed (`data.seed`), and the store's record of the seed undetermined
        parser.add_argument(
            "--seed_everything",
            type=int,
            default=self.seed_everything_default,
            help=f"The seed of the weights and of the data order: an integer in [{min_seed_value}, {max_seed_value}].",
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.vocab_size", "model.vocab_size")
        parser.link_arguments("seed_everything", "data.seed")
        parser.add_lightning_class_args(StreamToStore, "store")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        # `bench` hands over the whole command line with its config paths resolved; sys.argv holds the same
        # words unresolved, which is not the mix-up LightningCLI warns about. sys.argv stays as it is:
        # DDP relaunches the command from it.
        try:
            self.config = parser.parse_args(args)
        except ArgumentError as err:  # the parser runs with exit_on_error=False: `bench` reports it
            raise BenchError(parse_message(err, args)) from err
        command = self.config.get("subcommand")
        config = self.config[command] if command else self.config
        check_seed(config.seed_everything)
        check_optimizer_settings(config)
        check_ckpt_path(config.get("ckpt_path"))
        if config.get("weights_only") is not None and config.get("ckpt_path") is None:  # it would go unused, unsaid
            raise BenchError(f"--weights_only {str(config.weights_only).lower()} sets how a checkpoint is loaded; without "
                             "--ckpt_path none is: give --ckpt_path too, or leave it out")
        if command in SCORING_COMMANDS:
            check_scored_checkpoint(command, config.ckpt_path)

    def instantiate_classes(self) -> None:
        """Build the model, data module, formats and callbacks; a value they refuse is the user's input.

        Nothing has run yet, so a ValueError, KeyError or FileNotFoundError from a constructor is a value
        the user gave (or a config set), reported with the component it belongs to."""
        try:
            super().instantiate_classes()
        except BenchError:  # from `instantiate_trainer`, already named
            raise
        except (ValueError, KeyError, FileNotFoundError) as err:
            config = self.config[self.subcommand] if self.subcommand else self.config
            raise BenchError(instantiation_message(err, config)) from err

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The Trainer, whose refusals (an accelerator this machine lacks, or whose package it lacks, a bad
        precision) are the user's."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if config.trainer.enable_progress_bar is False:
            # asked for no bar: with the default one in its callbacks Lightning refused the option
            callbacks = [cb for cb in self.trainer_defaults["callbacks"] if not isinstance(cb, ProgressBar)]
            self.trainer_defaults = {**self.trainer_defaults, "callbacks": callbacks}
        root = Path(config.trainer.default_root_dir or ".")
        if root.exists() and not root.is_dir():
            # found only when the run's checkpoint is written, after its training, as a `failed` row
            raise BenchError(f"trainer.default_root_dir={root} is a file; give a folder (or a new path) for the "
                             "run's logs and checkpoints")
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, ModuleNotFoundError) as err:
            raise BenchError(f"trainer: {err}") from err
        except TypeError as err:
            # Lightning refuses some `devices` values (-2, or any but a positive count on CPU) with a TypeError;
            # only one raised by its device parsing is the user's, any other is a bug and keeps its traceback
            if innermost_module(err).startswith(_DEVICE_PARSING):
                raise BenchError(f"trainer.devices={config.trainer.devices!r}: {err}") from err
            raise
        check_precision_runs(config.trainer.precision, trainer)
        loop = trainer.fit_loop
        check_trainer_settings({"accumulate_grad_batches": trainer.accumulate_grad_batches,
                                "log_every_n_steps": trainer.log_every_n_steps,
                                # a time interval leaves the Trainer without one
                                "val_check_interval": getattr(trainer, "val_check_interval", config.trainer.val_check_interval),
                                "fast_dev_run": trainer.fast_dev_run, "overfit_batches": trainer.overfit_batches,
                                "max_epochs": loop.max_epochs, "min_epochs": loop.min_epochs, "min_steps": loop.min_steps,
                                "limit_train_batches": trainer.limit_train_batches,
                                "limit_val_batches": trainer.limit_val_batches,
                                "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
                                "gradient_clip_val": trainer.gradient_clip_val, "max_steps": trainer.max_steps,
                                "num_sanity_val_steps": config.trainer.num_sanity_val_steps})
        return trainer

    def before_fit(self) -> None:
        # the model checks its budget again in `setup`; here it is checked once, before DDP starts its processes
        # (20 s later, and each of them would say it)
        budget_steps(self.model.requested_tokens, step_tokens(self.datamodule, self.trainer), self.trainer.val_check_interval,
                     self.trainer.accumulate_grad_batches)
        store_cb = next(cb for cb in self.trainer.callbacks if isinstance(cb, StreamToStore))
        store_cb.config_text = self.parser.dump(self.config, skip_none=False)
        self.check_checkpoint_file()
        self.check_formats_run()
        self.point_checkpoint()
        if self.config[self.subcommand].ckpt_path == "last" and not self.last_checkpoint().exists():
            # what a sweep's relaunch of a cell killed before its first checkpoint wants; said, not silent
            console().print(f"--ckpt_path last: no checkpoint of this run at {self.last_checkpoint()}; it trains "
                            "from the start, as a new run")

    def before_validate(self) -> None:
        self.check_scored()
        self.check_formats_run()

    def before_test(self) -> None:
        self.check_scored()
        self.check_formats_run()

    def check_formats_run(self) -> None:
        """The formats run on the trainer's device, where a Triton kernel may refuse what the torch path takes
        (`check_runs_on`): checked before any work, else found at the first step, after the data is prepared."""
        device = self.trainer.strategy.root_device
        if device.type == "cuda" and getattr(self.trainer.strategy.launcher, "_start_method", None) == "fork":
            return  # a forked process cannot use CUDA once its parent has: there the first step finds it
        try:
            check_runs_on(self.model.model, device)
        except ValueError as err:
            raise BenchError(f"the formats cannot run on {device} (trainer.accelerator): {err}") from err

    def point_checkpoint(self) -> None:
        """Point the checkpoint callback at the run's own directory, named by its sweep cell, else by
        `config_key`, where `--ckpt_path last` finds it (`bench fit` resumes from it, `bench validate` scores it)."""
        config = self.config[self.subcommand]
        key = config.store.cell or config_key(config)
        self.trainer.checkpoint_callback.dirpath = str(checkpoint_dir(self.trainer.default_root_dir, key))

    def check_scored(self) -> None:
        """For `--ckpt_path last`, point the checkpoint callback at the run's own last.ckpt, which must exist:
        Lightning alone looks in no run's directory, warns, and scores the untrained model. A checkpoint file
        brings its own model options (LightningCLI parses its hyperparameters over the command's): say which
        model is scored, as the options given for it are not used."""
        if self.config[self.subcommand].ckpt_path != "last":
            self.check_checkpoint_file()
            model = self.model
            console().print(f"bench {self.subcommand}: the checkpoint's model, [bold]{model.label}[/] {model.size_name} "
                            f"(weight {model.factory.weight!r}, activation {model.factory.activation!r}); a checkpoint "
                            "file sets the model, and model options given with it are not used")
            return
        self.point_checkpoint()
        if not self.last_checkpoint().exists():
            raise BenchError(f"--ckpt_path last: no checkpoint of this run at {self.last_checkpoint()}; give the "
                             "options the run was trained with (or its --store.cell), or a checkpoint file")

    def check_checkpoint_file(self) -> None:
        """A checkpoint given by its path suits this command's trainer and data, checked before any work (else
        Lightning fails as it loads it, once the corpus is prepared, with a traceback): a folder is a sharded
        checkpoint, which FSDP and DeepSpeed read and other strategies try to open as a file; and a file's
        model has the data's vocabulary (LightningCLI builds the model from the file's options, but with the
        data's vocab_size, which is linked to it, so its embedding would not load)."""
        ckpt_path = self.config[self.subcommand].ckpt_path
        if not names_a_path(ckpt_path):
            return
        if get_filesystem(ckpt_path).isdir(ckpt_path):
            if not isinstance(self.trainer.strategy, (FSDPStrategy, DeepSpeedStrategy)):
                raise BenchError(f"--ckpt_path {ckpt_path} is a folder: a sharded checkpoint, which only --trainer.strategy "
                                 "fsdp or deepspeed reads; give a checkpoint file, such as a run's last.ckpt")
            return
        if not Path(ckpt_path).is_file():  # a remote file: its options were not read either
            return
        options = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
        trained, given = options.get("vocab_size"), self.model.hparams.vocab_size
        if trained is not None and trained != given:
            raise BenchError(f"--ckpt_path {ckpt_path}: its model has a vocabulary of {trained} tokens, this command's "
                             f"data {given} (data.vocab_size); give the data options the run was trained with")

    def last_checkpoint(self) -> Path:
        """The last.ckpt that `--ckpt_path last` loads, once `point_checkpoint` has named the run's directory."""
        return Path(self.trainer.checkpoint_callback.dirpath) / f"{RunCheckpoint.CHECKPOINT_NAME_LAST}{RunCheckpoint.FILE_EXTENSION}"

    def fit(self, model: LanguageModel, **kwargs) -> None:
        """`Trainer.fit`; a diverged run or one stopped by SIGTERM (stored `failed` by the store callback) ends
        `bench` with one line, exit code 1: neither is a bug, so no traceback. (Lightning's SIGTERMException
        is a bare SystemExit, exit code 0, which would tell a sweep that the run succeeded.)"""
        try:
            self.trainer.fit(model, **kwargs)
        except Diverged as err:
            raise SystemExit(f"bench: {model.label} {model.size_name}: {err}; stored as failed (lower --model.lr?)") from None
        except SIGTERMException:
            # saved at the step it stopped at, unless the signal came inside a step of accumulated micro-batches or
            # inside a validation: then only an earlier periodic checkpoint is there, if any
            resume = ("resume from its last checkpoint: --ckpt_path last" if self.last_checkpoint().exists() else
                      "no checkpoint was written, as it stopped inside a step or a validation before any periodic one: "
                      "train it again")
            raise SystemExit(f"bench: {model.label} {model.size_name}: stopped by SIGTERM at step {model.trained_steps} "
                             f"of {model.total_steps}; stored as failed ({resume})") from None

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        model, dm = self.model, self.datamodule
        head = f"[bold]{model.label}[/] {model.size_name}: N={model.n_params:,} D={model.trained_tokens:,} tokens ({model.trained_steps} steps)"
        stopped = stop_reason(self.trainer, model)
        if stopped:
            resume = " (resume it: --ckpt_path last)" if model.trained_steps < model.total_steps else ""
            console().print(f"{head}; [red]{stopped}[/], stored as failed{resume}")
            raise SystemExit(1)
        val = float(self.trainer.callback_metrics["val_loss"])
        console().print(f"{head}; final val_loss={val:.4f} nats vs unigram entropy {dm.entropy:.4f} nats")


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
        save_config_callback=SaveConfigOnStart,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False, **({"prog": "bench"} if run else {})},
    )


#: Lightning's modules that parse `trainer.devices`, by the names their TypeErrors are raised in.
_DEVICE_PARSING = ("lightning.fabric.accelerators.", "lightning.fabric.utilities.device_parser")


def check_precision_runs(asked: str | int | None, trainer: Trainer) -> None:
    """The precision asked for is the one the trainer runs: Lightning substitutes some with a warning (16-bit AMP
    runs as bf16 on a CPU), and the run's record would hold the one asked for, not what ran."""
    if asked is None:
        return
    with warnings.catch_warnings():  # Lightning warned of a legacy name such as 16 or bf16 already
        warnings.simplefilter("ignore")
        unified = str(_convert_precision_to_unified_args(asked))
    if unified != trainer.precision:
        raise BenchError(f"trainer.precision={asked!r} runs as {trainer.precision!r} on this {trainer.strategy.root_device.type} "
                         f"(Lightning's substitute); give --trainer.precision {trainer.precision}, or a device that runs {unified}")


def innermost_module(err: BaseException) -> str:
    """The module of the frame that raised `err`."""
    tb = err.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_globals.get("__name__", "")


#: Lines of a jsonargparse message that describe its machinery rather than the user's value.
_PARSE_NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
                "Expected a <class 'NoneType'>", "Problem with given class_path")


def check_seed(seed: int) -> None:
    """Lightning seeds numpy, which takes only [0, 2**32 - 1]; refused here, before any work, not in its traceback."""
    if not min_seed_value <= seed <= max_seed_value:
        raise BenchError(f"--seed_everything={seed} is not allowed; give an integer in [{min_seed_value}, {max_seed_value}] "
                         "(the data order follows it, and the store records it)")


#: `ckpt_path` values that Lightning resolves itself (`last` with no checkpoint yet starts fresh: a sweep
#: resumes its cells with it), and `registry[:name]`; any other value is a checkpoint file.
_CKPT_KEYWORDS = ("last", "best", "hpc")


def names_a_path(ckpt_path: str | None) -> bool:
    """Whether `--ckpt_path` names a checkpoint by its path, not by one of Lightning's keywords."""
    return not (ckpt_path is None or ckpt_path in _CKPT_KEYWORDS or ckpt_path.split(":")[0] == "registry")


def check_ckpt_path(ckpt_path: str | None) -> None:
    """A checkpoint file that does not exist is refused before the trainer is built, not after setup, and so is
    `best`, which Lightning refuses with a traceback: a run keeps no best checkpoint."""
    if ckpt_path == "best":
        raise BenchError("--ckpt_path best: a run keeps its last.ckpt only, no best checkpoint; give last or a "
                         "checkpoint file")
    if not names_a_path(ckpt_path):
        return
    fs = get_filesystem(ckpt_path)
    if not fs.exists(ckpt_path):  # Lightning's own test when it loads the file
        raise BenchError(f"--ckpt_path {ckpt_path}: no such checkpoint file; give an existing file or one of "
                         f"{', '.join(_CKPT_KEYWORDS)}, registry[:name]")
    if fs.isdir(ckpt_path):  # a sharded checkpoint (FSDP, DeepSpeed): checked against the strategy once it is built
        return
    # torch.save writes a zip archive; anything else fails deep in torch.load (an EOFError or an unpickling
    # error), after the model and data were built
    with fs.open(ckpt_path, "rb") as f:
        if not zipfile.is_zipfile(f):
            raise BenchError(f"--ckpt_path {ckpt_path}: not a checkpoint (a file that torch.save wrote, such as "
                             "a run's last.ckpt)")


#: The commands that score a trained model: they need its checkpoint.
SCORING_COMMANDS = ("validate", "test")


def config_key(config: Namespace) -> str:
    """A hash of a resolved run config without how it is loaded (`ckpt_path`, `weights_only`) and `verbose`
    (which only `validate` and `test` have), and with the trainer's stopping limits (`max_steps`, `max_time`) at
    their defaults (`callback.RESUME_FREE`): the same run, resumed or not, stopped short by a limit and resumed
    with another or none, or scored by `bench validate`, has the same key (the defaults hash as before, so
    existing checkpoints still resume)."""
    config = config.clone()
    config.ckpt_path = None
    if "weights_only" in config:
        config.weights_only = None
    config.pop("verbose", None)
    if "trainer" in config:
        config.trainer.max_steps, config.trainer.max_time = -1, None
    text = json.dumps(config.as_dict(), sort_keys=True, default=str)
    return "config-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def check_scored_checkpoint(command: str, ckpt_path: str | None) -> None:
    """`bench validate` / `bench test` score a trained run's checkpoint: a file, or `last` (the last.ckpt of the run
    that `bench fit` with the same options trained). Without one Lightning would score the untrained model."""
    if ckpt_path is None:
        raise BenchError(f"bench {command} scores a trained run: give --ckpt_path, a checkpoint file or `last` (the "
                         "last.ckpt of the run that `bench fit` with these same options trained)")
    if ckpt_path in _CKPT_KEYWORDS and ckpt_path != "last":
        raise BenchError(f"--ckpt_path {ckpt_path}: bench {command} scores a checkpoint file or `last`; a run keeps "
                         "its last.ckpt only (no best, no HPC checkpoint)")


def parse_message(err: ArgumentError, args: list[str]) -> str:
    """`parse_text`, plus where to look."""
    command = next((a for a in args if a in LIGHTNING_COMMANDS), None)
    return f"{parse_text(err)}\n(the options: {f'bench {command} --help' if command else 'bench --help'})"


def parse_text(err: ArgumentError) -> str:
    """jsonargparse's refusal on one line: an unknown format named as such, else its own message joined."""
    return unknown_format(str(err)) or one_line(str(err))


#: jsonargparse's words for a class given by a name that is neither a subclass it knows nor an import path.
_UNKNOWN_CLASS = re.compile(r"Expected a dot import path string: ([^.\s]+)$", re.MULTILINE)


def unknown_format(message: str) -> str | None:
    """`<key>: unknown format '<name>'` and the names allowed, when `message` refuses a format by a name that
    is no Format class: jsonargparse says only that the name is no path (a format is taken by the class
    name of a registered format, `Int`, not by its short name `int`)."""
    name = _UNKNOWN_CLASS.search(message)
    if name is None or f"<class '{Format.__module__}.{Format.__qualname__}'>" not in message:
        return None
    key = ".".join(re.findall(r'Parser key "([^"]+)"', message))  # a nested format's key follows its parent's
    known = ", ".join(sorted(cls.__name__ for cls in FORMATS.values()))
    return f"{key}: unknown format {name.group(1)!r}; formats are given by class name: {known}"


def one_line(message: str) -> str:
    """jsonargparse's message on one line: its own spans 3-10 indented lines (a union type lists every
    alternative, the None one included, and the value's Python type)."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    kept = [line for line in lines if not line.startswith(_PARSE_NOISE)]
    if any("Got value:" in line for line in kept):  # the value is already named
        kept = [line for line in kept if not line.startswith("Given value:")]
    text = ""
    for line in kept or [message]:  # "key:" introduces the next line; other lines are separate problems
        text += line if not text else (" " if text.endswith(":") else "; ") + line
    return text


def instantiation_message(err: BaseException, config: Namespace) -> str:
    """`<component> (<class>): <the constructor's own message>`, e.g. `model.weight (Int): bits must be ...`.

    jsonargparse re-raises a format's error as "Does not validate against any of the Union subtypes" with
    the constructor's error as its cause; the cause is the message the user needs."""
    key = failing_component(err)
    while err.__cause__ is not None:
        err = err.__cause__
    message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    if key is None:
        return message
    value = config.get(key) if isinstance(config, Namespace) else None
    class_path = value.get("class_path") if isinstance(value, Namespace) else None
    return f"{key} ({class_path.rsplit('.', 1)[-1]}): {message}" if class_path else f"{key}: {message}"


def failing_component(err: BaseException) -> str | None:
    """The config key (`model`, `data`, `model.weight`, ...) that jsonargparse was building when `err`
    reached the caller: the `component` of the innermost `instantiate` frame on its traceback (jsonargparse
    keeps no other record of it; an outer frame's `component` is the last one its own loop built)."""
    key, tb = None, err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        component = frame.f_locals.get("component") if frame.f_code.co_name == "instantiate" else None
        if isinstance(getattr(component, "dest", None), str):
            key = component.dest
        tb = tb.tb_next
    return key
