import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cslaws.bench.cli import shipped_configs
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.bench.sweep import FIT_KEYS, cells, emit, main, parse, plan_cells, write_fit_config
from cslaws.errors import BenchError
from cslaws.models.llama import SIZES, non_embedding_params

MATRICES = sorted((shipped_configs() / "matrix").glob("*.yaml"))


@pytest.mark.parametrize("path", MATRICES, ids=lambda p: p.name)
def test_shipped_matrix_parses_through_the_sweep_parser(path: Path) -> None:
    cfg = parse(["--matrix", f"matrix/{path.name}"])
    grid = cells(cfg)
    seeds = sum(len(cfg.model_seeds.get(m, cfg.seeds)) for m in cfg.models)
    budgets = cfg.tokens_per_param if cfg.tokens is None else cfg.tokens
    assert len(grid) == seeds * len(cfg.formats) * len(budgets)
    assert len({c.key for c in grid}) == len(grid), "every cell has its own key"


def test_cpu_matrix_covers_the_study_minimum() -> None:
    cfg = parse(["--matrix", "matrix/cpu.yaml"])
    assert len(cfg.models) >= 5 and len(cfg.tokens_per_param) >= 2
    labels = {Path(f).stem for f in cfg.formats}
    assert {"dense", "int8", "int4", "int3", "int2", "w4a4", "w2a2", "sp50", "int4_sp50"} <= labels
    assert labels & {"fp4", "fp4_rms", "mxfp4", "nvfp4"}, "an FP-element format"
    cheapest = min(cfg.models, key=lambda m: non_embedding_params(SIZES[m]))
    assert len(cfg.model_seeds[cheapest]) >= 2


def test_model_seeds_replace_the_seeds_of_their_models() -> None:
    cfg = parse(["--models", "[nano, micro]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[5]",
                 "--seeds", "[0]", "--model_seeds", "{nano: [0, 1, 2]}"])
    assert sorted((c.model, c.seed) for c in cells(cfg)) == [("micro", 0), ("nano", 0), ("nano", 1), ("nano", 2)]


@pytest.mark.parametrize("seeds, match", [("{huge: [1]}", "not among the matrix's models"),
                                          ("{nano: []}", "give at least one seed")])
def test_bad_model_seeds_are_refused(seeds: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse(["--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[5]",
               "--model_seeds", seeds])


def test_cell_flops_are_6nd() -> None:
    cfg = parse(["--models", "[micro]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[10]"])
    (cell,) = cells(cfg)
    n = non_embedding_params(SIZES["micro"])
    assert cell.flops == 6 * n * (10 * n)


def test_absolute_budgets_give_every_size_the_same_d(tmp_path) -> None:
    cfg = parse(["--models", "[nano, micro]", "--formats", "[formats/dense.yaml]", "--tokens", "[700000, 1400000]"])
    grid = cells(cfg)
    assert sorted((c.model, c.requested_tokens) for c in grid) == [
        ("micro", 700000), ("micro", 1400000), ("nano", 700000), ("nano", 1400000)]
    micro = next(c for c in grid if c.model == "micro" and c.tokens == 700000)
    assert micro.flops == 6 * non_embedding_params(SIZES["micro"]) * 700000
    assert micro.key.startswith("micro/dense/D700000/s0/")
    command = micro.command(tmp_path / "s.db", tmp_path / "f.yaml")
    i = command.index("--model.tokens")
    assert command[i + 1] == "700000" and "--model.tokens_per_param" not in command


def test_a_budget_in_tokens_and_one_per_parameter_are_different_cells() -> None:
    """1,339,200 tokens is exactly 50 per parameter on nano, and still another cell: the matrix asked for
    another design, and its key says which."""
    base = ["--models", "[nano]", "--formats", "[formats/dense.yaml]"]
    (per_param,) = cells(parse(base + ["--tokens_per_param", "[50]"]))
    (absolute,) = cells(parse(base + ["--tokens", f"[{50 * non_embedding_params(SIZES['nano'])}]"]))
    assert per_param.requested_tokens == absolute.requested_tokens and per_param.key != absolute.key


@pytest.mark.parametrize("budgets", [[], ["--tokens_per_param", "[10]", "--tokens", "[100000]"]])
def test_a_matrix_gives_its_budgets_one_way(budgets) -> None:
    with pytest.raises(ValueError, match="exactly one of tokens_per_param .* and tokens"):
        parse(["--models", "[nano]", "--formats", "[formats/dense.yaml]", *budgets])


def test_cell_key_changes_with_shared_settings() -> None:
    base = ["--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]"]
    (a,) = cells(parse(base))
    (b,) = cells(parse(base + ["--fit", "{data: {seq_len: 16}}"]))
    assert a.key != b.key and a.key.startswith("nano/dense/tpp2/s0/")


def test_emit_lines_and_slurm(tmp_path) -> None:
    cfg = parse(["--models", "[nano, micro]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]"])
    grid = cells(cfg)
    lines = emit(grid, tmp_path / "s.db", tmp_path / "f.yaml", "lines").splitlines()
    assert len(lines) == 2 and all(line.startswith("bench fit ") for line in lines)
    assert f"--store.cell {grid[1].key}" in lines[1]
    slurm = emit(grid, tmp_path / "s.db", tmp_path / "f.yaml", "slurm")
    assert "#SBATCH --array=0-1" in slurm and 'COMMANDS[$SLURM_ARRAY_TASK_ID]' in slurm
    # each array task writes its own store, named by its cell, under one directory; the script says how to merge
    parts = [tmp_path / "s.parts" / c.part_name for c in grid]
    assert len(set(parts)) == 2 and all(f"--store.path {p} " in slurm for p in parts)
    assert f"bench store merge {tmp_path / 's.db'} {tmp_path / 's.parts'}/*.db" in slurm


def test_fit_settings_file_is_named_by_its_content(tmp_path) -> None:
    base = ["--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]"]
    a = write_fit_config(parse(base + ["--fit", "{data: {seq_len: 16}}"]), tmp_path)
    b = write_fit_config(parse(base + ["--fit", "{data: {seq_len: 32}}"]), tmp_path)
    again = write_fit_config(parse(base + ["--fit", "{data: {seq_len: 16}}"]), tmp_path)
    assert a != b and a == again and a.name.startswith("fit-")
    assert yaml.safe_load(a.read_text()) == {"data": {"seq_len": 16}} and yaml.safe_load(b.read_text())["data"]["seq_len"] == 32


def test_running_cells_whose_process_is_gone_are_resumed(tmp_path, capsys) -> None:
    argv = ["--models", "[nano]", "--formats", "[formats/dense.yaml, formats/int4.yaml, formats/int8.yaml, "
            "formats/sp50.yaml, formats/int2.yaml, formats/int3.yaml]", "--tokens_per_param", "[2]"]
    cfg = parse(argv)
    grid = cells(cfg)
    store = ResultsStore(tmp_path / "s.db")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    rows = {0: (host, dead.pid), 1: (host, os.getpid()), 2: ("elsewhere", 1), 3: (None, None)}

    def record(cell, host, pid):
        return RunRecord(label=cell.label, model="nano", n_params=1, tokens=1, bits_per_value=16.0, seed=0,
                         dataset="d", tokenizer="t", code_version="v", cell=cell.key, host=host, pid=pid)

    for i, (h, pid) in rows.items():
        store.start_run(record(grid[i], h, pid))
    finished = record(grid[4], host, 1)
    finished.final_val_loss = 3.0
    store.add_finished(finished)
    # a run stopped short (SIGTERM, a time limit) goes on from its checkpoint, not from scratch
    store.fail(store.start_run(record(grid[5], host, dead.pid)), "stopped by SIGTERM")
    plan = plan_cells(grid, [store])
    assert [c.key for c in plan.resume] == [grid[0].key, grid[3].key, grid[5].key]
    assert [c.key for c, _ in plan.live] == [grid[1].key, grid[2].key]
    assert plan.fresh == [] and plan.done == {grid[4].key}
    # the dry run says why each live row is left alone: a live pid here, an unknowable one elsewhere
    capsys.readouterr()
    assert main(["sweep", *argv, "--store", str(tmp_path / "s.db"), "--dry-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{grid[1].key}: run 2 is running on {host} (pid {os.getpid()}); its process is alive" in out
    assert f"{grid[2].key}: run 3 is running on elsewhere (pid 1); a process on another host cannot be checked" in out
    command = grid[0].command(tmp_path / "s.db", tmp_path / "f.yaml", resume=True, keep_checkpoints=True)
    assert command[-4:] == ["--store.keep_checkpoints", "true", "--ckpt_path", "last"]
    assert grid[0].command(tmp_path / "s.db", tmp_path / "f.yaml")[-2:] == ["--store.keep_checkpoints", "false"]
    assert "--ckpt_path" not in grid[0].command(tmp_path / "s.db", tmp_path / "f.yaml")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "[giant]"], "unknown model size 'giant'"),
        (["--formats", "[formats/nope.yaml]"], "config 'formats/nope.yaml' is neither"),
        (["--tokens_per_param", "[0]"], "tokens_per_param must be positive"),
        (["--tokens_per_param", "[]"], "tokens_per_param must be positive"),
        (["--models", "[micro]", "--formats", "[formats/fp4.yaml]"], "pairs formats/fp4.yaml with micro: .* 'micro': "
         "group_size 32 does not divide the row length 48 .*; sizes they fit: nano, milli"),
        (["--jobs", "0"], "--jobs 0 is not allowed"),
        (["--emit", "pbs"], "--emit 'pbs' is not allowed"),
        (["--fit", "{trainer: {max_epochs: 2}}"], "the matrix's fit settings: trainer.max_epochs=2 is not allowed "
         r"\(allowed: 1\): the token budget"),
        (["--tokens_per_param", "[2, .nan]"], "tokens_per_param must be positive finite numbers; got \\[2.0, nan\\]"),
        (["--tokens_per_param", "[.inf]"], "tokens_per_param must be positive finite numbers"),
        (["--models", "[]"], "the matrix's models is empty"),
        (["--formats", "[]"], "the matrix's formats is empty"),
        (["--seeds", "[]"], "the matrix's seeds is empty"),
        (["--seeds", "[-1]"], "the matrix's seeds has seed -1, which is not allowed; seeds are whole numbers from 0 to 4294967295"),
        (["--seeds", str([2**32])], "the matrix's seeds has seed 4294967296, which is not allowed"),
        (["--model_seeds", "{nano: [0, -3]}"], "the matrix's model_seeds of 'nano' has seed -3, which is not allowed"),
        (["--fit", "{data: {seq_len: 8}, trainr: {max_steps: 3}}"], "the matrix's fit settings: unknown key\\(s\\) trainr; "
         "a bench fit config has: model, data, trainer"),
        (["--fit", "{model: {size: micro, lr: 0.01}, seed_everything: 5}"], "the matrix's fit settings set seed_everything, "
         "model.size, which each cell sets for itself \\(seed_everything by seeds; model.size by models\\)"),
        (["--fit", "{store: {path: other.db}}"], "set store.path, which each cell sets for itself \\(store.path by --store\\)"),
        (["--store", ""], "--store '' is not a path"),
        # each was a traceback: an AttributeError on a trainer that is no mapping
        (["--fit", "{trainer: hello}"], "the matrix's fit settings: trainer is 'hello'; it must be a mapping"),
        (["--fit", "{optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1}}}"],
         "the matrix's fit settings: fit.optimizer is not allowed: a run trains with AdamW and a warmup-then-cosine schedule"),
        (["--tokens_per_param", "null", "--tokens", "[1.5]"], r"^sweep: Parser key \"tokens\": Expected a <class 'int'>. Got "
         r"value: 1.5 \(the options: bench sweep --help\)$"),
    ],
)
def test_bad_matrix_input(args, message) -> None:
    base = {"--models": "[nano]", "--formats": "[formats/dense.yaml]", "--tokens_per_param": "[2]"}
    base.update(dict(zip(args[::2], args[1::2])))
    argv = [x for kv in base.items() for x in kv]
    with pytest.raises((SystemExit, ValueError), match=message):
        parse(argv)


@pytest.mark.parametrize("argv", [
    ["--matrix", "matrix/cpu.yaml", "--fit", "{trainer: {enable_model_summary: true}}"],
    ["--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
     "--fit", "{data: {seq_len: 16}}", "--fit={trainer: {val_check_interval: 0.5}}"],
])
def test_fit_settings_given_in_two_places_are_refused(argv) -> None:
    """The parser replaces a mapping whole: the shipped matrix's data settings (vocabulary, sequence length,
    batch) were dropped for the one trainer option given, and every cell trained on the defaults."""
    with pytest.raises(BenchError, match="--fit replaces .* whole, it does not add to them"):
        parse(argv)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "[nano, nano]"], "the matrix's models lists 'nano' twice"),
        (["--formats", f"[formats/dense.yaml, {shipped_configs() / 'formats/dense.yaml'}]"],
         "the matrix's formats lists '.*dense.yaml' twice"),
        (["--tokens_per_param", "[2, 2]"], "the matrix's tokens_per_param lists 2.0 twice"),
        (["--tokens", "[1000, 1000]"], "the matrix's tokens lists 1000 twice"),
        (["--tokens_per_param", "[2]", "--seeds", "[1, 1]"], "the matrix's seeds lists 1 twice"),
        (["--tokens_per_param", "[2]", "--model_seeds", "{nano: [3, 3]}"], "the matrix's model_seeds of 'nano' lists 3 twice"),
    ],
)
def test_repeated_matrix_values_are_refused(args, message) -> None:
    """A repeated value repeats cells: the sweep would train the same cell twice, perhaps at the same time."""
    base = {"--models": "[nano]", "--formats": "[formats/dense.yaml]"}
    base.update(dict(zip(args[::2], args[1::2])))
    with pytest.raises(BenchError, match=message):
        parse([x for kv in base.items() for x in kv])


def foreign_sqlite(path: Path) -> Path:
    """A SQLite file of another application: a table of its own, no `runs`."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE foo (x)")
    return path


@pytest.mark.parametrize("mode", ["--dry-run", "--emit=lines"])
def test_a_dry_run_or_emit_only_reads_the_store(tmp_path, capsys, mode) -> None:
    """A missing store, or an empty file (which a sweep would take), plans every cell and is not created; a file
    that is no store is refused, unchanged."""
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]", mode]
    assert main([*argv, "--store", str(tmp_path / "new.db")]) == 0
    assert "nano/dense/tpp2/s0/" in capsys.readouterr().out
    assert not (tmp_path / "new.db").exists()
    (tmp_path / "empty.db").touch()
    assert main([*argv, "--store", str(tmp_path / "empty.db")]) == 0  # it was refused as no store
    assert "nano/dense/tpp2/s0/" in capsys.readouterr().out
    assert (tmp_path / "empty.db").read_bytes() == b""
    foreign = foreign_sqlite(tmp_path / "foreign.db")
    before = foreign.read_bytes()
    with pytest.raises(BenchError, match="without a `runs` table, not a results store"):
        main([*argv, "--store", str(foreign)])
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "foreign.db"] + (["sweep"] if "emit" in mode else [])


@pytest.mark.parametrize("mode", ["--dry-run", "--emit=lines"])
def test_a_gpu_matrix_is_planned_and_emitted_on_a_machine_without_one(tmp_path, capsys, mode) -> None:
    """The cells of `--dry-run` and `--emit` run elsewhere (a SLURM script is written on a login node): the
    build check uses this machine's CPU, not the matrix's accelerator."""
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml, formats/int4.yaml]", "--tokens_per_param", "[2]",
            "--fit", "{trainer: {accelerator: gpu, devices: 2, strategy: ddp}}", "--store", str(tmp_path / "s.db"), mode]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "nano/dense/tpp2/s0/" in out and "nano/int4/tpp2/s0/" in out
    if mode == "--emit=lines":
        assert len([line for line in out.splitlines() if line.startswith("bench fit ")]) == 2


def test_a_fit_block_with_a_class_path_plans_and_emits(tmp_path, capsys) -> None:
    """jsonargparse reads a mapping with a class_path as a Namespace, which the cell's key (JSON) and its settings
    file (YAML) could not write: a TypeError traceback, for a logger or callback given as the docs say."""
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "logs"}}
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
            "--fit", yaml.safe_dump({"trainer": {"logger": logger}}), "--store", str(tmp_path / "s.db"), "--emit=lines"]
    assert main(argv) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if x.startswith("bench fit ")]
    (settings,) = (tmp_path / "sweep").glob("fit-*.yaml")
    written = yaml.safe_load(settings.read_text())["trainer"]["logger"]  # with the logger's defaults filled in
    assert str(settings) in line and written["class_path"] == logger["class_path"] and written["init_args"]["save_dir"] == "logs"


def test_emit_with_every_cell_done_writes_no_script(tmp_path, capsys) -> None:
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
            "--store", str(tmp_path / "s.db"), "--emit", "slurm"]
    (cell,) = cells(parse(argv[1:]))
    ResultsStore(tmp_path / "s.db").add_finished(RunRecord(label="dense", model="nano", n_params=1, tokens=1, bits_per_value=16.0,
                                                           seed=0, dataset="d", tokenizer="t", code_version="v", cell=cell.key,
                                                           final_val_loss=3.0))
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert out == "" and "nothing to emit: each of the 1 cells is in the store" in err
    with pytest.raises(BenchError, match="--dry-run and --emit slurm together"):  # the dry run's table alone, unsaid
        main([*argv, "--dry-run"])


def test_a_store_path_that_cannot_hold_a_store_stops_the_sweep_before_the_corpus_is_prepared(tmp_path, small_corpus) -> None:
    data = {"path": "text", "data_files": small_corpus[:1], "seq_len": 16, "batch_size": 8, "vocab_size": 300, "val_sequences": 16}
    (tmp_path / "notes.txt").write_text("not a store\n")
    cache = tmp_path / "cache"
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
            "--fit", yaml.safe_dump({"data": data}), "--store", str(tmp_path / "notes.txt")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CSLAWS_CACHE", str(cache))
        with pytest.raises(BenchError, match="notes.txt is not a results store"):
            main(argv)
    assert not cache.exists(), "the corpus was prepared before the store was refused"


@pytest.mark.parametrize("mode", ["--dry-run", "--jobs=1"])
def test_a_budget_bench_fit_would_refuse_stops_the_sweep_before_any_work(tmp_path, small_corpus, mode) -> None:
    """Every cell's budget is checked as `bench fit` checks it when training starts: at least one step and,
    when the sweep runs, at most data.max_epochs passes over the training split (it once failed each cell)."""
    data = {"path": "text", "data_files": small_corpus[:1], "seq_len": 16, "batch_size": 8, "vocab_size": 300, "val_sequences": 16}
    base = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--fit", yaml.safe_dump({"data": data}),
            "--store", str(tmp_path / "s.db"), mode]
    with pytest.raises(BenchError, match=r"cell nano/dense/tpp0.001/s0/\w+ cannot train: the token budget of 27 tokens is "
                                         "smaller than one step of 128 tokens"):
        main([*base, "--tokens_per_param", "[2, 0.001]"])
    if mode == "--jobs=1":
        with pytest.raises(BenchError, match=r"cell nano/dense/tpp100/s0/\w+ cannot train: the token budget needs [\d.]+ passes"):
            main([*base, "--tokens_per_param", "[2, 100]"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["--emit=lines", "--jobs=1"])
def test_a_store_whose_folder_cannot_be_made_stops_the_sweep_before_any_work(tmp_path, mode) -> None:
    (tmp_path / "notes.txt").write_text("a file where the store's folder would be\n")
    argv = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]", mode,
            "--store", str(tmp_path / "notes.txt" / "s.db")]
    with pytest.raises(BenchError, match="--store .*notes.txt/s.db: the sweep's folder .*notes.txt/sweep: .*notes.txt is a file, not a folder"):
        main(argv)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("mode", ["--dry-run", "--emit=lines", "--jobs=1"])
def test_a_cell_that_cannot_build_stops_the_sweep_before_any_work(tmp_path, mode) -> None:
    """A bad value in the fit block is `bench fit`'s refusal, said once before the sweep plans, writes or
    runs anything (it used to fail every cell, one log at a time)."""
    base = ["sweep", "--models", "[nano]", "--formats", "[formats/dense.yaml]", "--tokens_per_param", "[2]",
            "--store", str(tmp_path / "s.db"), mode]
    cases = [("{data: {seq_len: -5}}", "seq_len=-5 is not allowed; it must be at least 1")]
    if mode == "--jobs=1":  # a dry run or --emit plans cells that run elsewhere: this machine's devices don't count
        cases.append(("{trainer: {accelerator: tpu}}", "trainer: Requirement 'torch_xla"))  # the Trainer's own refusal
    for fit, said in cases:
        with pytest.raises(BenchError, match=f"^the matrix's cell nano/dense/tpp2/s0/\\w+ does not build: {said}"):
            main([*base, "--fit", fit])
    assert list(tmp_path.iterdir()) == []


def test_a_bad_format_config_is_named_once(tmp_path) -> None:
    bad_format = tmp_path / "int0.yaml"
    bad_format.write_text("model:\n  weight: {class_path: Int, init_args: {bits: 0}}\n")
    with pytest.raises(BenchError) as err:
        parse(["--models", "[nano]", "--formats", f"[{bad_format}]", "--tokens_per_param", "[2]"])
    assert str(err.value).startswith(f"the matrix's format {bad_format}: model.weight (Int): bits must be")
    assert str(err.value).count(str(bad_format)) == 1


@pytest.mark.slow
def test_fit_keys_are_the_options_of_bench_fit(tmp_path) -> None:
    """FIT_KEYS, which a matrix's fit block is checked against, follows the real `bench fit` parser."""
    out = subprocess.run([sys.executable, "-m", "cslaws", "fit", "--help"], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={**os.environ, "COLUMNS": "200"}).stdout
    options = set(re.findall(r"^  --(\w+)\b(?!\.)", out, re.MULTILINE)) - {"help", "config", "print_config"}
    assert options == set(FIT_KEYS)


@pytest.mark.slow
def test_sweep_fills_the_store_and_resumes(tmp_path, capsys, small_corpus) -> None:
    matrix = tmp_path / "m.yaml"
    data = {"path": "text", "data_files": small_corpus[:1], "seq_len": 16, "batch_size": 8, "vocab_size": 300, "val_sequences": 16}
    matrix.write_text(yaml.safe_dump({
        "models": ["nano"], "formats": ["formats/dense.yaml", "formats/int4.yaml"], "tokens_per_param": [0.5], "seeds": [0],
        "fit": {"data": data,
                "trainer": {"val_check_interval": 0.5, "enable_model_summary": False, "logger": False,
                            "default_root_dir": str(tmp_path / "root")}},
    }))
    store_path = tmp_path / "runs.db"
    assert main(["sweep", "--matrix", str(matrix), "--store", str(store_path)]) == 0
    runs = ResultsStore(store_path).runs()
    assert sorted(r.label for r in runs) == ["dense", "int4"]
    assert (tmp_path / "root" / "checkpoints").is_dir(), "the cells checkpointed"
    assert not list((tmp_path / "root" / "checkpoints").rglob("*.ckpt")), "finished cells' checkpoints are deleted"
    # nano at 0.5 tokens per parameter asks for 13,392 tokens: 104 whole steps of 8 x 16 (even, for the two validations)
    assert all(r.cell and r.status == "finished" and (r.steps, r.tokens_per_step, r.tokens) == (104, 128, 13_312)
               and r.final_val_loss > 0 for r in runs)
    capsys.readouterr()
    assert main(["sweep", "--matrix", str(matrix), "--store", str(store_path), "--dry-run"]) == 0
    assert "2 cells, 0 to run" in capsys.readouterr().out
    assert main(["sweep", "--matrix", str(matrix), "--store", str(store_path)]) == 0
    assert len(ResultsStore(store_path).runs(None)) == 2, "a resumed sweep runs nothing twice"


@pytest.mark.slow
def test_ddp_two_processes_match_one_and_write_one_run(tmp_path, small_corpus) -> None:
    """Two gloo processes of batch 4 see the same global batches as one process of batch 8 (the training
    windows are in a fixed order and DistributedSampler interleaves them), so the losses agree; the 15
    validation windows are scored once each, not evened out to 8 per rank by repeating one."""

    def fit(devices: int, batch: int, store: Path) -> tuple[float, list[float]]:
        cmd = [sys.executable, "-m", "cslaws", "fit", "--model.size", "nano", "--model.tokens", str(30 * 8 * 16),
               "--data.path", "text", "--data.data_files", str(small_corpus), "--data.vocab_size", "300",
               "--data.seq_len", "16", "--data.batch_size", str(batch), "--data.val_sequences", "15",
               "--trainer.accelerator", "cpu", "--trainer.devices", str(devices), "--trainer.logger", "false",
               "--trainer.enable_model_summary", "false", "--store.path", str(store), "--store.refit", "false"]
        if devices > 1:
            cmd += ["--trainer.strategy", "ddp"]
        subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        (run,) = ResultsStore(store).runs(None)
        assert run.status == "finished" and run.tokens == 30 * 8 * 16
        return run.final_val_loss, [p[2] for p in ResultsStore(store).curve(run.run_id) if p[2] is not None]

    one, one_train = fit(1, 8, tmp_path / "one.db")
    two, two_train = fit(2, 4, tmp_path / "two.db")
    assert abs(one - two) < 1e-3
    # a step's train loss is the whole global batch's, not rank 0's half of it (0.02 nats off at step 10)
    assert len(one_train) == len(two_train) == 3 and max(abs(a - b) for a, b in zip(one_train, two_train)) < 1e-3
