"""A run's token budget D: given in tokens, or as tokens per non-embedding parameter.

One rule, kept apart from the Lightning module, so that `bench sweep` (which plans cells without importing
Lightning) asks for the D that `bench fit` will train.
"""

from __future__ import annotations


def requested_tokens(n_params: int, tokens: int | None, tokens_per_param: float | None) -> int:
    """D asked for: `tokens` when given, else round(tokens_per_param x N). A run trains whole optimizer steps
    and stores the tokens it actually trained."""
    return tokens if tokens is not None else round(tokens_per_param * n_params)
