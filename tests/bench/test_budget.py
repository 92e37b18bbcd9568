"""The token budget rule, and that `bench sweep`'s cells ask for the D that `bench fit`'s module trains."""

from __future__ import annotations

import pytest

from cslaws.bench.budget import requested_tokens
from cslaws.bench.module import LanguageModel
from cslaws.bench.sweep import Cell


def test_tokens_win_and_a_ratio_is_rounded_to_whole_tokens():
    assert requested_tokens(13_944, 716_800, None) == 716_800
    assert requested_tokens(13_944, None, 25) == 348_600
    assert requested_tokens(22_540, None, 0.1) == 2_254
    assert requested_tokens(3, None, 0.5) == 2  # 1.5 rounds to even, as Python's round does


@pytest.mark.parametrize("budget", [{"tokens_per_param": 25.0}, {"tokens_per_param": 0.37}, {"tokens": 716_800}])
def test_a_sweep_cell_and_the_module_it_runs_agree_on_d(budget):
    cell = Cell(model="14k", format_config="formats/dense.yaml", seed=0, fit="{}", **budget)
    module = LanguageModel(size="14k", vocab_size=1024, **budget)
    assert cell.n_params == module.model.n_params
    assert cell.requested_tokens == module.requested_tokens


def test_a_limit_of_one_batch_is_not_the_whole_set() -> None:
    """Lightning reads an int limit as a count of batches and a float as a fraction: 1 is one batch."""
    from cslaws.bench.budget import check_trainer_settings
    from cslaws.errors import BenchError

    check_trainer_settings({"limit_train_batches": 1.0, "limit_val_batches": None, "max_epochs": 1})
    for name in ("limit_train_batches", "limit_val_batches"):
        with pytest.raises(BenchError, match=f"trainer.{name}=1 is not allowed \\(allowed: unset, 1.0\\)"):
            check_trainer_settings({name: 1})
