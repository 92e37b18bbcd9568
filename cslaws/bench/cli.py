"""The `bench` command: `fit / validate / test` through LightningCLI, the law tools, sweeps and stores by name.

`--config formats/int4.yaml` takes a path that exists as is; otherwise it is looked up among the configs
shipped with the package (the repository's `configs/`), so it works from any directory.

Input a user got wrong (a value, a config file, a data path, a store) raises `cslaws.errors.BenchError`
anywhere below; `main` is the one place that turns it into `bench: error: <message>` and exit code 2. Any
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import os
import signal
import sys
import tempfile
from importlib import resources
from pathlib import Path

import yaml

from cslaws.errors import BenchError

#: `bench <word> ...` hands the whole command line (the word first) to that module's `main(argv)`; the text is
#: the word's line in `bench --help`.
ROUTES = {
    "law": ("cslaws.laws.cli", "Fit scaling laws to runs in a CSV file or to a results store."),
    "capacity": ("cslaws.laws.cli", "Gaussian MSE, bits and predicted capacity of formats."),
    "leaderboard": ("cslaws.laws.cli", "Refit the compression law over a results store and rank formats."),
    "plot": ("cslaws.laws.cli", "Figures of the leaderboard fit."),
    "plan": ("cslaws.laws.cli", "Rank formats by predicted loss under a budget."),
    "report": ("cslaws.laws.cli", "One HTML page of a results store's law fits."),
    "sweep": ("cslaws.bench.sweep", "Run a benchmark matrix into a results store."),
    "data": ("cslaws.bench.prepare", "Prepare a corpus as memory-mapped token files."),
    "store": ("cslaws.bench.store_cli", "Merge results stores, or import runs into one."),
}


def shipped_configs() -> Path:
    return Path(str(resources.files("cslaws.configs")))


def file_in_the_way(folder: Path) -> Path | None:
    """The file that stops `folder` from being made (its nearest existing path, when that is not a folder), or
    None: an `--out` is checked with it before any work, as the write at the end would fail."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())  # the parents end in '.' or '/'
    return None if existing.is_dir() else existing


def check_can_create(folder: Path, what: str) -> None:
    """`folder` is a folder or can be made one, and files can be made in it: checked before any work, as a
    write at the end would fail and lose it. `what` (an option and its value) starts the error."""
    blocker = file_in_the_way(folder)
    if blocker is not None:
        raise BenchError(f"{what}: {blocker} is a file, not a folder; give a path in a folder (missing folders are made)")
    # The nearest existing folder is where the missing folders, or the files, will be made: make (and remove) a
    # file there, as its permission bits do not tell (root may not write in /sys, nor anyone in /proc).
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".bench-write-check-"):
            pass
    except OSError as err:
        raise BenchError(f"{what}: cannot write in {existing} ({err.strerror or err}); give a path in a folder you "
                         "can write to") from None


def path_argument(text: str) -> Path:
    """An argparse type for a path option (`--out`, `--store`): an empty value is no path, where `Path("")`
    would be the working directory (a plot written there, a store said to be missing at `.`)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is no path")
    return Path(text)


#: The CSV files of runs shipped in the package (`cslaws/laws/data/`), read by their path under it.
SHIPPED_DATA = ("data/chinchilla/svg_extracted_data.csv", "data/quest/runs.csv")


def runs_csv_path(path: Path) -> Path:
    """A CSV of runs (`--runs`) as given when it exists, else a data set shipped in the package (data/...),
    so that the README's commands work from any folder."""
    if path.is_file():
        return path
    shipped = resources.files("cslaws.laws") / str(path)
    if shipped.is_file():
        return Path(str(shipped))
    raise BenchError(f"--runs {str(path)!r}: no such file, nor a shipped data set ({', '.join(SHIPPED_DATA)})")


def read_csv_rows(path: Path, option: str) -> list[dict[str, str]]:
    """The rows of the CSV file of runs `path` (given as `option`) by its header: one field per column in every
    row (`csv.DictReader` would fill a short row with None and keep a long row's extra fields apart, so that
    a shifted row reads as other values), and a byte-order mark, as spreadsheets write it, is not part of the
    first column's name."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            body = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:  # a binary file (a results store, say) is no CSV
        raise BenchError(f"{option} {path}: not a CSV text file ({err}); expected a CSV of runs: a header row, then "
                         "one run per row") from None
    if header is None:
        return []
    if repeated := sorted({name for name in header if header.count(name) > 1}):
        # a dict keeps the last of them: `N,D,loss,loss` was fitted on the second loss column, unsaid
        raise BenchError(f"{option} {path}: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
                         "give each column its own name")
    for number, fields in enumerate(body, start=1):
        if fields and len(fields) != len(header):
            raise BenchError(f"{option} {path}: row {number} after the header has {len(fields)} field(s), the header "
                             f"{len(header)}; give every row a field per column (an empty field for a missing value)")
    return [dict(zip(header, fields)) for fields in body if fields]


def resolve_config(value: str) -> str:
    """A config file as given when it exists, else the shipped config of that name; it must be valid YAML."""
    if Path(value).is_file():
        path = value
    elif (shipped_configs() / value).is_file():
        path = str(shipped_configs() / value)
    else:
        known = sorted(str(p.relative_to(shipped_configs())) for p in shipped_configs().rglob("*.yaml"))
        raise BenchError(f"config {value!r} is neither a file nor a shipped config; shipped configs: {', '.join(known)}")
    check_yaml(path)
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key repeated in one mapping. YAML makes a mapping's keys unique, but
    PyYAML and the config parser keep the last one unsaid: a format file with `bits: 4` under `bits: 2` would
    train a format other than the one a reader sees first."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, whose keys the ones given here override
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                repeated = key in seen
            except TypeError:  # an unhashable key: the safe loader's own error names it
                break
            if repeated:
                raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                        f"found the key {key!r} twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def check_yaml(path: str) -> None:
    """Refuse a config file that is not YAML (or repeats a key in a mapping), naming the file and the place (the
    parser's own message names only `<unicode string>`, which does not tell a user with several configs which
    one is broken), or whose YAML is not a mapping of settings (the parser's "Unexpected config: hello" names
    neither)."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BenchError(f"config {path} is not valid YAML{where}: {problem}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise BenchError(f"config {path} cannot be read: {err}") from err
    if not isinstance(data, dict):
        raise BenchError(f"config {path} holds {_held(data)}, not a mapping of settings (such as `model: ...`)")
    # a section that is no mapping: the parser reset `model: [1, 2]` to the defaults unsaid (a whole run of
    # the default model was trained and stored), and `trainer: null` ended in a traceback
    for key in SECTIONS:
        if key in data and not isinstance(data[key], dict):
            raise BenchError(f"config {path}: `{key}:` holds {_held(data[key])}, not a mapping of settings")


#: Sections of `bench fit` configs (and a matrix's `fit:`) whose value is a mapping of settings.
SECTIONS = ("model", "data", "trainer", "store", "checkpoint", "fit")


def _held(value: object) -> str:
    return "nothing" if value is None else f"a {type(value).__name__} ({str(value)[:40]!r})"


def resolve_config_args(argv: list[str]) -> list[str]:
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out += [arg, resolve_config(argv[i + 1])]
            i += 2
            continue
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config(arg.split("=", 1)[1])
        out.append(arg)
        i += 1
    return out


#: The commands of `bench fit`'s LightningCLI, and their lines in `bench --help`.
LIGHTNING_COMMANDS = {
    "fit": "Train a model over a format and store the run (the main job).",
    "validate": "Score a model (a checkpoint) on the validation set.",
    "test": "Score a model (a checkpoint) on the validation set, as Lightning's test loop.",
}


def usage() -> str:
    """`bench --help`: every command, its line, and where each one's options are listed."""
    lines = [f"  {name:<12}{text}" for name, text in
             [*LIGHTNING_COMMANDS.items(), *((name, text) for name, (_, text) in ROUTES.items())]]
    return "usage: bench COMMAND [OPTIONS]   (bench COMMAND --help: its options)\n\ncommands:\n" + "\n".join(lines)


def run(argv: list[str]) -> int:
    """Dispatch one `bench` command line; user errors propagate as BenchError."""
    if argv and argv[0] in ROUTES:
        return importlib.import_module(ROUTES[argv[0]][0]).main(argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(usage())
        return 0
    # options may come before a LightningCLI command (`bench --config c.yaml fit`); a first word that is
    # neither an option nor a command is a typo
    if not argv or not (argv[0].startswith("-") or argv[0] in LIGHTNING_COMMANDS):
        given = f"unknown command {argv[0]!r}" if argv else "a command is needed"
        raise BenchError(f"{given}; the commands: {', '.join([*LIGHTNING_COMMANDS, *ROUTES])} (bench --help)")
    from cslaws.bench.lightning_cli import run_lightning_cli

    run_lightning_cli(resolve_config_args(argv))
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `bench` entry point: a BenchError from any command ends as `bench: error: ...` and exit code 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return run(argv)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of stdout left (`bench sweep --emit lines | head -1`): end quietly with the status of a
        # process killed by SIGPIPE, as other tools do; stdout goes to /dev/null so that Python's flush at exit
        # does not fail on the pipe a second time
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    raise SystemExit(main())
