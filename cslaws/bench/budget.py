"""A run's token budget D: given in tokens, or as tokens per non-embedding parameter.

The rules live here, apart from the Lightning module, so that `bench sweep` (which plans cells without
importing Lightning) asks for the D that `bench fit` will train and refuses the settings that `bench fit` refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cslaws.errors import BenchError

#: Trainer settings that could train past the budget, and the values that cannot.
_BUDGET_OWNED = {"max_epochs": (1,), "min_epochs": (None, 0, 1), "min_steps": (None, 0)}


def requested_tokens(n_params: int, tokens: int | None, tokens_per_param: float | None) -> int:
    """D asked for: `tokens` when given, else round(tokens_per_param x N). A run trains whole optimizer steps
    and stores the tokens it actually trained."""
    return tokens if tokens is not None else round(tokens_per_param * n_params)


def check_trainer_settings(settings: Mapping[str, Any]) -> None:
    """The budget sizes the one epoch a run trains, its LR schedule and its formats' progress: a trainer
    setting among `settings` that would train past it (a second epoch, a floor of epochs or steps) is refused."""
    for name, allowed in _BUDGET_OWNED.items():
        if name in settings and settings[name] not in allowed:
            shown = ", ".join("unset" if a is None else str(a) for a in allowed)
            raise BenchError(f"trainer.{name}={settings[name]} is not allowed (allowed: {shown}): the token budget "
                             "(model.tokens or model.tokens_per_param) sets the steps of the one epoch a run trains")
