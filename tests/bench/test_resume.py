"""Checkpoints and resume: a killed run resumes to the loss of an uninterrupted one, in one store row; resuming a
finished run is refused and leaves its row as it was; a new or resumed run fails the rows that dead processes left
`running`; and a checkpoint reloads as the same compressed model."""

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Timer

from cslaws.bench.callback import RunCheckpoint, StreamToStore
from cslaws.bench.data import TextDataModule
from cslaws.bench.lightning_cli import run_lightning_cli
from cslaws.bench.module import LanguageModel
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.errors import BenchError
from cslaws.formats import vq
from cslaws.formats.compose import Compose
from cslaws.formats.hadamard import Hadamard
from cslaws.formats.int import Int
from cslaws.formats.sparse import Magnitude
from cslaws.formats.vq import VQ

SEQ, BATCH, STEPS = 16, 8, 60


def fit_args(tmp_path, small_corpus, root: str, *extra: str) -> list[str]:
    """`bench fit` arguments of a 60-step nano run that checkpoints every 4 steps."""
    return ["fit", "--model.size", "nano", "--model.tokens", str(STEPS * BATCH * SEQ),
            "--data.path", "text", "--data.data_files", "[" + ",".join(small_corpus) + "]", "--data.vocab_size", "300",
            "--data.seq_len", str(SEQ), "--data.batch_size", str(BATCH), "--data.val_sequences", "16",
            "--trainer.val_check_interval", "0.25", "--trainer.log_every_n_steps", "1", "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / root), "--store.path", str(tmp_path / f"{root}.db"),
            "--store.refit", "false", "--checkpoint.every_n_steps", "4", "--checkpoint.every_minutes", "null", *extra]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, small_corpus) -> RunRecord:
    """The stored row of the 60-step run, trained in one go."""
    tmp_path = tmp_path_factory.mktemp("whole")
    run_lightning_cli(fit_args(tmp_path, small_corpus, "whole"))
    (run,) = ResultsStore(tmp_path / "whole.db").runs()
    return run


def test_a_killed_run_resumes_to_the_loss_of_an_uninterrupted_one(tmp_path, small_corpus, whole) -> None:

    # The killed run is a process of its own, on one thread like this one (conftest), so that the numerics agree.
    killed = subprocess.Popen([sys.executable, "-m", "cslaws", *fit_args(tmp_path, small_corpus, "killed")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    pattern = str(tmp_path / "killed" / "checkpoints" / "*" / "last.ckpt")
    while not glob.glob(pattern):  # Lightning writes the checkpoint atomically: once there, it is whole
        assert killed.poll() is None, "the run ended before its first checkpoint"
        time.sleep(0.002)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    store = ResultsStore(tmp_path / "killed.db")
    (dead,) = store.runs("running")
    step = torch.load(glob.glob(pattern)[0], weights_only=False)["global_step"]
    assert 0 < step < STEPS

    # a row that another killed process left `running` (an older record of a cell, say) is failed by the resume
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    orphan = store.start_run(RunRecord(label="dense", model="nano", n_params=1, tokens=0, bits_per_value=16.0, seed=0, dataset="d",
                                       tokenizer="t", code_version="v", host=socket.gethostname(), pid=gone.pid))
    run_lightning_cli(fit_args(tmp_path, small_corpus, "killed", "--ckpt_path", "last"))
    run, left = store.runs(None)
    assert left.run_id == orphan and left.status == "failed" and f"found by run {dead.run_id}" in left.error
    assert run.run_id == dead.run_id and run.status == "finished" and run.steps == STEPS
    assert run.final_val_loss == pytest.approx(whole.final_val_loss, abs=1e-5)
    train_steps = [p[0] for p in store.curve(run.run_id) if p[2] is not None]
    assert train_steps == list(range(1, STEPS + 1))  # one point per step: none lost, none twice
    val = [(p[0], p[3]) for p in store.curve(run.run_id) if p[3] is not None]
    assert val[-1] == (STEPS, pytest.approx(whole.final_val_loss, abs=1e-5))


def step_clock(monkeypatch) -> None:
    """Lightning's max_time timer, on a clock that reads a second per optimizer step: it stops a run at a step."""
    check = Timer.on_train_batch_end

    def on_train_batch_end(self, trainer, *args, **kwargs):
        self.steps = trainer.global_step
        check(self, trainer, *args, **kwargs)

    monkeypatch.setattr(Timer, "on_train_batch_end", on_train_batch_end)
    monkeypatch.setattr(Timer, "time_elapsed", lambda self, stage=None: float(getattr(self, "steps", 0)) + self._offset)


@pytest.mark.parametrize("limit, said", [(["--trainer.max_steps", "22"], "(trainer.max_steps=22)"),
                                         (["--trainer.max_time", "00:00:00:22"], "(trainer.max_time, 0:00:22 of training in all)")],
                         ids=["max_steps", "max_time"])
def test_a_run_stopped_by_a_limit_resumes_without_it_to_the_loss_of_an_uninterrupted_one(tmp_path, small_corpus, whole,
                                                                                          limit, said, monkeypatch) -> None:
    """A limit stops the run at step 22, between two periodic checkpoints (every 4 steps): the run is
    checkpointed where it stopped, inside its epoch (Lightning's state at the end marks the epoch done, and a run
    resumed from it stopped at once), under the key of the same options without the limit."""
    stop = 22
    step_clock(monkeypatch)
    with pytest.raises(SystemExit, match="1"):
        run_lightning_cli(fit_args(tmp_path, small_corpus, "cut", *limit))
    cut = resumes_to_the_whole_run(tmp_path, small_corpus, whole, "cut", stop)
    assert cut.error == f"truncated: stopped at step {stop} of {STEPS} {said}"


def resumes_to_the_whole_run(tmp_path, small_corpus, whole: RunRecord, root: str, stop: int) -> RunRecord:
    """The run `root`, stopped at step `stop` and checkpointed there, resumes in its row to the loss of `whole`,
    with one training point per step and no validation twice; returns its stored row as it was when stopped."""
    store = ResultsStore(tmp_path / f"{root}.db")
    (cut,) = store.runs(None)
    assert (cut.status, cut.steps) == ("failed", stop)
    (ckpt,) = glob.glob(str(tmp_path / root / "checkpoints" / "*" / "last.ckpt"))
    assert torch.load(ckpt, weights_only=False)["global_step"] == stop
    run_lightning_cli(fit_args(tmp_path, small_corpus, root, "--ckpt_path", "last"))
    (run,) = store.runs(None)
    assert (run.run_id, run.status, run.steps) == (cut.run_id, "finished", STEPS)
    assert run.final_val_loss == pytest.approx(whole.final_val_loss, abs=1e-5)
    curve = store.curve(run.run_id)
    assert [p[0] for p in curve if p[2] is not None] == list(range(1, STEPS + 1))
    val_steps = [p[0] for p in curve if p[3] is not None]
    assert len(val_steps) == len(set(val_steps)) and val_steps[-1] == STEPS
    return cut


def test_a_run_stopped_by_sigterm_is_saved_at_its_step_and_resumes_to_the_loss_of_an_uninterrupted_one(
        tmp_path, small_corpus, whole, monkeypatch) -> None:
    """SIGTERM (a preempted job) at step 22, between two periodic checkpoints (every 4 steps): the step is
    saved, so the resume loses nothing."""
    stop = 22
    save = RunCheckpoint.on_train_batch_end

    def on_train_batch_end(self, trainer, *args, **kwargs):
        if trainer.global_step == stop:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler only marks it; the loop stops at the batch's end
        save(self, trainer, *args, **kwargs)

    monkeypatch.setattr(RunCheckpoint, "on_train_batch_end", on_train_batch_end)
    with pytest.raises(SystemExit, match=f"stopped by SIGTERM at step {stop} of {STEPS}; stored as failed \\(resume from its last"):
        run_lightning_cli(fit_args(tmp_path, small_corpus, "term"))
    monkeypatch.undo()
    assert resumes_to_the_whole_run(tmp_path, small_corpus, whole, "term", stop).error.startswith("SIGTERMException")


def test_a_sigterm_inside_an_accumulated_step_says_that_no_checkpoint_was_written(tmp_path, small_corpus, monkeypatch) -> None:
    """The step in progress cannot be saved (its accumulated gradients are in no checkpoint), and none came before:
    the message said `resume: --ckpt_path last`, which then trained from the start."""
    save = RunCheckpoint.on_train_batch_end

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 6:  # the first of step 4's two micro-batches
            os.kill(os.getpid(), signal.SIGTERM)
        save(self, trainer, pl_module, outputs, batch, batch_idx)

    monkeypatch.setattr(RunCheckpoint, "on_train_batch_end", on_train_batch_end)
    args = fit_args(tmp_path, small_corpus, "acc", "--data.batch_size", str(BATCH // 2), "--trainer.accumulate_grad_batches", "2",
                    "--checkpoint.every_n_steps", "100")
    with pytest.raises(SystemExit, match="stopped by SIGTERM at step 3 of 60; stored as failed \\(no checkpoint was written"):
        run_lightning_cli(args)
    assert not glob.glob(str(tmp_path / "acc" / "checkpoints" / "*" / "last.ckpt"))
    (run,) = ResultsStore(tmp_path / "acc.db").runs(None)
    assert (run.status, run.steps) == ("failed", 3)


def test_last_without_a_checkpoint_says_it_trains_from_the_start(tmp_path, small_corpus, capsys) -> None:
    run_lightning_cli(fit_args(tmp_path, small_corpus, "new", "--model.tokens", str(4 * BATCH * SEQ), "--ckpt_path", "last"))
    out = " ".join(capsys.readouterr().out.split())
    assert "--ckpt_path last: no checkpoint of this run at " in out and "it trains from the start, as a new run" in out
    (run,) = ResultsStore(tmp_path / "new.db").runs()
    assert run.steps == 4


def test_resuming_a_finished_run_is_refused_and_leaves_its_row_as_it_was(tmp_path, small_corpus) -> None:
    args = fit_args(tmp_path, small_corpus, "done", "--model.tokens", str(8 * BATCH * SEQ))
    run_lightning_cli(args)
    store = ResultsStore(tmp_path / "done.db")
    (before,) = store.runs(None)
    assert before.status == "finished" and before.steps == 8 and glob.glob(str(tmp_path / "done" / "checkpoints" / "*" / "last.ckpt"))
    config = (tmp_path / "done" / "config.yaml").read_text()
    with pytest.raises(BenchError, match=f"run {before.run_id} in .* is already finished; there is nothing to resume"):
        run_lightning_cli([*args, "--ckpt_path", "last"])
    assert (tmp_path / "done" / "config.yaml").read_text() == config, "the refused command's config replaced the run's"
    assert store.runs(None) == [before]
    assert store.curve(before.run_id)[-1][0] == 8


@pytest.mark.parametrize("changed, said", [(["--data.batch_size", str(2 * BATCH)], f"data.batch_size={BATCH}; these options give data.batch_size={2 * BATCH}"),
                                           (["--data.seq_len", str(SEQ // 2)], "seq_len=16"),
                                           (["--seed_everything", "1"], "seed_everything=0; these options give seed_everything=1"),
                                           # the same tokens per step: these ran other steps, stored `finished`
                                           (["--trainer.val_check_interval", "1.0"],
                                            "trainer.val_check_interval=0.25; these options give trainer.val_check_interval=1.0"),
                                           (["--data.batch_size", str(BATCH // 2), "--trainer.accumulate_grad_batches", "2"],
                                            f"data.batch_size={BATCH}, trainer.accumulate_grad_batches=1; these options give "
                                            f"data.batch_size={BATCH // 2}, trainer.accumulate_grad_batches=2"),
                                           (["--trainer.gradient_clip_val", "0.5"], "trainer.gradient_clip_val=1.0")],
                         ids=["batch size", "seq_len", "seed", "validation interval", "micro-batches", "clipping"])
def test_resuming_with_other_settings_is_refused_and_leaves_its_row_as_it_was(tmp_path, small_corpus, changed, said) -> None:
    """A checkpoint file brings back the model's settings, not the data's or the devices': resumed with another
    batch or seq_len, the run finished a row whose tokens, steps and validation set were its first half's."""
    args = fit_args(tmp_path, small_corpus, "cut", "--trainer.max_steps", "8")
    with pytest.raises(SystemExit, match="1"):  # stopped before its budget: `bench fit` exits 1
        run_lightning_cli(args)
    store = ResultsStore(tmp_path / "cut.db")
    (before,) = store.runs(None)
    assert before.status == "failed" and before.steps == 8
    (ckpt,) = glob.glob(str(tmp_path / "cut" / "checkpoints" / "*" / "last.ckpt"))
    resumed = args[:-2]  # without --trainer.max_steps 8
    with pytest.raises(BenchError, match=f"--ckpt_path: run {before.run_id} in .* trained with .*{re.escape(said)}"):
        run_lightning_cli([*resumed, *changed, "--ckpt_path", ckpt])
    assert store.runs(None) == [before]
    run_lightning_cli([*resumed, "--ckpt_path", ckpt])  # as trained: it resumes, and finishes its budget
    (after,) = store.runs(None)
    assert (after.run_id, after.status, after.steps, after.tokens) == (before.run_id, "finished", STEPS, STEPS * BATCH * SEQ)


@pytest.mark.parametrize("cell", ["c", None], ids=["sweep cell", "plain fit"])
def test_a_new_run_fails_the_rows_of_dead_processes(tmp_path, small_corpus, cell) -> None:
    # a process killed without warning (before its first checkpoint) leaves its row `running`: a sweep cell
    # relaunched with --ckpt_path last that finds no checkpoint, or the same `bench fit` run again, starts a new
    # row, and fails the rows whose processes are gone
    store = ResultsStore(tmp_path / "cell.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()

    def running(cell: str, host: str | None, pid: int | None) -> int:
        return store.start_run(RunRecord(label="dense", model="nano", n_params=1, tokens=0, bits_per_value=16.0, seed=0,
                                         dataset="d", tokenizer="t", code_version="v", cell=cell, host=host, pid=pid))

    stale, other_cell = running("c", host, dead.pid), running("x", host, dead.pid)
    elsewhere, alive = running("c", "elsewhere", 1), running("c", host, os.getpid())
    run_lightning_cli(fit_args(tmp_path, small_corpus, "cell", "--model.tokens", str(8 * BATCH * SEQ),
                               *(["--store.cell", cell] if cell else []), "--ckpt_path", "last"))
    rows = {r.run_id: r for r in store.runs(None)}
    (new,) = [r for r in rows.values() if r.status == "finished"]
    assert new.cell == cell and new.steps == 8
    for row in (stale, other_cell):
        assert rows[row].status == "failed" and rows[row].error == (
            f"its process (pid {dead.pid} on {host}) ended without recording why (killed); found by run {new.run_id}")
    # a process on another host cannot be checked, and a live one is running
    assert rows[elsewhere].status == "running" and rows[alive].status == "running"


@pytest.mark.parametrize(
    ("weight", "activation"),
    [
        (Int(bits=2, backward="trust"), None),
        (Hadamard(Int(bits=4, backward="trust"), block=32, variant="half"), Hadamard(Int(bits=4, backward="trust"), block=32, variant="half")),
    ],
    ids=["int2", "w4a4"],
)
def test_a_checkpoint_reloads_the_same_compressed_model(tmp_path, small_corpus, weight, activation) -> None:
    L.seed_everything(0)
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=300, seq_len=SEQ, batch_size=BATCH, val_sequences=16)
    model = LanguageModel(size="nano", weight=weight, activation=activation, tokens=8 * BATCH * SEQ, vocab_size=300)
    ckpt = RunCheckpoint(every_n_steps=None, every_minutes=None)
    ckpt.dirpath = str(tmp_path / "ckpt")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=1.0, callbacks=[ckpt, StreamToStore(path=str(tmp_path / "s.db"), refit=False)])
    trainer.fit(model, datamodule=dm)
    loaded = LanguageModel.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert loaded.factory.weight.spec() == model.factory.weight.spec()
    assert loaded.factory.activation.spec() == model.factory.activation.spec()
    assert loaded.label == model.label != "dense" and loaded.factory.weight.progress == model.factory.weight.progress
    tokens = next(iter(dm.val_dataloader()))[:, :-1]
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.parametrize("weight", [lambda: VQ(dim=2, points=16), lambda: Hadamard(Compose([Magnitude(0.5), VQ(dim=2, points=16)]))],
                         ids=["vq", "hadamard(compose(magnitude, vq))"])
def test_a_checkpoint_keeps_the_vq_codebook_it_trained_with(tmp_path, small_corpus, weight, monkeypatch) -> None:
    """A codebook rebuilt elsewhere (another scipy's quasi-random samples, a lost cache) may differ: the reloaded
    model computes with the checkpoint's, not with the rebuild's."""
    L.seed_everything(0)
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=300, seq_len=SEQ, batch_size=BATCH, val_sequences=16)
    model = LanguageModel(size="nano", weight=weight(), tokens=4 * BATCH * SEQ, vocab_size=300)
    ckpt = RunCheckpoint(every_n_steps=None, every_minutes=None)
    ckpt.dirpath = str(tmp_path / "ckpt")
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        val_check_interval=1.0, callbacks=[ckpt, StreamToStore(path=str(tmp_path / "s.db"), refit=False)])
    trainer.fit(model, datamodule=dm)
    built = vq.gaussian_codebook
    monkeypatch.setattr(vq, "gaussian_codebook", lambda *a: (built(*a)[0] * 1.25, built(*a)[1] * 2))
    loaded = LanguageModel.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    (trained,) = [f for f in model.factory.weight.walk() if isinstance(f, VQ)]
    (reloaded,) = [f for f in loaded.factory.weight.walk() if isinstance(f, VQ)]
    assert torch.equal(reloaded.codebook, trained.codebook) and reloaded.codebook_mse == trained.codebook_mse
    tokens = next(iter(dm.val_dataloader()))[:, :-1]
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


@pytest.mark.parametrize("trained, scored", [(None, lambda: Hadamard(Int())), (None, lambda: VQ(dim=2, points=16)),
                                             (lambda: VQ(dim=2, points=16), lambda: VQ(dim=2, points=256)),
                                             (lambda: VQ(dim=2, points=16), lambda: VQ(dim=2, points=16, seed=1)),
                                             (lambda: Hadamard(Int()), lambda: Int())],
                         ids=["dense as hadamard(int4)", "dense as vq", "vq16 as vq256", "vq as vq of another seed",
                              "hadamard(int4) as int4"])
def test_a_checkpoint_scored_with_other_formats_keeps_theirs(trained, scored) -> None:
    """`bench validate --ckpt_path FILE` may score a checkpoint with formats it did not train with (say, a dense
    model quantized after training): those compute with their own tensors, not the checkpoint's."""
    checkpoint: dict = {}
    LanguageModel(size="nano", weight=trained and trained(), vocab_size=300).on_save_checkpoint(checkpoint)
    model = LanguageModel(size="nano", weight=scored(), vocab_size=300)
    before = [{k: v.clone() for k, v in f.tensors().items()} for f in model.factory.weight.walk()]
    model.on_load_checkpoint(checkpoint)
    after = [f.tensors() for f in model.factory.weight.walk()]
    assert len(after) == len(before) and all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
                                             for a, b in zip(after, before))


def test_a_timed_checkpoint_waits_for_the_end_of_an_accumulated_step(tmp_path, small_corpus) -> None:
    """With gradient accumulation, a checkpoint between micro-batches would hold no accumulated gradient and
    its resumed step would miss them: a save that falls due mid-step (a 30 ms period, shorter than a step)
    waits for the step's end. Each save's own loop state says after how many batches it was taken."""
    ckpt = RunCheckpoint(every_n_steps=None, every_minutes=0.0005)
    ckpt.dirpath = str(tmp_path / "ckpt")
    last = tmp_path / "ckpt" / "last.ckpt"
    batches_at_save: list[int] = []

    class Watch(L.Callback):
        stamp = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            stamp = last.stat().st_mtime_ns if last.exists() else None
            if stamp != self.stamp:
                state = torch.load(last, weights_only=False)["loops"]["fit_loop"]["epoch_loop.batch_progress"]
                batches_at_save.append(state["total"]["completed"])
                self.stamp = stamp

    L.seed_everything(0)
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=300, seq_len=SEQ, batch_size=BATCH, val_sequences=16)
    model = LanguageModel(size="nano", tokens=60 * BATCH * SEQ, vocab_size=300)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, val_check_interval=1.0, accumulate_grad_batches=3,
                        callbacks=[ckpt, Watch(), StreamToStore(path=str(tmp_path / "s.db"), refit=False)])
    trainer.fit(model, datamodule=dm)
    # Lightning counts a batch completed after its end hooks, so a save after batch i (from 0) reads i:
    # the end of a step of 3 is i = 2, 5, 8, ...
    assert len(batches_at_save) >= 3 and all((b + 1) % 3 == 0 for b in batches_at_save), batches_at_save


def test_a_checkpoint_file_validates_to_the_run_s_final_loss(tmp_path, small_corpus, capsys) -> None:
    """`bench validate --ckpt_path FILE` re-parses the checkpoint's hyperparameters as options: each must be one.
    They override the model options given, so the command says which model it scores."""
    args = fit_args(tmp_path, small_corpus, "v", "--model.tokens", str(8 * BATCH * SEQ), "--model.weight", "Int")
    run_lightning_cli(args)
    (run,) = ResultsStore(tmp_path / "v.db").runs()
    (ckpt,) = glob.glob(str(tmp_path / "v" / "checkpoints" / "*" / "last.ckpt"))
    assert torch.load(ckpt, weights_only=False)["compiled"] is False
    capsys.readouterr()
    cli = run_lightning_cli(["validate", *args[1:-2], "--model.weight", "Ternary", "--ckpt_path", ckpt])
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(run.final_val_loss, abs=1e-6)
    said = " ".join(capsys.readouterr().out.split())
    assert "the checkpoint's model, w:int nano (weight Int(bits=4" in said and "model options given with it are not used" in said


def test_validate_last_scores_the_run_that_the_same_options_trained(tmp_path, small_corpus) -> None:
    """`bench validate <the fit's options> --ckpt_path last` finds that run's last.ckpt (Lightning alone looks in
    no run's directory, warns, and scores the untrained model); options of a run never trained are refused."""
    args = fit_args(tmp_path, small_corpus, "v", "--model.tokens", str(8 * BATCH * SEQ))
    run_lightning_cli(args)
    (run,) = ResultsStore(tmp_path / "v.db").runs()
    cli = run_lightning_cli(["validate", *args[1:], "--ckpt_path", "last"])
    assert float(cli.trainer.callback_metrics["val_loss"]) == pytest.approx(run.final_val_loss, abs=1e-6)
    with pytest.raises(BenchError, match=r"--ckpt_path last: no checkpoint of this run at .*config-\w+/last\.ckpt"):
        run_lightning_cli(["validate", *args[1:], "--seed_everything", "1", "--ckpt_path", "last"])
