"""`bench` answers every input a user can get wrong with `bench: error: ...` and exit code 2, no traceback,
before training starts and without writing to an existing store or to `runs/`.

Most checks call `cslaws.bench.cli.main` in this interpreter (a fresh `bench` costs seconds of imports): an
error that is not turned into a BenchError escapes `main` there and fails the test. A few run the installed
`bench` command itself, to check what a user's terminal shows.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from cslaws.bench.cli import check_yaml, main, read_csv_rows
# Imported at collection, not first inside a test: Lightning's loggers keep the stderr they were created
# with, and a test's captured stderr is closed after it (the next test would log into a closed file).
from cslaws.bench.lightning_cli import BenchCLI, check_ckpt_path
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.errors import BenchError


def bench_command() -> str:
    """The console script installed beside this interpreter (`pip install -e .` puts it there)."""
    found = shutil.which("bench", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "the `bench` console script is not installed; run `pip install -e .`"
    return found


def run_bench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([bench_command(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_a_reader_that_leaves_early_ends_bench_quietly(tmp_path: Path) -> None:
    # `bench sweep --emit lines | head -1`: the pipe closes before bench writes (it is still importing torch)
    proc = subprocess.Popen([bench_command(), "capacity", "int", "--format", "json"], cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err  # 128 + SIGPIPE, as for a process the signal ended
    assert err == "", "a BrokenPipeError traceback, or another message"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An existing store holding one finished run: what a mistyped command must leave as it is."""
    path = tmp_path / "results.db"
    ResultsStore(path).add_finished(RunRecord(
        label="dense", model="nano", n_params=26784, tokens=1000, bits_per_value=16.0, seed=0,
        dataset="d", tokenizer="t", code_version="0", final_val_loss=5.0), curve=[(1, 1000, 5.5, 5.0)])
    return path


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory of its own, so that a `runs/` written by mistake is seen."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def assert_clean_error(rc: int, err: str, *expected: str) -> None:
    """Exit code 2, at most two lines `bench: error: ...`, each expected text in them, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err, err
    errors = [i for i, line in enumerate(lines) if line.startswith("bench: error: ")]
    assert len(errors) == 1, err
    message = "\n".join(lines[errors[0]:])
    assert len(message.splitlines()) <= 2, message
    for text in expected:
        assert text in message, (text, message)


BAD_FIT_VALUES = {
    "unknown size": (["--model.size", "no-such"], ["model", "'no-such'", "nano", "mini"]),
    "int bits 0": (["--model.weight", "Int", "--model.weight.bits", "0"], ["model.weight (Int)", "bits", "got 0"]),
    "int bits 9": (["--model.weight", "Int", "--model.weight.bits", "9"], ["model.weight (Int)", "bits", "got 9"]),
    "sparsity 1.2": (["--model.weight", "Magnitude", "--model.weight.sparsity", "1.2"], ["model.weight (Magnitude)", "sparsity=1.2", "[0, 1)"]),
    "negative tokens": (["--model.tokens", "-5"], ["model", "tokens=-5", "positive"]),
    "missing data file": (["--data.path", "text", "--data.data_files", "[missing.txt]"], ["data", "missing.txt"]),
    "group wider than a layer's row": (["--config", "formats/fp4.yaml", "--model.size", "79k"],
                                       ["'79k'", "group_size 32 does not divide the row length 56", "sizes they fit: nano, milli, mini"]),
    "N:M groups wider than a layer's row": (["--config", "formats/quest/w4a4-4of8.yaml", "--model.size", "23k"],
                                           ["'23k'", "4:8 sparsity needs rows whose length is a multiple of M=8, got 28",
                                            "sizes they fit: 14k, nano"]),
    "not an int": (["--model.tokens", "abc"], ["model.tokens", "abc", "bench fit --help"]),
    "unknown option": (["--model.sizee", "nano"], ["model.sizee", "bench fit --help"]),
    "negative seed": (["--seed_everything", "-1"], ["--seed_everything=-1", "[0, 4294967295]"]),
    "seed past numpy's": (["--seed_everything", str(2**32)], ["--seed_everything=4294967296", "[0, 4294967295]"]),
    "random seed": (["--seed_everything", "true"], ["seed_everything", "Expected a <class 'int'>", "True"]),
    "tensor-wide activation scale": (["--model.activation", "NVFP4"], ["model:", "statistic of the whole tensor", "outer_scale row"]),
    "empty label": (["--model.label", ""], ["label=''", "names it in the store"]),
    "negative lr": (["--model.lr", "-1"], ["model", "lr=-1.0", "positive and finite"]),
    "missing checkpoint": (["--ckpt_path", "nosuch.ckpt"], ["--ckpt_path nosuch.ckpt", "no such checkpoint file", "last"]),
    # Lightning's ValueError traceback, after the model and data were built
    "the best checkpoint": (["--ckpt_path", "best"], ["--ckpt_path best", "no best checkpoint"]),
    # a row of 0 steps, stored failed as "trainer.should_stop, set by a callback"
    "no steps": (["--trainer.max_steps", "0"], ["trainer.max_steps=0 is not allowed", "-1 for the whole budget"]),
    "checkpoints every 0 steps": (["--checkpoint.every_n_steps", "0"], ["checkpoint.every_n_steps=0 is not allowed", "positive"]),
    "how to load no checkpoint": (["--weights_only", "true"], ["--weights_only true", "give --ckpt_path too"]),
    "part of the validation set": (["--trainer.limit_val_batches", "2"], ["trainer.limit_val_batches=2", "whole validation set"]),
    "part of the budget": (["--trainer.limit_train_batches", "0.5"], ["trainer.limit_train_batches=0.5", "token budget"]),
    # Lightning warned and ran bf16-mixed, and the record held 16-mixed
    "16-bit AMP on a CPU": (["--trainer.precision", "16-mixed"], ["trainer.precision='16-mixed' runs as 'bf16-mixed'", "cpu"]),
    "accelerator without its package": (["--trainer.accelerator", "tpu"], ["trainer:", "torch_xla"]),
    # Lightning's TypeError traceback
    "a device count below -1": (["--trainer.devices", "-2"], ["trainer.devices='-2'", "int > 0"]),
    # Lightning took these as no clipping and no sanity check, and the record held the values given
    "a negative clipping norm": (["--trainer.gradient_clip_val", "-1"], ["trainer.gradient_clip_val=-1", "at least 0", "no clipping"]),
    "sanity steps below -1": (["--trainer.num_sanity_val_steps", "-5"], ["trainer.num_sanity_val_steps=-5", "at least -1"]),
    # Lightning takes these, and the run divided by them: a ZeroDivisionError, after its row was written
    "no batches per step": (["--trainer.accumulate_grad_batches", "0"], ["trainer.accumulate_grad_batches=0", "positive integer"]),
    "logging every 0 steps": (["--trainer.log_every_n_steps", "0"], ["trainer.log_every_n_steps=0", "positive integer"]),
    "validating every 0 steps": (["--trainer.val_check_interval", "0.0"], ["trainer.val_check_interval=0.0", "(0, 1]"]),
    # Lightning counts batches: every 1.5 steps, a validation inside a step
    "validating inside a step": (["--trainer.accumulate_grad_batches", "2", "--trainer.val_check_interval", "3"],
                                 ["trainer.val_check_interval=3 is not allowed with trainer.accumulate_grad_batches=2",
                                  "multiple of 2"]),
    # Lightning's AttributeError traceback: a time interval leaves the Trainer without a val_check_interval
    "validating every 2 seconds": (["--trainer.val_check_interval", "00:00:00:02"],
                                   ["trainer.val_check_interval='00:00:00:02'", "not a time"]),
    # refused before, but as limit_train_batches, which the user never gave
    "a fast dev run": (["--trainer.fast_dev_run", "true"], ["trainer.fast_dev_run=True", "trainer.max_steps N"]),
    "overfitting on batches": (["--trainer.overfit_batches", "0.5"], ["trainer.overfit_batches=0.5", "token budget"]),
    "negative workers": (["--data.num_workers", "-1"], ["num_workers=-1", "at least 0"]),
    # the run's one epoch would end unvalidated: stored failed after it trained
    "validating every other epoch": (["--trainer.check_val_every_n_epoch", "2"],
                                     ["trainer.check_val_every_n_epoch=2", "last at its last step"]),
    # LightningCLI replaced the run's AdamW and schedule with it, and model.lr went unused
    "an optimizer of LightningCLI's": (["--optimizer", "SGD", "--optimizer.lr", "0.1"],
                                       ["--optimizer is not allowed", "model.lr", "model.min_lr_ratio"]),
    # each of these trained and was stored finished (torch refused the betas only once training started)
    "a schedule that ends below zero": (["--model.min_lr_ratio", "-0.1"], ["min_lr_ratio=-0.1", "[0, 1]"]),
    "a schedule that ends above its peak": (["--model.min_lr_ratio", "2"], ["min_lr_ratio=2.0", "[0, 1]"]),
    "a negative weight decay": (["--model.weight_decay", "-1"], ["weight_decay=-1.0", "at least 0"]),
    "a beta of 1.5": (["--model.betas", "[1.5, 0.9]"], ["betas=[1.5, 0.9]", "[0, 1)"]),
    # 0 meant all cores, unsaid; 100,000 spawned over 1,000 workers
    "no tokenizing processes": (["--data.num_proc", "0"], ["data.num_proc 0", "at least 1"]),
    "unknown format": (["--model.weight", "Nosuch"], ["model.weight", "unknown format 'Nosuch'", "Int, LloydMax", "NVFP4"]),
    "format by its short name": (["--model.activation", "int"], ["model.activation", "unknown format 'int'", "Int"]),
    "unknown nested format": (["--model.weight", "Hadamard", "--model.weight.format", "Nosuch"],
                              ["model.weight.format", "unknown format 'Nosuch'", "Magnitude"]),
}


@pytest.mark.parametrize("args, expected", BAD_FIT_VALUES.values(), ids=BAD_FIT_VALUES.keys())
def test_bad_fit_value_is_one_error_before_anything_is_written(args, expected, store, workdir, capsys) -> None:
    before = store.read_bytes()
    rc = main(["fit", *args, "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, *expected)
    assert store.read_bytes() == before, "the store was written"
    assert not (workdir / "runs").exists(), "runs/ was written"


def test_a_kernel_forced_on_a_cpu_is_refused_before_any_work(store, workdir, capsys, monkeypatch) -> None:
    """It ran until the first training step, after the corpus and the sanity check: a traceback, and a row
    stored `failed`."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    before = store.read_bytes()
    rc = main(["fit", "--config", "formats/int4.yaml", "--model.weight.init_args.backend", "triton",
               "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, "the formats cannot run on cpu", "layer blocks.0.attn.qkv",
                       "backend='triton' was forced")
    assert store.read_bytes() == before, "the store was written"
    assert not (workdir / "runs").exists(), "runs/ was written"


@pytest.mark.parametrize(("make", "said"), [
    (lambda p: p.write_text("notes\n"), "is not a results store"),
    (lambda p: p.mkdir(), "is a folder; a store is a file"),
    (lambda p: None, "is a file, not a folder"),  # the store's folder would be a file
], ids=["text file", "folder", "file in the way"])
def test_a_store_path_that_cannot_hold_a_store_is_refused_before_any_work(make, said, workdir, capsys) -> None:
    path = workdir / "target"
    make(path)
    store = path if path.exists() else workdir / "notes.txt" / "results.db"
    (workdir / "notes.txt").write_text("a file\n")
    files = sorted(p.name for p in workdir.iterdir())
    rc = main(["fit", "--model.size", "nano", "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, said)
    assert sorted(p.name for p in workdir.iterdir()) == files, "runs/ (the logger, a checkpoint) or a store was written"


def test_validate_refuses_a_missing_checkpoint(workdir, capsys) -> None:
    rc = main(["validate", "--model.size", "nano", "--ckpt_path", "nosuch.ckpt"])
    assert_clean_error(rc, capsys.readouterr().err, "--ckpt_path nosuch.ckpt", "no such checkpoint file")
    assert not (workdir / "runs").exists(), "runs/ was written"


@pytest.mark.parametrize("command", ["validate", "test"])
@pytest.mark.parametrize("ckpt_path, words", [(None, "scores a trained run: give --ckpt_path"),
                                              ("best", "--ckpt_path best: a run keeps its last.ckpt only, no best checkpoint"),
                                              ("hpc", "--ckpt_path hpc: bench {} scores a checkpoint file or `last`")])
def test_scoring_needs_a_run_s_checkpoint(command, ckpt_path, words, workdir, capsys) -> None:
    # Lightning scores the untrained model without a checkpoint, and for `best` with no best saved raises deep inside
    rc = main([command, "--model.size", "nano", *(["--ckpt_path", ckpt_path] if ckpt_path else [])])
    assert_clean_error(rc, capsys.readouterr().err, words.format(command))
    assert not (workdir / "runs").exists(), "runs/ was written"


@pytest.mark.parametrize("ckpt_path", ["last", "hpc", "registry:model"])
def test_checkpoint_keywords_are_left_to_lightning(ckpt_path, workdir) -> None:
    # `last` with no checkpoint yet starts fresh (a sweep resumes every cell with it): not a missing file.
    check_ckpt_path(ckpt_path)
    with pytest.raises(BenchError, match="no such checkpoint file"):  # the same word as a file name is a file
        check_ckpt_path(ckpt_path.split(":")[0] + ".ckpt")


def test_a_folder_is_a_checkpoint_only_for_a_sharding_strategy(store, workdir, capsys) -> None:
    # the default strategy opened it as a file: an IsADirectoryError traceback once the corpus was prepared
    (workdir / "sharded.ckpt").mkdir()
    before = store.read_bytes()
    rc = main(["fit", "--model.size", "14k", "--ckpt_path", "sharded.ckpt", "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, "--ckpt_path sharded.ckpt is a folder", "fsdp or deepspeed")
    assert store.read_bytes() == before, "the store was written"


@pytest.mark.parametrize("command", ["fit", "validate"])
def test_a_checkpoint_of_another_vocabulary_is_refused(command, store, workdir, capsys) -> None:
    # LightningCLI builds the checkpoint's model with the data's vocab_size: a size-mismatch traceback at loading
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {}, "hyper_parameters": {"size": "14k", "vocab_size": 2048}}, "v2048.ckpt")
    before = store.read_bytes()
    rc = main([command, "--data.vocab_size", "512", "--ckpt_path", "v2048.ckpt", *(["--store.path", str(store)] if command == "fit" else [])])
    assert_clean_error(rc, capsys.readouterr().err, "--ckpt_path v2048.ckpt: its model has a vocabulary of 2048 tokens",
                       "data 512")
    assert store.read_bytes() == before, "the store was written"


def test_a_file_torch_did_not_write_is_refused_as_a_checkpoint(store, workdir, capsys) -> None:
    torch = pytest.importorskip("torch")
    torch.save({"state_dict": {}}, "saved.ckpt")
    (workdir / "sharded.ckpt").mkdir()  # FSDP and DeepSpeed checkpoints are directories: left to the strategy
    for ok in ("saved.ckpt", "sharded.ckpt"):
        check_ckpt_path(ok)
    (workdir / "notes.ckpt").write_text("not a checkpoint\n")
    before = store.read_bytes()
    rc = main(["fit", "--model.size", "nano", "--ckpt_path", "notes.ckpt", "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, "--ckpt_path notes.ckpt", "not a checkpoint")
    assert store.read_bytes() == before, "the store was written"
    assert not (workdir / "runs").exists(), "runs/ was written"


ALL_COMMANDS = ("fit", "validate", "test", "law", "capacity", "leaderboard", "plot", "plan", "report",
                "sweep", "data", "store")


@pytest.mark.parametrize(("args", "said"), [([], "a command is needed"), (["foo"], "unknown command 'foo'"),
                                            (["predict", "--model.size", "nano"], "unknown command 'predict'")],
                         ids=["no command", "unknown command", "Lightning's predict, which has no data here"])
def test_a_missing_or_unknown_command_lists_every_command(args, said, workdir, capsys) -> None:
    rc = main(args)
    assert_clean_error(rc, capsys.readouterr().err, said, ", ".join(ALL_COMMANDS))


def test_help_lists_every_command(workdir, capsys) -> None:
    assert main(["--help"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    assert listed == list(ALL_COMMANDS)


def test_malformed_yaml_config_is_named(workdir, capsys) -> None:
    (workdir / "bad.yaml").write_text("model:\n  size: [nano\n")
    rc = main(["fit", "--config", "bad.yaml"])
    assert_clean_error(rc, capsys.readouterr().err, "bad.yaml", "not valid YAML", "line 3")


@pytest.mark.parametrize(("text", "line"), [
    ("model:\n  weight:\n    class_path: Int\n    init_args: {bits: 2, bits: 4}\n", 4),
    ("model:\n  label: a\nmodel:\n  label: b\n", 3),
])
def test_a_config_that_repeats_a_key_is_refused(text, line, workdir, capsys) -> None:
    """The parser would keep the last value unsaid."""
    (workdir / "twice.yaml").write_text(text)
    for argv in (["fit", "--config", "twice.yaml"], ["sweep", "--matrix", "twice.yaml", "--dry-run"]):
        rc = main(argv)
        assert_clean_error(rc, capsys.readouterr().err, "twice.yaml", "not valid YAML", f"line {line}", "twice")


def test_a_ddp_budget_below_one_step_is_refused_before_the_processes_start(workdir, small_corpus, capsys, monkeypatch) -> None:
    """Two processes make a step of 2 x 4 x 16 tokens; each of them, once started, would say so again."""
    def started(*args, **kwargs):
        raise AssertionError("the processes were started")

    monkeypatch.setattr(BenchCLI, "fit", started)
    rc = main(["fit", "--model.size", "nano", "--model.tokens", "100", "--data.path", "text", "--data.data_files",
               f"[{small_corpus[0]}]", "--data.vocab_size", "300", "--data.seq_len", "16", "--data.batch_size", "4",
               "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
               "--trainer.logger", "false"])
    assert_clean_error(rc, capsys.readouterr().err, "the token budget of 100 tokens is smaller than one step of 128 tokens")
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize(("text", "said"), [("model: [1, 2]\n", "`model:` holds a list ('[1, 2]')"),
                                          ("trainer: null\n", "`trainer:` holds nothing"),
                                          ("store: 5\n", "`store:` holds a int ('5')")])
def test_a_config_section_that_is_no_mapping_is_refused(text, said, workdir, capsys) -> None:
    """`model: [1, 2]` trained the default model, the options before it dropped; `trainer: null` a traceback."""
    (workdir / "sec.yaml").write_text(text)
    rc = main(["fit", "--model.size", "14k", "--config", "sec.yaml"])
    assert_clean_error(rc, capsys.readouterr().err, "config sec.yaml", said, "not a mapping of settings")
    assert not (workdir / "runs").exists()


@pytest.mark.parametrize("fit", ["{trainer: null}", "{checkpoint: null}", "{model: [1, 2]}"])
def test_a_matrix_fit_section_that_is_no_mapping_is_refused(fit, workdir, capsys) -> None:
    rc = main(["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
               "--fit", fit, "--dry-run"])
    assert_clean_error(rc, capsys.readouterr().err, "the matrix's fit settings", "it must be a mapping")


def test_a_file_as_the_root_folder_is_refused_before_the_run(workdir, capsys) -> None:
    """It was found when the checkpoint was written, after the whole run: a traceback and a `failed` row."""
    (workdir / "notes.txt").write_text("a file\n")
    rc = main(["fit", "--model.size", "14k", "--trainer.default_root_dir", "notes.txt", "--store.path", "s.db"])
    assert_clean_error(rc, capsys.readouterr().err, "trainer.default_root_dir=notes.txt is a file")
    assert sorted(p.name for p in workdir.iterdir()) == ["notes.txt"]


def test_a_merge_key_overridden_in_its_mapping_is_no_repeated_key(tmp_path) -> None:
    (tmp_path / "merge.yaml").write_text("base: &b {bits: 2, grid: midrise}\nweight: {<<: *b, bits: 4}\n")
    check_yaml(str(tmp_path / "merge.yaml"))


@pytest.mark.parametrize(("text", "held"), [("hello\n", "a str ('hello')"), ("", "nothing"), ("- nano\n", "a list")])
def test_a_config_that_is_not_a_mapping_is_named(text, held, workdir, capsys) -> None:
    (workdir / "odd.yaml").write_text(text)
    for argv in (["fit", "--config", "odd.yaml"], ["sweep", "--matrix", "odd.yaml", "--dry-run"]):
        rc = main(argv)
        assert_clean_error(rc, capsys.readouterr().err, f"config odd.yaml holds {held}", "not a mapping of settings")
    assert [p.name for p in workdir.iterdir()] == ["odd.yaml"]


def test_config_with_an_unknown_key_is_a_parse_error(workdir, capsys) -> None:
    (workdir / "typo.yaml").write_text("model:\n  sizee: nano\n")
    rc = main(["fit", "--config", "typo.yaml"])
    assert_clean_error(rc, capsys.readouterr().err, "model.sizee")


def test_unknown_config_name_lists_the_shipped_ones(workdir, capsys) -> None:
    rc = main(["fit", "--config", "formats/int3_sp99.yaml"])
    assert_clean_error(rc, capsys.readouterr().err, "'formats/int3_sp99.yaml'", "formats/int4.yaml", "formats/dense.yaml")


def test_budget_refused_in_setup_is_an_error_and_no_run_row(store, workdir, small_corpus, capsys) -> None:
    # The check runs inside trainer.fit (LanguageModel.setup): past instantiation, before the first step.
    before = store.read_bytes()
    data = ["--data.path", "text", "--data.data_files", f"[{','.join(small_corpus)}]", "--data.val_sequences", "4", "--data.max_epochs", "0.001"]
    rc = main(["fit", "--model.size", "nano", *data, "--store.path", str(store)])
    assert_clean_error(rc, capsys.readouterr().err, "passes over the training split", "--data.max_epochs")
    assert store.read_bytes() == before
    assert not list(workdir.rglob("config.yaml")), "the config of a run that never trained was logged"


def test_leaderboard_refuses_a_file_that_is_not_a_store(workdir, capsys) -> None:
    notes = workdir / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 20)
    before = notes.read_bytes()
    rc = main(["leaderboard", "--store", str(notes)])
    assert_clean_error(rc, capsys.readouterr().err, "notes.txt", "not a database")
    assert notes.read_bytes() == before


@pytest.mark.parametrize("argv, said", [
    (["leaderboard", "--store", ""], "leaderboard: argument --store: '' is no path"),  # was "no results store at ."
    (["leaderboard", "--store", "folder"], "the results store folder is a folder; a store is a file"),  # was "no results store"
    (["store", "merge", "", "folder"], "store merge: argument out: '' is no path"),
    (["fit", "--model.size", "14k", "--store.path", ""], "store.path '' is not a path"),
])
def test_a_store_given_as_no_path_or_a_folder_is_named_so(argv, said, workdir, capsys) -> None:
    (workdir / "folder").mkdir()
    assert_clean_error(main(argv), capsys.readouterr().err, said)
    assert [p.name for p in workdir.iterdir()] == ["folder"]


def test_an_empty_store_variable_is_no_path(workdir, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CSLAWS_STORE", "")
    assert_clean_error(main(["leaderboard"]), capsys.readouterr().err, "$CSLAWS_STORE='' is no path")


def test_leaderboard_does_not_create_a_missing_store(workdir, capsys) -> None:
    rc = main(["leaderboard", "--store", "typo/results.db"])
    assert_clean_error(rc, capsys.readouterr().err, "typo/results.db")
    assert not (workdir / "typo").exists()


def test_sweep_with_a_bad_matrix_value(workdir, capsys) -> None:
    (workdir / "matrix.yaml").write_text("models: [no-such]\nformats: [formats/dense.yaml]\ntokens_per_param: [10]\nseeds: [0]\n")
    rc = main(["sweep", "--matrix", "matrix.yaml", "--store", "sweep.db", "--dry-run"])
    assert_clean_error(rc, capsys.readouterr().err, "'no-such'", "nano")
    assert not (workdir / "sweep.db").exists()


def test_opening_an_existing_store_only_reads_a_foreign_sqlite_file(tmp_path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
    before = other.read_bytes()
    with pytest.raises(BenchError, match="without a `runs` table"):
        ResultsStore(other, create=False)
    with pytest.raises(BenchError, match="no results store at"):
        ResultsStore(tmp_path / "missing.db", create=False)
    assert other.read_bytes() == before and not (tmp_path / "missing.db").exists()


def test_a_bug_still_tracebacks(monkeypatch) -> None:
    # Only BenchError is the user's: anything else must reach the user as a traceback, not be hidden.
    def broken(argv: list[str]) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr("cslaws.bench.cli.run", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit"])


REAL_COMMANDS = {
    "format value": (["fit", "--model.weight", "Int", "--model.weight.bits", "0"], ["model.weight (Int)", "got 0"]),
    "malformed yaml": (["fit", "--config", "bad.yaml"], ["bad.yaml", "not valid YAML"]),
    "store not sqlite": (["leaderboard", "--store", "bad.yaml"], ["bad.yaml", "not a database"]),
}


@pytest.mark.parametrize("args, expected", REAL_COMMANDS.values(), ids=REAL_COMMANDS.keys())
def test_real_bench_command_prints_one_error(args, expected, tmp_path) -> None:
    (tmp_path / "bad.yaml").write_text("model:\n  size: [nano\n")
    done = run_bench(*args, cwd=tmp_path)
    assert_clean_error(done.returncode, done.stderr, *expected)
    assert not (tmp_path / "runs").exists()


def test_csv_rows_by_their_header(tmp_path) -> None:
    path = tmp_path / "runs.csv"
    path.write_bytes("\ufeffN,D,loss\n1e6,2e7,3.5\n\n2e6,4e7,3.2\n".encode())  # a spreadsheet's byte-order mark
    assert read_csv_rows(path, "--runs") == [{"N": "1e6", "D": "2e7", "loss": "3.5"}, {"N": "2e6", "D": "4e7", "loss": "3.2"}]
    path.write_text("N,D,loss\n1e6,2e7\n")
    with pytest.raises(BenchError, match=r"--runs .*runs.csv: row 1 after the header has 2 field\(s\), the header 3"):
        read_csv_rows(path, "--runs")
