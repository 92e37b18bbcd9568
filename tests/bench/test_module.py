import math

import lightning as L
import pytest

from cslaws.bench.data import TextDataModule
from cslaws.bench.module import LanguageModel, align_to_validation, cosine_with_warmup, format_progress
from cslaws.formats.sparse import Magnitude


def trainer(**kw) -> L.Trainer:
    args = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=1.0, gradient_clip_val=1.0)
    args.update(kw)
    return L.Trainer(**args)


def test_schedule_warms_up_then_decays_to_the_floor() -> None:
    values = [cosine_with_warmup(s, total=100, warmup=10, min_ratio=0.1) for s in range(101)]
    assert values[0] == pytest.approx(0.1) and values[9] == pytest.approx(1.0)
    assert values[10] == pytest.approx(1.0) and values[100] == pytest.approx(0.1)
    assert values[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_budget_sets_steps_and_loss_falls(small_corpus) -> None:
    L.seed_everything(0)
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=8, val_sequences=16)
    model = LanguageModel(size="nano", tokens=60 * 8 * 32 + 100, vocab_size=512, lr=1e-2)
    t = trainer(inference_mode=False)
    t.validate(model, datamodule=dm, verbose=False)
    before = float(t.callback_metrics["val_loss"])
    t = trainer()
    t.fit(model, datamodule=dm)
    assert model.total_steps == 60 and t.global_step == 60
    assert model.tokens == 60 * 8 * 32
    assert float(t.callback_metrics["val_loss"]) < before - 1.0


@pytest.mark.parametrize("interval", [1.0, 0.5, 0.25, 0.2, 0.1, 1 / 3, 7])
def test_steps_align_so_the_last_validation_is_the_last_step(interval) -> None:
    unit = interval if isinstance(interval, int) else round(1 / interval)  # steps are rounded to a multiple of it
    for steps in range(10, 400):
        aligned = align_to_validation(steps, interval)
        period = interval if isinstance(interval, int) else int(aligned * interval)  # Lightning's own rule
        assert steps - unit < aligned <= steps and aligned % period == 0


def test_a_number_of_batches_counts_the_micro_batches_of_a_step() -> None:
    """Lightning's int interval counts batches: with 2 to a step, 6 validates every 3 steps (the budget was cut
    to a multiple of 6 steps), and 3 would validate in the middle of every other step."""
    for steps in range(10, 100):
        aligned = align_to_validation(steps, 6, accumulate=2)
        assert steps - 3 < aligned <= steps and aligned % 3 == 0
    with pytest.raises(ValueError, match="val_check_interval=3 is not allowed with trainer.accumulate_grad_batches=2"):
        align_to_validation(100, 3, accumulate=2)


def test_validation_intervals_that_cannot_end_on_the_last_step_are_refused() -> None:
    with pytest.raises(ValueError, match="val_check_interval=0.3 is not allowed"):
        align_to_validation(100, 0.3)
    with pytest.raises(ValueError, match="gives 3 steps, fewer than one validation period of 4 steps"):
        align_to_validation(3, 0.25)


def test_a_budget_past_exact_float_steps_is_named_as_such() -> None:
    # 10**23 steps were refused as if 0.2 did not divide them: float error in the rounding test
    assert align_to_validation(2**53, 0.2) == 2**53 // 5 * 5  # the rule still holds there
    with pytest.raises(ValueError, match="gives 100,000,000,000,000,000,000,000 steps, more than 2\\*\\*53"):
        align_to_validation(10**23, 0.2)


def test_final_validation_is_at_the_end_of_the_budget(small_corpus) -> None:
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=8, val_sequences=16)
    model = LanguageModel(size="nano", tokens=30 * 8 * 32, vocab_size=512)
    seen = []

    class Steps(L.Callback):
        def on_validation_end(self, trainer, pl_module) -> None:
            seen.append(trainer.global_step)

    trainer(val_check_interval=0.25, callbacks=[Steps()]).fit(model, datamodule=dm)
    assert model.total_steps == 28 and seen == [7, 14, 21, 28]
    assert model.tokens == 28 * 8 * 32


def test_tokens_per_param_budget_counts_n(small_corpus) -> None:
    model = LanguageModel(size="nano", tokens_per_param=2.0, vocab_size=512)
    assert model.n_params == 26_784 and model.requested_tokens == 53_568   # nano's N without its embeddings


def test_budget_below_one_step_is_an_error_before_training(small_corpus) -> None:
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=8, val_sequences=16)
    model = LanguageModel(size="nano", tokens=100, vocab_size=512)
    with pytest.raises(ValueError, match=r"token budget of 100 tokens is smaller than one step of 256 tokens"):
        trainer().fit(model, datamodule=dm)
    assert model.total_steps == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(size="huge"), "unknown model size 'huge'"),
        (dict(tokens=10, tokens_per_param=2.0), "not both"),
        (dict(tokens=-5), "tokens=-5 is not allowed"),
        (dict(tokens_per_param=math.nan), "tokens_per_param=nan is not allowed; the token budget must be positive and finite"),
        (dict(warmup=1.5), "warmup=1.5 is not allowed"),
        (dict(lr=-1.0), "lr=-1.0 is not allowed; the peak learning rate must be positive and finite"),
        (dict(lr=0.0), "lr=0.0 is not allowed"),
        (dict(lr=math.nan), "lr=nan is not allowed"),
        (dict(lr=math.inf), "lr=inf is not allowed"),
    ],
)
def test_bad_module_arguments(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        LanguageModel(**kwargs)


def test_weight_decay_only_on_matrices() -> None:
    model = LanguageModel(size="nano", tokens=1000, vocab_size=64)
    opt = model.configure_optimizers()["optimizer"]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_format_progress_runs_from_the_first_step_to_the_last() -> None:
    assert [format_progress(s, 5) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert format_progress(0, 1) == 1.0


def test_a_ramp_that_ends_with_training_trains_and_validates_at_its_target(small_corpus) -> None:
    """A cubic pruning ramp with ramp_end=1: the last step and the final validation run at 50% sparsity."""
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=8, val_sequences=16)
    weight = Magnitude(0.5, per_row=True, schedule="cubic", ramp_end=1.0)
    model = LanguageModel(size="nano", tokens=12 * 8 * 32, vocab_size=512, weight=weight)
    seen = []

    class LastStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            seen.append(weight.current_sparsity)

    trainer(callbacks=[LastStep()]).fit(model, datamodule=dm)
    assert len(seen) == 12 and seen[0] == 0.0 and seen[-1] == 0.5
    linear = next(m for m in model.model.modules() if hasattr(m, "weight_format"))
    assert (weight.compress(linear.weight) == 0).float().mean().item() == 0.5
