"""What the store holds is what was trained: truncated, short, accumulated and diverged runs, a run past its
budget or with a non-finite last validation, trainer settings that would train past the budget, and a finished
run whose end-of-run report fails."""

import signal
import subprocess
import sys
import time

import lightning as L
import pytest
import torch

from cslaws.bench import callback
from cslaws.bench.callback import StreamToStore
from cslaws.bench.cli import main as bench
from cslaws.bench.data import TextDataModule
from cslaws.bench.module import Diverged, LanguageModel
from cslaws.bench.store import ResultsStore
from cslaws.errors import BenchError

SEQ, BATCH = 16, 8
#: A run long enough to be stopped in the middle, within one pass over `small_corpus`.
STEPS_LONG = 600


def fit(tmp_path, small_corpus, model: LanguageModel, batch_size: int = BATCH, refit: bool = False, **trainer_kw) -> tuple[L.Trainer, ResultsStore]:
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=300, seq_len=SEQ, batch_size=batch_size, val_sequences=16)
    args = dict(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                num_sanity_val_steps=0, val_check_interval=0.5, log_every_n_steps=1)
    args.update(trainer_kw)
    trainer = L.Trainer(callbacks=[StreamToStore(path=str(tmp_path / "s.db"), refit=refit)], **args)
    trainer.fit(model, datamodule=dm)
    return trainer, ResultsStore(tmp_path / "s.db")


def test_max_steps_below_the_budget_is_a_failed_run_of_the_steps_done(tmp_path, small_corpus) -> None:
    model = LanguageModel(size="nano", tokens=40 * BATCH * SEQ, vocab_size=300)
    trainer, store = fit(tmp_path, small_corpus, model, max_steps=25)
    assert store.runs() == []
    (run,) = store.runs("failed")
    assert run.error == "truncated: stopped at step 25 of 40 (trainer.max_steps=25)"
    assert (run.steps, run.tokens_per_step, run.tokens) == (25, BATCH * SEQ, 25 * BATCH * SEQ)
    assert run.epochs == pytest.approx(trainer.datamodule.epochs_for(25 * BATCH))
    curve = store.curve(run.run_id)
    assert max(p[0] for p in curve) == 25 and [p[0] for p in curve if p[3] is not None] == [20]


def test_a_short_budget_records_the_steps_really_trained(tmp_path, small_corpus) -> None:
    # 9 steps of budget, validation every fifth: the run trains 5 steps, validates on the 5th, and says so.
    model = LanguageModel(size="nano", tokens=9 * BATCH * SEQ, vocab_size=300)
    trainer, store = fit(tmp_path, small_corpus, model, val_check_interval=0.2)
    (run,) = store.runs()
    assert trainer.global_step == 5 and run.steps == 5 and run.tokens == 5 * BATCH * SEQ
    assert run.epochs == pytest.approx(trainer.datamodule.epochs_for(5 * BATCH))
    assert [p[0] for p in store.curve(run.run_id) if p[2] is not None] == [1, 2, 3, 4, 5]
    assert (run.seq_len, run.vocab_size, run.val_set) == (SEQ, 300, trainer.datamodule.provenance["val_set"])


def test_accumulated_steps_log_the_unscaled_mean_of_their_micro_batches(tmp_path, small_corpus) -> None:
    # Same global batch (8 sequences) and data order: one step of 8, or two micro-batches of 4. The per-step
    # losses agree to float rounding; Lightning's `outputs["loss"]` would be half of them.
    curves, points = [], []
    for batch_size, accumulate in ((BATCH, 1), (BATCH // 2, 2)):
        L.seed_everything(0)
        model = LanguageModel(size="nano", tokens=12 * BATCH * SEQ, vocab_size=300)
        _, store = fit(tmp_path / str(accumulate), small_corpus, model, batch_size=batch_size, accumulate_grad_batches=accumulate)
        (run,) = store.runs()
        assert run.steps == 12 and run.tokens_per_step == BATCH * SEQ
        curves.append([(p[0], p[2]) for p in store.curve(run.run_id) if p[2] is not None])
        points.append([p[0] for p in store.curve(run.run_id)])
    plain, accumulated = curves
    assert points[0] == points[1], "a point per optimizer step, none for a micro-batch"
    assert [s for s, _ in accumulated] == list(range(1, 13)) == [s for s, _ in plain]
    assert [loss for _, loss in accumulated] == pytest.approx([loss for _, loss in plain], rel=1e-4)


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path, small_corpus) -> None:
    model = LanguageModel(size="nano", tokens=40 * BATCH * SEQ, vocab_size=300, lr=1e4)
    with pytest.raises(Diverged) as err:
        fit(tmp_path, small_corpus, model)
    store = ResultsStore(tmp_path / "s.db")
    (run,) = store.runs("failed")
    step = err.value.step
    assert 0 < step < 40 and run.steps == step and run.tokens == step * BATCH * SEQ
    assert run.error == f"diverged: non-finite training loss {err.value.value} at step {step} of 40"
    assert all(p[0] <= step for p in store.curve(run.run_id))


def test_bench_fit_of_a_diverging_run_exits_with_one_line(tmp_path, small_corpus) -> None:
    cmd = [sys.executable, "-m", "cslaws", "fit", "--model.size", "nano", "--model.lr", "1e4", "--model.tokens", str(40 * BATCH * SEQ),
           "--data.path", "text", "--data.data_files", "[" + ",".join(small_corpus) + "]", "--data.vocab_size", "300",
           "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH), "--data.val_sequences", "16",
           "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), "--store.path", str(tmp_path / "s.db")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    assert out.stderr.strip().splitlines()[-1].startswith("bench: dense nano: diverged: non-finite training loss")
    (run,) = ResultsStore(tmp_path / "s.db").runs("failed")
    assert run.error.startswith("diverged:") and run.steps < 40


def _running(path) -> bool:
    """Whether the store at `path` holds a running run yet (a store being created has no tables yet)."""
    try:
        return bool(ResultsStore(path, create=False).runs("running"))
    except BenchError:
        return False


def test_bench_fit_stopped_by_sigterm_exits_non_zero_with_one_line(tmp_path, small_corpus) -> None:
    """Lightning's SIGTERMException is a bare SystemExit (exit code 0): a sweep would count the run finished."""
    cmd = [sys.executable, "-m", "cslaws", "fit", "--model.size", "nano", "--model.tokens", str(STEPS_LONG * BATCH * SEQ),
           "--data.path", "text", "--data.data_files", "[" + ",".join(small_corpus) + "]", "--data.vocab_size", "300",
           "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH), "--data.val_sequences", "16",
           "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), "--store.path", str(tmp_path / "s.db")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _running(tmp_path / "s.db"):
        assert proc.poll() is None and time.time() < deadline, "the run ended or did not start"
        time.sleep(0.05)
    time.sleep(1.0)  # into the training loop
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in out + err
    assert err.strip().splitlines()[-1].startswith("bench: dense nano: stopped by SIGTERM at step")
    (run,) = ResultsStore(tmp_path / "s.db").runs("failed")
    assert run.error.startswith("SIGTERMException") and run.steps < STEPS_LONG


def test_a_finished_run_stays_finished_when_the_refit_raises(tmp_path, small_corpus, monkeypatch, capsys) -> None:
    def broken(store, run_id, label):
        raise RuntimeError("refit exploded")

    monkeypatch.setattr(callback, "print_leaderboard_row", broken)
    model = LanguageModel(size="nano", tokens=10 * BATCH * SEQ, vocab_size=300)
    trainer, store = fit(tmp_path, small_corpus, model, refit=True)
    (run,) = store.runs()
    assert run.status == "finished" and run.final_val_loss == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert "leaderboard refit failed (run 1 stays finished): RuntimeError: refit exploded" in capsys.readouterr().out
    # Nothing later turns it into a failed run.
    store.fail(run.run_id, "late error")
    assert store.runs()[0].status == "finished" and store.runs()[0].error is None


def test_a_run_past_its_budget_is_a_failed_run(tmp_path, small_corpus) -> None:
    # a Trainer built by hand (bench fit refuses max_epochs != 1) trains the 10-step epoch twice
    model = LanguageModel(size="nano", tokens=10 * BATCH * SEQ, vocab_size=300)
    trainer, store = fit(tmp_path, small_corpus, model, max_epochs=2)
    assert trainer.global_step == 20 and store.runs() == []
    (run,) = store.runs("failed")
    assert run.error == "trained past its budget: 20 steps of 10"
    assert (run.steps, run.tokens) == (20, 20 * BATCH * SEQ)


def test_a_non_finite_last_validation_is_a_failed_run(tmp_path, small_corpus) -> None:
    model = LanguageModel(size="nano", tokens=10 * BATCH * SEQ, vocab_size=300)
    model.validation_step = lambda batch, batch_idx: model.val_loss.update(torch.tensor(float("nan")), weight=1)
    trainer, store = fit(tmp_path, small_corpus, model)
    assert store.runs() == []
    (run,) = store.runs("failed")
    assert run.error == "diverged: non-finite validation loss nan at step 10" and run.steps == 10
    assert run.final_val_loss is None


@pytest.mark.parametrize(("flag", "value", "allowed"), [("max_epochs", "2", "1"), ("max_epochs", "null", "1"),
                                                          ("min_epochs", "3", "unset, 0, 1"),
                                                          ("min_steps", "5", "unset, 0")])
def test_bench_fit_refuses_trainer_settings_that_train_past_the_budget(tmp_path, small_corpus, capsys, flag, value,
                                                                       allowed) -> None:
    argv = ["fit", "--model.size", "nano", "--model.tokens", str(10 * BATCH * SEQ), "--data.path", "text",
            "--data.data_files", "[" + ",".join(small_corpus) + "]", "--data.vocab_size", "300",
            "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path), "--store.path",
            str(tmp_path / "s.db"), f"--trainer.{flag}", value]
    assert bench(argv) == 2
    shown = "None" if value == "null" else value
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"bench: error: trainer.{flag}={shown} is not allowed (allowed: {allowed}): the token budget (model.tokens or "
        "model.tokens_per_param) sets the steps of the one epoch a run trains")
    assert not (tmp_path / "s.db").exists()
