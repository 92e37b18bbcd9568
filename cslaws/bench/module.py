"""The LightningModule that trains one Llama of the family over one (weight, activation) format pair.

The token budget D is first-class: the run takes `tokens` (or `tokens_per_param` times N) and the number of
optimizer steps follows from it, steps = D / (sequences per step x sequence length), aligned down so that a
validation falls on the last step. That one step count sizes the single training epoch, the LR schedule and
the formats' progress (sparsity ramps); what the store records is the step count really trained.

The formats are kept in the hyperparameters as their specs (class_path and init_args), so that
`LanguageModel.load_from_checkpoint(path)` rebuilds the same compressed model, at the formats' progress of
the checkpoint.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric

from cslaws.bench.budget import requested_tokens
from cslaws.errors import BenchError
from cslaws.formats.base import Format
from cslaws.formats.linear import LinearFactory
from cslaws.laws.capacity import check_fits, format_from_spec, without_backend
from cslaws.models.llama import Llama, get_size

DEFAULT_TOKENS_PER_PARAM = 3.0


def cosine_with_warmup(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to `min_ratio` at `total` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Diverged(RuntimeError):
    """The training loss became non-finite: the run ends, stored `failed` with the step and the value."""

    def __init__(self, step: int, total: int, value: float) -> None:
        super().__init__(f"diverged: non-finite training loss {value} at step {step} of {total}")
        self.step, self.total, self.value = step, total, value


def step_tokens(dm: Any, trainer: L.Trainer) -> int:
    """Tokens per optimizer step: batch_size x seq_len x devices x accumulate_grad_batches."""
    return dm.tokens_per_batch * trainer.world_size * trainer.accumulate_grad_batches


def budget_steps(requested_tokens: int, per_step: int, val_check_interval: float | int, accumulate: int = 1) -> int:
    """The optimizer steps a budget trains: whole steps of `per_step` tokens, aligned so that the last
    validation falls on the last step (`align_to_validation`; `accumulate` batches to a step)."""
    steps = requested_tokens // per_step
    if steps < 1:
        raise BenchError(
            f"the token budget of {requested_tokens} tokens is smaller than one step of {per_step} tokens "
            "(batch_size x seq_len x devices x accumulate_grad_batches); raise tokens or tokens_per_param"
        )
    return align_to_validation(steps, val_check_interval, accumulate)


def format_progress(step: int, total: int) -> float:
    """The formats' progress during optimizer step `step` (from 0) of `total`: 0 at the first step and 1 at
    the last, so that a schedule that ends with training (a pruning ramp with ramp_end=1) trains its last
    step, and is validated and stored, at its end state."""
    return 1.0 if total <= 1 else min(1.0, step / (total - 1))


class LanguageModel(L.LightningModule):
    """Next-token training of a Llama whose block linears compute over the given formats.

    Args:
        size: a name from `cslaws.models.llama.SIZES`.
        label: the format's name in results and leaderboards (configs set it to their file stem).
        weight: format of every block linear's weight; None is dense. `load_from_checkpoint` passes the
            format's spec (a dict), which is rebuilt into the format.
        activation: format of every block linear's input; None is dense (a spec dict, as for `weight`).
        tokens: training budget D in tokens; or give `tokens_per_param` (D = that x N).
        tokens_per_param: training budget as tokens per non-embedding parameter (when neither is given:
            DEFAULT_TOKENS_PER_PARAM).
        vocab_size: vocabulary of the tokenizer (linked from the data module by the CLI).
        lr: peak learning rate, positive and finite; None takes the size's.
        warmup: fraction of the steps spent in linear warm-up.
        min_lr_ratio: the cosine schedule ends at this fraction of the peak.
        weight_decay: AdamW decoupled weight decay, on matrices only.
        betas: AdamW betas.
        compile: `torch.compile(fullgraph=True)` the model: true, false, or "auto" (on for CUDA, off on
            CPU, where Inductor's compile time outweighs the gain at these sizes). The formats run as
            opaque custom ops (`cslaws/formats/ops.py`), so compiling changes the numerics by rounding
            only; the choice made is recorded in the checkpoint as `compiled` (not a hyperparameter:
            `--ckpt_path` re-parses those as options). Off by default: the Triton
            kernels that formats use on CUDA are not yet wrapped as compile-safe ops, so "auto" is opt-in
            until a GPU run has checked it.
    """

    def __init__(
        self,
        size: str = "mini",
        label: str | None = None,
        weight: Format | None = None,
        activation: Format | None = None,
        tokens: int | None = None,
        tokens_per_param: float | None = None,
        vocab_size: int = 2048,
        lr: float | None = None,
        warmup: float = 0.1,
        min_lr_ratio: float = 0.1,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        compile: bool | Literal["auto"] = False,
    ) -> None:
        super().__init__()
        # The formats are objects; the checkpoint keeps their specs instead (set below, once built).
        self.save_hyperparameters(ignore=["weight", "activation"])
        if tokens is not None and tokens_per_param is not None:
            raise ValueError(f"give one of tokens={tokens} and tokens_per_param={tokens_per_param}, not both")
        if tokens is None and tokens_per_param is None:
            tokens_per_param = DEFAULT_TOKENS_PER_PARAM
        for arg, value in (("tokens", tokens), ("tokens_per_param", tokens_per_param)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{arg}={value} is not allowed; the token budget must be positive and finite")
        if lr is not None and not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr={lr} is not allowed; the peak learning rate must be positive and finite")
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup={warmup} is not allowed; it is a fraction of the steps in [0, 1)")
        # each of these trained and was stored `finished`: a rate that ends negative or above its peak, a
        # decay that grows the weights, betas torch refuses only once training starts
        if not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={min_lr_ratio} is not allowed; the schedule ends at a fraction of the peak rate in [0, 1]")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay={weight_decay} is not allowed; it must be finite and at least 0")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas={list(betas)} is not allowed; AdamW takes two betas, each in [0, 1)")
        if compile not in (True, False, "auto"):
            raise BenchError(f"compile={compile!r} is not allowed; use true, false or auto")
        self.compile_model = compile
        self.compiled = False  # set in `setup` for fitting: whether the model was compiled
        self.size_name = size
        self.size = get_size(size)
        self.factory = LinearFactory(_as_format(weight), _as_format(activation))
        self.hparams["weight"] = self.factory.weight.spec()
        self.hparams["activation"] = self.factory.activation.spec()
        if label is not None and not label.strip():
            raise BenchError(f"label={label!r} is not allowed; a format's label names it in the store and the "
                             "leaderboard (leave it out for the formats' own name)")
        self.label = default_label(self.factory.weight, self.factory.activation) if label is None else label
        check_fits(self.factory.weight, self.factory.activation, size)
        self.model = Llama(self.size, vocab_size, self.factory)
        self.lr = lr if lr is not None else self.size.lr
        self.requested_tokens = requested_tokens(self.model.n_params, tokens, tokens_per_param)
        self.total_steps = 0
        self.val_loss = MeanMetric()
        self._micro_losses: list[Tensor] = []
        #: Mean training loss of the last optimizer step over its micro-batches (unscaled by accumulation).
        self.step_loss: float | None = None

    @property
    def n_params(self) -> int:
        return self.model.n_params

    @property
    def tokens_per_step(self) -> int:
        return step_tokens(self.trainer.datamodule, self.trainer)

    @property
    def tokens(self) -> int:
        """The planned D: the budget in whole steps, aligned to validation."""
        return self.total_steps * self.tokens_per_step

    @property
    def trained_steps(self) -> int:
        """Optimizer steps done so far (all of them once a run ends normally)."""
        return self.trainer.global_step

    @property
    def trained_tokens(self) -> int:
        """D as trained so far: optimizer steps done x tokens per step."""
        return self.trained_steps * self.tokens_per_step

    @property
    def trained_epochs(self) -> float:
        """Passes over the training split made by the steps done so far."""
        dm = self.trainer.datamodule
        return dm.epochs_for(self.trained_tokens // dm.seq_len)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        per_step = self.tokens_per_step
        # One step count for the epoch, the schedule, the formats' progress and the record.
        self.total_steps = budget_steps(self.requested_tokens, per_step, self.trainer.val_check_interval,
                                        self.trainer.accumulate_grad_batches)
        self.trainer.datamodule.set_train_sequences(self.total_steps * per_step // self.trainer.datamodule.seq_len)
        compiled = self.trainer.strategy.root_device.type == "cuda" if self.compile_model == "auto" else self.compile_model
        self.compiled = compiled
        if compiled:
            self.model.compile(fullgraph=True)  # in place: the state dict keeps its keys

    def forward(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)

    def _loss(self, batch: Tensor) -> Tensor:
        logits = self.model(batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten())

    def on_train_batch_start(self, batch: Tensor, batch_idx: int) -> None:
        fraction = format_progress(self.global_step, self.total_steps)
        for fmt in self.factory.formats:
            fmt.set_progress(fraction)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        if not torch.isfinite(loss):
            # Stop before the optimizer steps on it: the next steps would only train on NaNs.
            raise Diverged(self.global_step, self.total_steps, loss.item())
        self._micro_losses.append(loss.detach())
        self.log("train_loss", loss, prog_bar=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Every micro-batch of this step has run: its loss is their mean (Lightning's `outputs["loss"]` is
        # divided by accumulate_grad_batches and comes once per micro-batch), over every device's share of the
        # global batch (every rank runs this hook, so the collective is matched).
        self.step_loss = float(self.trainer.strategy.reduce(torch.stack(self._micro_losses).mean(), reduce_op="mean"))
        self._micro_losses.clear()

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self.val_loss.update(self._loss(batch), weight=batch[:, 1:].numel())

    def on_validation_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log_dict({"val_loss": loss, "val_ppl": loss.exp()}, prog_bar=True)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        loss = self.val_loss.compute()
        self.val_loss.reset()
        self.log_dict({"test_loss": loss, "test_ppl": loss.exp()})

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["format_progress"] = self.factory.weight.progress
        checkpoint["format_tensors"] = [{"specs": format_specs(fmt), "tensors": [f.tensors() for f in fmt.walk()]}
                                        for fmt in self.factory.formats]
        checkpoint["compiled"] = self.compiled

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # A format with a schedule (gradual pruning) computes as it did at the checkpoint's progress, and one
        # built by an algorithm (a VQ codebook) with what it computed with then -- when it is the format the
        # checkpoint trained with: a checkpoint may be scored with other formats, which keep their own.
        for fmt in self.factory.formats:
            fmt.set_progress(checkpoint["format_progress"])
        for fmt, saved in zip(self.factory.formats, checkpoint.get("format_tensors", [])):  # older checkpoints have none
            if saved["specs"] == format_specs(fmt):
                for f, tensors in zip(fmt.walk(), saved["tensors"]):
                    f.load_tensors(tensors)

    def configure_optimizers(self):
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.lr, betas=tuple(self.hparams.betas))
        total = max(1, self.total_steps)
        warmup = max(1, round(self.hparams.warmup * total))
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, total, warmup, self.hparams.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def align_to_validation(steps: int, val_check_interval: int | float, accumulate: int = 1) -> int:
    """The largest step count <= `steps` whose last validation falls on its last step.

    Lightning validates every `val_check_interval` (a fraction of the epoch, or a number of batches, of which
    `accumulate` make an optimizer step) and not again at the end of the epoch; a run's final validation loss
    must be that of the whole budget.
    """
    if isinstance(val_check_interval, int):
        if val_check_interval % accumulate:
            raise BenchError(f"trainer.val_check_interval={val_check_interval} is not allowed with "
                             f"trainer.accumulate_grad_batches={accumulate}: a number of batches, it would validate "
                             f"inside an optimizer step; give a multiple of {accumulate} (a number of steps x "
                             f"{accumulate}), or a fraction of the epoch")
        period = val_check_interval // accumulate
    else:
        period = round(1 / val_check_interval)
        if abs(period * val_check_interval - 1) > 1e-9:
            raise BenchError(f"val_check_interval={val_check_interval} is not allowed; use 1/k (1.0, 0.5, 0.25, 0.2, 0.1) or a number of batches")
    aligned = steps // period * period
    if aligned > 2**53:  # the rounding test below would fail on float error, as Lightning's own count would
        raise BenchError(f"the token budget gives {steps:,} steps, more than 2**53, past which Lightning's step "
                         "arithmetic in floats is not exact (and far past any corpus); lower model.tokens or "
                         "model.tokens_per_param")
    if aligned < 1:
        raise BenchError(f"the token budget gives {steps} steps, fewer than one validation period of {period} steps ({val_check_interval=})")
    if not isinstance(val_check_interval, int) and int(aligned * val_check_interval) * period != aligned:
        raise BenchError(f"val_check_interval={val_check_interval} does not divide {aligned} steps exactly; use 1.0, 0.5, 0.25, 0.2 or 0.1")
    return aligned


def format_specs(fmt: Format) -> list[dict[str, Any]]:
    """The specs of `fmt` and of every format inside it, in `walk` order, without where they ran (`backend`)."""
    return [without_backend(f.spec()) for f in fmt.walk()]


def _as_format(value: Format | dict | None) -> Format | None:
    """A format, or the spec dict that `load_from_checkpoint` hands over, built into one."""
    return format_from_spec(value) if isinstance(value, dict) else value


def default_label(weight: Format, activation: Format) -> str:
    """`dense` when nothing is compressed, else the registered names, e.g. `w:int+a:int`."""
    parts = [f"{side}:{fmt.name or type(fmt).__name__}" for side, fmt in (("w", weight), ("a", activation)) if fmt.name != "dense"]
    return "+".join(parts) or "dense"
