"""A run's token budget D: given in tokens, or as tokens per non-embedding parameter.

The rules live here, apart from the Lightning module, so that `bench sweep` (which plans cells without
importing Lightning) asks for the D that `bench fit` will train and refuses the settings that `bench fit` refuses.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cslaws.errors import BenchError

_STEPS = "the token budget (model.tokens or model.tokens_per_param) sets the steps of the one epoch a run trains"
#: Trainer settings that would train past the budget, stop short of it, or score part of the validation set
#: (which the store names by its identity, val_set, as if whole), with the values that do not, and why.
#: A limit's int is a count of batches and its float a fraction, so 1 and 1.0 differ.
_BUDGET_OWNED: dict[str, tuple[tuple[Any, ...], str]] = {
    # first: each sets limit_train_batches too, which would be named instead of the option given
    "fast_dev_run": ((False, 0), "a run trains its whole budget; trainer.max_steps N stops it at step N, stored "
                     "failed, and it can be resumed from there"),
    "overfit_batches": ((0.0, 0), _STEPS),
    "max_epochs": ((1,), _STEPS),
    "min_epochs": ((None, 0, 1), _STEPS),
    "min_steps": ((None, 0), _STEPS),
    "limit_train_batches": ((None, 1.0), _STEPS),
    "limit_val_batches": ((None, 1.0), "a run is scored on its whole validation set (data.val_sequences), which "
                          "the store names as one set (val_set)"),
    # another n skips the validations inside the one epoch, its last at the budget's last step among them
    "check_val_every_n_epoch": ((None, 1), "a run is validated every trainer.val_check_interval within its one epoch, "
                                "last at its last step, whose loss the store keeps"),
}


def requested_tokens(n_params: int, tokens: int | None, tokens_per_param: float | None) -> int:
    """D asked for: `tokens` when given, else round(tokens_per_param x N). A run trains whole optimizer steps
    and stores the tokens it actually trained."""
    return tokens if tokens is not None else round(tokens_per_param * n_params)


#: Trainer counts that Lightning takes at 0 or below and then divides by, deep in a run (a ZeroDivisionError
#: after the row is written): each must be a positive integer.
_POSITIVE = ("accumulate_grad_batches", "log_every_n_steps")

#: Trainer numbers that Lightning takes below a bound as if they were the bound's meaning, with what that is:
#: the run's record would hold the value given, not what ran.
_AT_LEAST = {
    "gradient_clip_val": (0, "0 or null: no clipping, which Lightning also made of a negative norm"),
    "num_sanity_val_steps": (-1, "-1: the whole validation set, 0: none, which Lightning also made of -5"),
}


def check_trainer_settings(settings: Mapping[str, Any]) -> None:
    """The budget sizes the one epoch a run trains, its LR schedule and its formats' progress, and a run's
    loss is its whole validation set's: a trainer setting among `settings` that would change either is refused,
    as are counts a run divides by that are not positive (and a validation interval that is not)."""
    for name in _POSITIVE:
        value = settings.get(name)
        if name in settings and not (isinstance(value, int) and value >= 1):
            raise BenchError(f"trainer.{name}={value!r} is not allowed; it must be a positive integer")
    for name, (least, why) in _AT_LEAST.items():
        value = settings.get(name)
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= least):
            raise BenchError(f"trainer.{name}={value!r} is not allowed; it must be at least {least} ({why})")
    if settings.get("max_steps") == 0:  # Lightning takes it: a row of no steps, stored failed
        raise BenchError("trainer.max_steps=0 is not allowed: the run would train nothing; give the step to stop at "
                         "(it can be resumed from there), or -1 for the whole budget")
    interval = settings.get("val_check_interval")
    if "val_check_interval" in settings and not (isinstance(interval, (int, float)) and interval > 0):
        raise BenchError(f"trainer.val_check_interval={interval!r} is not allowed; it must be a fraction of the "
                         "epoch in (0, 1] or a number of batches >= 1 (not a time: the validations, the last of them "
                         "at the budget's last step, are planned in steps)")
    for name, (allowed, why) in _BUDGET_OWNED.items():
        value = settings.get(name)
        if name in settings and not any(value is a or (type(value) is type(a) and value == a) for a in allowed):
            shown = ", ".join("unset" if a is None else repr(a) for a in allowed)
            raise BenchError(f"trainer.{name}={value!r} is not allowed (allowed: {shown}): {why}")


#: LightningCLI options that replace `LanguageModel.configure_optimizers`, whose AdamW and warmup-then-cosine
#: schedule the model's options set (and the run's record holds); with them those options would go unused.
_OPTIMIZER_OWNED = ("optimizer", "lr_scheduler")


def check_optimizer_settings(config: Mapping[str, Any], where: str = "--") -> None:
    """Refuse LightningCLI's `optimizer` / `lr_scheduler` among a fit config's top-level `config`; `where` is
    how the message names them (`--` on the command line, `fit.` in a sweep matrix)."""
    given = [f"{where}{name}" for name in _OPTIMIZER_OWNED if config.get(name) is not None]
    if given:
        raise BenchError(f"{' and '.join(given)} is not allowed: a run trains with AdamW and a warmup-then-cosine "
                         "schedule set by model.lr, model.betas, model.weight_decay, model.warmup and "
                         "model.min_lr_ratio; LightningCLI's optimizer and lr_scheduler would replace them, unsaid")
