from types import SimpleNamespace

import lightning as L
import pytest
import torch

from cslaws.bench.callback import StreamToStore, print_leaderboard_row
from cslaws.bench.data import TextDataModule
from cslaws.bench.module import LanguageModel
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.formats.base import Format
from cslaws.formats.int import Int
from cslaws.formats.linear import storage_bits
from cslaws.laws.capacity import gaussian_mse_of_levels


def fit(model: LanguageModel, store_path, small_corpus, **trainer_kw) -> StreamToStore:
    dm = TextDataModule(path="text", data_files=small_corpus, vocab_size=300, seq_len=16, batch_size=8, val_sequences=16)
    cb = StreamToStore(path=str(store_path), refit=False)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, val_check_interval=0.5,
                        log_every_n_steps=5, callbacks=[cb], **trainer_kw)
    trainer.fit(model, datamodule=dm)
    return cb


def test_a_run_is_recorded_with_what_defines_it(tmp_path, small_corpus) -> None:
    L.seed_everything(7)
    model = LanguageModel(size="nano", label="int4", weight=Int(bits=4, backward="trust"), tokens=20 * 128, vocab_size=300)
    fit(model, tmp_path / "s.db", small_corpus)
    store = ResultsStore(tmp_path / "s.db")
    (run,) = store.runs()
    assert (run.label, run.model, run.n_params, run.tokens, run.seed) == ("int4", "nano", model.n_params, 20 * 128, 7)
    assert run.weight == Int(bits=4, backward="trust").spec() and run.activation["class_path"].endswith("Dense")
    # the formats' Gaussian errors as measured at the start: INT4 with row scales is the Gaussian integral
    exact = gaussian_mse_of_levels(Int(bits=4).gaussian_grid().numpy())
    assert run.capacity == {"weight": {"gmse": exact, "parts": [{"class": "Int", "family": "scalar", "gmse": exact}]},
                            "activation": None}
    assert (run.bits_per_value, run.activation_bits) == storage_bits(model.model) and run.activation_bits == 16.0
    assert (run.steps, run.tokens_per_step) == (20, 128)
    assert run.dataset.startswith("text:") and run.tokenizer.startswith("bytelevel-bpe-300@")
    curve = store.curve(run.run_id)
    val = [p for p in curve if p[3] is not None]
    assert [p[0] for p in val] == [10, 20] and val[-1][3] == pytest.approx(run.final_val_loss)
    assert [p[0] for p in curve if p[2] is not None] == [5, 10, 15, 20]
    assert all(p[1] == p[0] * 128 for p in curve)


class Exploding(Format):
    """Dense until its 30th call in training, then raises: a crash in the middle of training (the GMSE measured
    when the run starts calls it without autograd)."""

    bits_per_value = 16.0

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def compress(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += torch.is_grad_enabled()
        if self.calls > 30:
            raise RuntimeError("boom")
        return x


def test_a_crash_leaves_the_run_failed_not_finished(tmp_path, small_corpus) -> None:
    model = LanguageModel(size="nano", label="exploding", weight=Exploding(), tokens=40 * 128, vocab_size=300)
    with pytest.raises(RuntimeError, match="boom"):
        fit(model, tmp_path / "s.db", small_corpus)
    store = ResultsStore(tmp_path / "s.db")
    assert store.runs() == []
    (run,) = store.runs("failed")
    assert run.error.startswith("RuntimeError: boom (stopped at step ") and run.error.endswith(" of 40)")
    assert run.final_val_loss is None and run.tokens == run.steps * 128


def test_a_failure_of_a_run_of_several_processes_says_whose_view_it_is(tmp_path) -> None:
    """Rank 0 writes the row: another rank's crash reaches it as a broken collective (gloo's "Connection closed
    by peer"), which the row must not pass off as the cause."""
    store = ResultsStore(tmp_path / "s.db")
    run_id = store.start_run(RunRecord(label="dense", model="nano", n_params=1, tokens=0, bits_per_value=16.0, seed=0,
                                       dataset="d", tokenizer="t", code_version="v"))
    callback = StreamToStore(path=str(tmp_path / "s.db"))
    callback.store, callback.run_id = store, run_id
    module = SimpleNamespace(total_steps=30, trained_steps=3, trained_tokens=384, trained_epochs=0.1)
    callback.on_exception(SimpleNamespace(global_step=3, world_size=2), module, RuntimeError("Connection closed by peer"))
    assert store.record(run_id).error == ("RuntimeError: Connection closed by peer (stopped at step 3 of 30; as rank 0 "
                                          "of 2 processes saw it)")


def synthetic_store(path, effs: dict[str, float]) -> ResultsStore:
    """Runs drawn from L = 400 (N eff)^-0.3 + 2000 D^-0.3 + 1.8, without noise, at two budgets per size."""
    store = ResultsStore(path)
    for label, eff in effs.items():
        for n in (1e6, 2e6, 4e6, 8e6, 1.6e7):
            for tpp in (5, 20):
                loss = 400 * (n * eff) ** -0.3 + 2000 * (tpp * n) ** -0.3 + 1.8
                store.add_finished(RunRecord(label=label, model="x", n_params=int(n), tokens=int(tpp * n), bits_per_value=4.0,
                                             seed=0, dataset="d", tokenizer="t", code_version="0", final_val_loss=loss))
    return store


def test_refit_prints_this_formats_row(tmp_path, capsys) -> None:
    store = synthetic_store(tmp_path / "s.db", {"dense": 1.0, "int4": 0.6, "int2": 0.2})
    run_id = next(r.run_id for r in store.runs() if r.label == "int4")
    print_leaderboard_row(store, run_id, "int4")
    out = capsys.readouterr().out
    assert "int4" in out and "int2" not in out
    assert "0.600" in out


def test_refit_says_why_there_is_no_law_yet(tmp_path, capsys) -> None:
    store = synthetic_store(tmp_path / "s.db", {"int4": 0.6})  # no dense reference to fit against
    print_leaderboard_row(store, store.runs()[0].run_id, "int4")
    assert "no law yet for 'int4'" in capsys.readouterr().out
