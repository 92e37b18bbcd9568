"""`bench store import`: write runs trained elsewhere (a CSV, one run per row) into a results store, each
with the format spec of its label's config, so that the store's law commands (`bench law unified`,
`bench leaderboard`) fit them like runs trained here.

    bench store import --runs runs.csv --label-col format --configs formats/quest/ --dataset D --tokenizer T \
        --val-set V [--store PATH]

Each row needs N (non-embedding parameters), D (tokens), the final loss and a label; the label names a
config of `--configs` (its `model.label`), whose weight and activation formats are stored as the run's
specs. Storage bits are measured on the model's own layer shapes when N is one of the suite's model
sizes (`cslaws.models.llama.SIZES`; QuEST's 30M-800M are), else at the formats' reference rows.
Every run is marked `source = "imported: <file> row <k>"` (k counts data rows from 1) and gets the
comparability fields given on the command line (`--dataset`, `--tokenizer`, `--val-set`) and the CSV's
`vocab_size` / `sequence_length` columns when present, so the imported runs form one comparable group.
A label without a config, a row without a finite loss or whose N or D is not a positive whole number, or
an `--exclude` label that no row has is an error: nothing is written then (the runs are written in one
transaction). The comparability fields have no defaults: a run imported without them would join runs of
another corpus in a fit. A row the store already holds
(the same CSV row, every column, with the same label, N, D, loss and comparability fields: the file imported
again, under any name or with rows appended) is skipped, never stored twice; the same rows imported with
another `--dataset`, `--tokenizer` or `--val-set` are other runs.
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from cslaws.bench.store import ResultsStore, RunRecord, check_can_hold_store, default_store_path
from cslaws.errors import BenchError, BenchParser
from cslaws.formats import Format
from cslaws.formats.dense import Dense
from cslaws.bench.cli import path_argument, read_csv_rows, runs_csv_path, shipped_configs
from cslaws.laws.capacity import check_fits, load_format_config, model_bits, run_capacity
from cslaws.models.llama import SIZES, non_embedding_params

#: The comparability key of QuEST's runs, named in the help: C4, GPT-2 tokenizer padded to 50304, C4 validation.
QUEST_DATASET = "C4 (QuEST)"
QUEST_TOKENIZER = "GPT-2 BPE (QuEST, vocabulary padded to 50304)"
QUEST_VAL_SET = "C4 validation (QuEST)"


def parser() -> argparse.ArgumentParser:
    p = BenchParser(prog="bench store import", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="CSV file, one run per row")
    p.add_argument("--configs", required=True, help="folder of format configs (a path or a shipped one, e.g. formats/quest/)")
    p.add_argument("--label-col", default="format", help="column of format labels (default: format)")
    p.add_argument("--n-col", default="N", help="column of non-embedding parameters (default: N)")
    p.add_argument("--d-col", default="D", help="column of training tokens (default: D)")
    p.add_argument("--loss-col", default="loss", help="column of final validation loss (default: loss)")
    p.add_argument("--exclude", nargs="+", action="extend", default=[], metavar="LABEL", help="labels not to import")
    # required: runs are fitted together only when these agree, and a default would name a corpus for any file
    p.add_argument("--dataset", required=True, help=f"dataset of every run (QuEST's: {QUEST_DATASET!r})")
    p.add_argument("--tokenizer", required=True, help=f"tokenizer of every run (QuEST's: {QUEST_TOKENIZER!r})")
    p.add_argument("--val-set", required=True, help=f"validation set of every run (QuEST's: {QUEST_VAL_SET!r})")
    p.add_argument("--store", type=path_argument, default=None, help="results store (default: $CSLAWS_STORE or runs/results.db)")
    return p


def configs_by_label(folder: str) -> dict[str, tuple[Format | None, Format | None]]:
    """(weight, activation) of every config in `folder`, by its `model.label`."""
    path = Path(folder) if Path(folder).is_dir() else resolve_config_dir(folder)
    out: dict[str, tuple[Format | None, Format | None]] = {}
    for f in sorted(path.glob("*.yaml")):
        label, weight, activation = load_format_config(f)
        if label in out:
            raise BenchError(f"label {label!r} is named by two configs in {path}; a label must name one format")
        out[label] = (weight, activation)
    if not out:
        raise BenchError(f"no format configs (*.yaml) in {path}")
    return out


def resolve_config_dir(name: str) -> Path:
    """A shipped config folder (e.g. formats/quest/)."""
    shipped = shipped_configs() / name
    if not shipped.is_dir():
        raise BenchError(f"--configs {name!r} is neither a folder nor a shipped config folder (e.g. formats/quest/)")
    return shipped


def size_of(n_params: int) -> str | None:
    """The suite's model size with exactly `n_params` non-embedding parameters, if any."""
    return next((name for name, size in SIZES.items() if non_embedding_params(size) == n_params), None)


def bits_of(weight: Format | None, activation: Format | None, size: str | None) -> tuple[float, float]:
    """(weight, activation) storage bits: on the layers of model `size`, else at the formats' reference rows.
    Formats that cannot compress that size's layers (a scale group that does not divide a row) are a BenchError."""
    if size is None:
        return (weight or Dense()).bits_per_value, (activation or Dense()).bits_per_value
    check_fits(weight, activation, size)
    bits = model_bits(weight, activation, size)
    return bits["weight"], bits["activation"]


def _number(row: dict[str, str], col: str, k: int, path: Path) -> float:
    if col not in row:
        raise BenchError(f"{path} has no column {col!r}; columns: {', '.join(row)}")
    try:
        return float(row[col])
    except ValueError:
        raise BenchError(f"{path} row {k}: {col} = {row[col]!r} is not a number") from None


#: The largest whole number a store's INTEGER column holds (SQLite's signed 64 bits).
MAX_COUNT = 2**63 - 1


def _count(row: dict[str, str], col: str, k: int, path: Path) -> int:
    """A row's N, D, vocabulary or sequence length: a positive whole number (a run of no parameters or no
    tokens did not happen) that a store can hold. Digits are read exactly; `1.3e11` through a float."""
    text = row.get(col, "")
    try:
        value = int(text.strip())
    except ValueError:
        number = _number(row, col, k, path)
        if not (math.isfinite(number) and number == int(number)):
            raise BenchError(f"{path} row {k}: {col} = {text!r} is not a positive whole number") from None
        value = int(number)
    if not 1 <= value <= MAX_COUNT:
        raise BenchError(f"{path} row {k}: {col} = {text!r} is not a positive whole number of at most {MAX_COUNT:.3g} "
                         "(what a results store holds)")
    return value


def records(args: argparse.Namespace) -> list[RunRecord]:
    """One finished RunRecord per CSV row (all rows checked before any is written)."""
    configs = configs_by_label(args.configs)
    rows = read_csv_rows(runs_csv_path(args.runs), "--runs")
    if not rows:
        raise BenchError(f"{args.runs} has no runs")
    if args.label_col not in rows[0]:
        raise BenchError(f"{args.runs} has no column {args.label_col!r}; columns: {', '.join(rows[0])}")
    labels = {row[args.label_col] for row in rows}
    unknown = [x for x in args.exclude if x not in labels]
    if unknown:
        raise BenchError(f"--exclude {' '.join(unknown)}: no such label in {args.runs}; labels: {', '.join(sorted(labels))}")
    out = []
    for k, row in enumerate(rows, start=1):
        label = row[args.label_col]
        if label in args.exclude:
            continue
        if label not in configs:
            raise BenchError(f"{args.runs} row {k}: label {label!r} has no config in {args.configs}; labels: {', '.join(sorted(configs))}")
        loss = _number(row, args.loss_col, k, args.runs)
        if not (math.isfinite(loss) and loss > 0):  # a cross-entropy in nats is positive
            raise BenchError(f"{args.runs} row {k}: loss {loss!r} is not a positive finite number")
        weight, activation = configs[label]
        weight_spec, activation_spec = (None if f is None else f.spec() for f in (weight, activation))
        n_params = _count(row, args.n_col, k, args.runs)
        vocab = _count(row, "vocab_size", k, args.runs) if row.get("vocab_size") else None
        size = size_of(n_params)
        try:
            w_bits, a_bits = bits_of(weight, activation, size)
        except BenchError as err:
            raise BenchError(f"{args.runs} row {k}: label {label!r} with N = {n_params:,}, the N of size {size!r}: {err}") from None
        out.append(RunRecord(
            label=label, model=size or "imported", n_params=n_params, tokens=_count(row, args.d_col, k, args.runs),
            bits_per_value=w_bits, activation_bits=a_bits, seed=0,
            dataset=args.dataset, tokenizer=args.tokenizer, val_set=args.val_set, vocab_size=vocab,
            seq_len=_count(row, "sequence_length", k, args.runs) if row.get("sequence_length") else None,
            code_version="imported", config=_row_text(row),
            weight=weight_spec, activation=activation_spec, capacity=run_capacity(weight_spec, activation_spec),
            source=f"imported: {args.runs.name} row {k}", status="finished", final_val_loss=loss,
        ))
    return out


def _row_text(row: dict[str, Any]) -> str:
    """The CSV row as the run's config text: what the importing tool knew of the run."""
    return "\n".join(f"{k}: {v}" for k, v in row.items())


def new_runs(runs: list[RunRecord], held: list[RunRecord]) -> list[RunRecord]:
    """The runs the store does not hold yet. Counted, not only matched: a file may list the same row twice
    (two runs its tool could not tell apart), and each is a run."""
    left = Counter(r.import_identity for r in held if r.imported)
    new = []
    for r in runs:
        key = r.import_identity
        if left[key] > 0:
            left[key] -= 1
        else:
            new.append(r)
    return new


def main(argv: Sequence[str]) -> int:
    """`bench store import ...` (argv: the words after `import`)."""
    args = parser().parse_args(list(argv))
    for option, value in (("--dataset", args.dataset), ("--tokenizer", args.tokenizer), ("--val-set", args.val_set)):
        if not value.strip():  # the comparability key: runs of an empty one would be fitted with any other's
            raise BenchError(f"{option} {value!r} is empty; name the runs' {option[2:]} (it keeps runs of other "
                             "corpora and tokenizers out of their fits)")
    path = args.store if args.store is not None else default_store_path()
    check_can_hold_store(path)  # before the rows' storage bits are measured, which takes seconds
    runs = records(args)
    store = ResultsStore(path)
    new = new_runs(runs, store.runs(None))
    store.add_finished(*new)
    print(f"imported {len(new)} runs from {args.runs} into {store.path}; "
          f"{len(runs) - len(new)} already there (the same CSV row, label, N, D, loss and comparability fields) skipped")
    return 0
