"""Every shipped YAML goes through the real `bench` command line parser and builds its objects."""

from pathlib import Path

import pytest

from cslaws.bench.cli import resolve_config, shipped_configs
from cslaws.bench.lightning_cli import BenchCLI, run_lightning_cli
from cslaws.errors import BenchError
from cslaws.formats.base import Format

RUN_CONFIGS = sorted(p for p in shipped_configs().rglob("*.yaml") if p.parent.name != "matrix")


def build(path: Path, *extra: str) -> BenchCLI:
    return run_lightning_cli(["--config", str(path), "--model.size", "nano", *extra], run=False, logger=False)


def named_apart(path: Path, label: str) -> bool:
    """A QuEST config whose label is not a portable file name (`w4a4-4:8`) says so in its header:
    `# File name <file>: the label keeps QuEST's `<label>` ...`."""
    return path.parent.name == "quest" and f"# File name {path.name}: the label keeps QuEST's `{label}`" in path.read_text()


def test_configs_are_shipped() -> None:
    names = {str(p.relative_to(shipped_configs())) for p in RUN_CONFIGS}
    assert {"formats/dense.yaml", "formats/int4.yaml", "formats/w4a4.yaml", "formats/int4_sp50.yaml"} <= names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(shipped_configs())))
def test_config_parses_and_builds(path: Path) -> None:
    cli = build(path)
    model = cli.model
    assert ":" not in path.name, "a shipped file name has no colon (not portable)"
    assert model.label == path.stem or named_apart(path, model.label), "a format config's label is its file stem"
    for fmt in model.factory.formats:
        assert isinstance(fmt, Format)
        assert fmt.bits_per_value > 0


def test_config_lookup_by_shipped_name_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Path(resolve_config("formats/int4.yaml")) == shipped_configs() / "formats" / "int4.yaml"
    local = tmp_path / "formats" / "int4.yaml"
    local.parent.mkdir()
    local.write_text("model: {label: mine}\n")
    assert resolve_config("formats/int4.yaml") == "formats/int4.yaml"


def test_unknown_config_lists_shipped_ones(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchError, match=r"config 'formats/int3_sp99.yaml' is neither.*formats/int4.yaml"):
        resolve_config("formats/int3_sp99.yaml")


def test_print_config_through_the_console_entry_point(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_lightning_cli(["fit", "--config", resolve_config("formats/int4.yaml"), "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "label: int4" in out and "class_path: cslaws.formats" in out


def test_bench_fit_shows_a_rich_progress_bar_without_the_logger_counter(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.callbacks.progress.progress_bar import get_standard_metrics

    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", resolve_config("formats/dense.yaml"), "--model.size", "nano"], run=False)
    bar = cli.trainer.progress_bar_callback
    assert isinstance(bar, RichProgressBar)
    assert "v_num" in get_standard_metrics(cli.trainer)  # what Lightning would show
    assert "v_num" not in bar.get_metrics(cli.trainer, cli.model)


def test_enable_progress_bar_false_is_a_run_without_one(tmp_path, monkeypatch) -> None:
    """The default bar sat in the trainer's callbacks, and Lightning refused the option (`bench: error: trainer:
    ... found ProgressBar in callbacks list`)."""
    monkeypatch.chdir(tmp_path)
    cli = run_lightning_cli(["--config", resolve_config("formats/dense.yaml"), "--model.size", "nano",
                             "--trainer.enable_progress_bar", "false"], run=False)
    assert cli.trainer.progress_bar_callback is None
