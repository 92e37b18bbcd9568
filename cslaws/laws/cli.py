"""`bench law | capacity | leaderboard | plot | plan | report`: scaling-law commands of the bench CLI.

    bench law fit --runs FILE.csv [--n-col N] [--d-col D | --flop-col COL] [--loss-col loss]
                  [--exclude-top K] [--format-col COL [--dense LABEL]] [--bootstrap K] [--format text|json]
    bench law unified [STORE OPTIONS] [--fix [FAMILY.]NAME=VALUE ...] [--fit-on LABEL ...] [--bootstrap K]
                      [--format text|json]
    bench law gaps [STORE OPTIONS] [--cells] [--format text|json]
    bench law penalty [STORE OPTIONS] [--bootstrap K] [--format text|json]
    bench capacity [NAME_OR_CONFIG ...] [--model-size SIZE] [--format text|json]
    bench leaderboard [STORE OPTIONS] [--format text|md|csv|json]
    bench plot [STORE OPTIONS] [--fix NAME=VALUE ...] --out DIR
    bench report [STORE OPTIONS] [--fix NAME=VALUE ...] [--fit-on LABEL ...] --out report.html
    bench plan [STORE OPTIONS] (--memory-bits X | --flops C | both) [--formats LABEL ...]

STORE OPTIONS: --store PATH, --min-params N, --max-epochs X, --where FIELD=VALUE ..., --group K, --dense LABEL.
The runs a store command fits are chosen by `cslaws.laws.select` (finished runs with a finite loss, one
comparability group, sweep-cell duplicates once); what it leaves out is printed as one-line notices.

`law fit` reads a CSV of runs: a file path, or a data set shipped with the package (`data/chinchilla/
svg_extracted_data.csv`, the runs of Hoffmann et al. 2022 as extracted by Besiroglu et al. 2024, and
`data/quest/runs.csv`, the QuEST runs; see the README beside each). Tokens D come from a column
(`--d-col`, default `D`) or from training compute (`--flop-col`, D = C / (6 N)):

    bench law fit --runs data/chinchilla/svg_extracted_data.csv --n-col "Model Size" \
        --flop-col "Training FLOP" --exclude-top 5
    bench law fit --runs data/quest/runs.csv --format-col format --bootstrap 100

Without `--format-col` it fits the Chinchilla form; with it, the compression form with one multiplier
per label, relative to `--dense`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.markup import escape
from rich.table import Table

from cslaws.bench.cli import check_can_create, path_argument, read_csv_rows, runs_csv_path
from cslaws.console import console
from cslaws.errors import BenchError, BenchParser
from cslaws.laws import capacity as cap
from cslaws.laws import leaderboard as lb
from cslaws.laws.fit import (
    RHO_C,
    RHO_F,
    RHO_LSAT,
    FitError,
    LawFit,
    Runs,
    fit_chinchilla,
    fit_compression,
)
from cslaws.laws.plan import check_request, extrapolation_note, plan_priced, run_pricers, undetermined_terms
from cslaws.laws.uncertainty import Bootstrap, bootstrap
from cslaws.laws.unified import check_constant
from cslaws.models.llama import SIZES

SUBCOMMANDS = ("law", "capacity", "leaderboard", "plot", "plan", "report")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: bench {{{','.join(SUBCOMMANDS)}}} ...; got {argv[:1] or 'nothing'}", file=sys.stderr)
        return 2
    command, rest = argv[0], argv[1:]
    handlers = {"law": _law, "capacity": _capacity, "leaderboard": _leaderboard, "plot": _plot, "plan": _plan,
                "report": _report}
    try:
        return handlers[command](rest)
    except BenchError:
        raise
    except (ValueError, KeyError, FileNotFoundError) as err:
        # bad values met below (a format's arguments, a CSV's cells, a missing file): the user's input
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        raise BenchError(f"{command}: {message}") from err


def _print_json(data: Any) -> None:
    """`data` as strict JSON: a non-finite number (an interval whose resamples overflowed, say) is null, not
    Python's NaN or Infinity, which JSON readers refuse."""
    def finite(x: Any) -> Any:
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    print(json.dumps(finite(data), allow_nan=False))


def _out(text: Any) -> None:
    console().print(text)


# ----------------------------------------------------------------------------------------------------
# bench law fit


def _law(argv: list[str]) -> int:
    p = BenchParser(prog="bench law", description="Fit scaling laws: to runs in a CSV file (fit), or "
                                "the unified form over a results store (unified); check the compression law's "
                                "D-independent gap on a store's runs (gaps); fit a penalty that may grow with D "
                                "beside it (penalty).")
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fit", help="fit the Chinchilla form, or the compression form with --format-col")
    f.add_argument("--runs", required=True, type=Path, help="CSV file, one run per row")
    f.add_argument("--n-col", default="N", help="column of non-embedding parameters N (default: N)")
    f.add_argument("--d-col", default=None, help="column of training tokens D (default: D)")
    f.add_argument("--flop-col", default=None, help="column of training FLOPs C; D = C / (6 N). Excludes --d-col")
    f.add_argument("--loss-col", default="loss", help="column of final loss (default: loss)")
    f.add_argument("--exclude-top", type=int, default=0, metavar="K", help="leave out the K highest-loss runs")
    f.add_argument("--format-col", default=None, help="column of format labels: fit one eff per label")
    f.add_argument("--dense", default=None, help="reference label of --format-col with eff = 1 (default: dense)")
    f.add_argument("--bootstrap", type=int, default=0, metavar="K", help="K bootstrap resamples for intervals")
    f.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    f.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    u = sub.add_parser("unified", help="fit rho(GMSE)'s constants per family of formats over a results store")
    _common_store_args(u)
    u.add_argument("--fix", nargs="+", action="extend", default=[], metavar="NAME=VALUE",
                   help="pin unified-law constants in every family (--fix Lsat=1 C=1.39) or in one "
                        "(--fix sparse.C=1.39 sparse.Lsat=1)")
    u.add_argument("--fit-on", nargs="+", action="extend", default=None, metavar="LABEL",
                   help="fit on the reference and these formats only, and predict every other format from its GMSE "
                        "alone, beside its eff measured by the free fit on all runs (held-out check)")
    u.add_argument("--bootstrap", type=int, default=None, metavar="K",
                   help="K bootstrap resamples for intervals (default: none; with --fit-on 100, and at least 2)")
    u.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    u.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    g = sub.add_parser("gaps", help="each format's loss gap to the reference and its change per doubling of D at "
                       "fixed N, measured run against run (the law says 0)")
    _common_store_args(g)
    g.add_argument("--cells", action="store_true",
                   help="also fit the compression law and list each cell's gap with the eff it implies, and the "
                        "law's misfit at each cell")
    g.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    pe = sub.add_parser("penalty", help="fit the penalty form of Chen et al. (2025), a format's loss penalty k_f "
                        "(D/D0)^gamma_D (N/N0)^-gamma_N, beside the compression form on the same runs")
    _common_store_args(pe)
    pe.add_argument("--bootstrap", type=int, default=100, metavar="K",
                    help="bootstrap resamples for intervals, of both forms (default 100; 0: none)")
    pe.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")
    pe.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    args = p.parse_args(argv)
    return {"fit": _law_fit, "unified": _law_unified, "gaps": _law_gaps, "penalty": _law_penalty}[args.action](args)


def _law_penalty(args: argparse.Namespace) -> int:
    from cslaws.laws.penalty import bootstrap_penalty, fit_penalty, render_penalty

    _check_bootstrap(args.bootstrap, intervals_optional=True)
    seed = _seed(args.seed, args.bootstrap)
    runs = lb.runs_of(_store_records(args))
    compression = fit_compression(runs, args.dense)
    law = fit_penalty(runs, args.dense, start=compression)
    intervals = bootstrap_penalty(law, runs, k=args.bootstrap, seed=seed) if args.bootstrap else None
    compression_ci = bootstrap(compression, runs, k=args.bootstrap, seed=seed).eff_ci if args.bootstrap else {}
    if args.format == "json":
        out = {"penalty": law.to_dict(), "compression": compression.to_dict() | {"eff_ci": compression_ci}}
        if intervals is not None:
            out["penalty"]["bootstrap"] = intervals.to_dict()
        _print_json(out)
    else:
        _out(render_penalty(law, intervals, compression, compression_ci))
    return 0


def _law_gaps(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from cslaws.laws.gaps import cell_effs, cell_residuals, gap_growth, render_cells, render_growth, render_residuals

    runs = lb.runs_of(_store_records(args))
    rows = gap_growth(runs, args.dense)
    if not rows:
        raise BenchError(f"no format has runs at a size and token budget where the reference {args.dense!r} has "
                         "runs; a gap compares runs of the same N and budget")
    law = fit_compression(runs, args.dense, holdout=False) if args.cells else None
    cells = [] if law is None else cell_effs(runs, law)
    residuals = [] if law is None else cell_residuals(runs, law)
    if args.format == "json":
        out: dict[str, Any] = {"reference": args.dense, "level": 0.95, "rows": [r.to_dict() for r in rows]}
        if law is not None:
            out |= {"law": law.to_dict(), "cells": [asdict(c) for c in cells],
                    "residuals": [asdict(r) for r in residuals]}
        _print_json(out)
    else:
        _out(render_growth(rows, args.dense))
        if law is not None:
            _out(render_cells(cells, law))
            _out(render_residuals(residuals, law))
    return 0


def _law_unified(args: argparse.Namespace) -> int:
    from cslaws.laws.heldout import (
        check_fit_on,
        fitted_on,
        held_out_predictions,
        judged,
        predictions_to_dict,
        render_predictions,
    )
    from cslaws.laws.unified import build_unified, check_fixed_families, format_parts, parse_fixed, render_tables

    fixed = parse_fixed(args.fix)
    # the held-out predictions are judged against the measured intervals: --fit-on needs resamples
    _check_bootstrap(args.bootstrap, intervals_optional=args.fit_on is None)
    fit_on = args.fit_on
    k = args.bootstrap if args.bootstrap is not None else (0 if fit_on is None else 100)
    seed = _seed(args.seed, k)
    records = _store_records(args)
    parts = format_parts(records)
    check_fixed_families(fixed, parts)
    if fit_on is not None:
        check_fit_on(fit_on, {r.label for r in records}, args.dense)
    # with --fit-on, one fit on the chosen formats: the tables print it, the predictions use it
    chosen = records if fit_on is None else fitted_on(records, fit_on, args.dense)
    report = build_unified(chosen, fixed, reference=args.dense, k=k, seed=seed)
    rho_fit = judged(report)  # which families the runs determine: the hints and the predictions both follow it
    result, tables = report.to_dict(), [render_tables(report, rho_fit.undetermined)]
    if fit_on is not None:
        board = lb.build(records, reference=args.dense, k=k, seed=seed)
        predictions = held_out_predictions(records, board, parts, fixed, k, seed, fit_on=fit_on, shared=rho_fit)
        result |= {"fit_on": fit_on, "held_out": predictions_to_dict(predictions)}
        tables.append(render_predictions(predictions, parts))
    if args.format == "json":
        _print_json(result)
    else:
        for table in tables:
            _out(table)
    return 0


def _law_fit(args: argparse.Namespace) -> int:
    _check_bootstrap(args.bootstrap, intervals_optional=True)
    seed = _seed(args.seed, args.bootstrap)
    if args.dense is not None and args.format_col is None:
        raise BenchError(f"--dense {args.dense} names the reference label of --format-col's column; without "
                         "--format-col the Chinchilla form is fitted, which has no formats: give --format-col too")
    runs, excluded = _read_runs(args)
    law = fit_compression(runs, args.dense or "dense") if args.format_col else fit_chinchilla(runs)
    intervals = bootstrap(law, runs, k=args.bootstrap, seed=seed) if args.bootstrap else None
    result = law.to_dict() | {"excluded": excluded}
    if intervals is not None:
        result |= {"ci": intervals.to_dict()["ci"], "bootstrap": args.bootstrap}
        if args.format_col:
            result["eff_ci"] = intervals.to_dict()["eff_ci"]
    if args.format == "json":
        _print_json(result)
    else:
        _out(_law_table(law, intervals, excluded))
    return 0


def _read_runs(args: argparse.Namespace) -> tuple[Runs, int]:
    if args.d_col is not None and args.flop_col is not None:
        raise ValueError("give either --d-col (tokens) or --flop-col (FLOPs, D = C / (6 N)), not both")
    d_col = args.flop_col or args.d_col or "D"
    needed = [args.n_col, d_col, args.loss_col] + ([args.format_col] if args.format_col else [])
    rows = read_csv_rows(runs_csv_path(args.runs), "--runs")
    if not rows:
        raise FitError(f"{args.runs} has no runs")
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise ValueError(f"{args.runs} has no column(s) {missing}; its columns are {list(rows[0])}")

    def column(name: str) -> np.ndarray:
        try:
            return np.array([float(r[name]) if r[name].strip() else np.nan for r in rows])
        except ValueError as err:
            raise ValueError(f"column {name!r} of {args.runs} holds a non-number: {err}") from None

    n, loss = column(args.n_col), column(args.loss_col)
    d = column(d_col) / (6.0 * n) if args.flop_col else column(d_col)
    labels = [r[args.format_col] for r in rows] if args.format_col else None
    if labels is not None and (blank := next((k for k, label in enumerate(labels, start=1) if not label.strip()), None)):
        # it was fitted as a format of its own, with a multiplier named by no label
        raise ValueError(f"row {blank} after the header of {args.runs} has no label in column {args.format_col!r}; "
                         "give every run its format's label")
    runs = Runs.of(n, d, loss, labels)
    if not 0 <= args.exclude_top < len(runs):
        raise ValueError(f"--exclude-top must be in [0, {len(runs) - 1}] for {len(runs)} runs, got {args.exclude_top}")
    keep = np.argsort(runs.loss, kind="stable")[: len(runs) - args.exclude_top]
    return runs.subset(np.sort(keep)), args.exclude_top


def _law_table(law: LawFit, intervals: Bootstrap | None, excluded: int) -> Table:
    ci = intervals.ci if intervals else {}
    eff_ci = intervals.eff_ci if intervals else {}
    table = Table(title=f"{law.form} law fit ({law.n_runs} runs, {excluded} highest-loss left out)",
                  caption=escape(lb.law_summary(law) + f"; Huber objective {law.objective:.6g}"))
    table.add_column("parameter")
    table.add_column("value", justify="right")
    table.add_column(f"{100 * intervals.level:.0f}% bootstrap interval" if intervals else "interval", justify="right")
    for name, value in law.constants().items():
        # a bound's resamples stay at the bound: their interval has no width and measures nothing
        bounds = "at search bound" if name in law.at_bound else _interval(ci.get(name))
        table.add_row(name, f"{value:.5g}", escape(bounds))
    if law.form != "chinchilla":
        for label, value in law.eff.items():
            table.add_row(escape(f"eff[{label}]"), f"{value:.4f}", escape(_interval(eff_ci.get(label))))
    return table


def _interval(bounds: tuple[float, float] | None) -> str:
    return "-" if bounds is None else f"[{bounds[0]:.5g}, {bounds[1]:.5g}]"


# ----------------------------------------------------------------------------------------------------
# bench capacity


def _capacity(argv: list[str]) -> int:
    p = BenchParser(prog="bench capacity", description="Gaussian MSE, bits and predicted capacity of formats.")
    p.add_argument("names", nargs="*", help="registered short names (default args) or format configs (formats/int4.yaml)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--model-size", default=None, metavar="SIZE",
                   help="charge bits on the linear layers of this model size (e.g. nano, 100M): real row lengths")
    p.add_argument("--F", type=float, default=RHO_F, help=f"unified-law F (default {RHO_F}, Llama/C4 scalar quantization)")
    p.add_argument("--C", type=float, default=RHO_C, help=f"unified-law C (default {RHO_C})")
    p.add_argument("--Lsat", type=float, default=RHO_LSAT, help=f"unified-law Lsat (default {RHO_LSAT})")
    args = p.parse_args(argv)
    if args.model_size is not None and args.model_size not in SIZES:
        raise BenchError(f"--model-size {args.model_size!r} is not a model size; allowed: {', '.join(SIZES)}")
    for option, value in (("--F", args.F), ("--C", args.C), ("--Lsat", args.Lsat)):
        check_constant(option, value)
    names = args.names
    if not names:
        names, need_args = cap.defaultable_formats()
        if need_args:
            print(f"not listed (need arguments; pass a config instead): {', '.join(need_args)}", file=sys.stderr)
    lines = [line for name in names for line in cap.capacity_lines(name, args.F, args.C, args.Lsat, args.model_size)]
    if args.format == "json":
        _print_json([line.to_dict() for line in lines])
        return 0
    bits_on = f"bits on the layers of {args.model_size}" if args.model_size else "bits at each format's reference row"
    table = Table(title=f"Capacity on standard Gaussian data (rows of {cap.ROW_LENGTH}; {bits_on}; "
                        f"rho with F={args.F}, C={args.C}, Lsat={args.Lsat})")
    for col in ("format", "GMSE", "+- s.e.", "method", "bits/value", "rho", "rho/bit", "floor 2^-2b"):
        table.add_column(col, justify="left" if col in ("format", "method") else "right")
    g = lambda v, fmt="{:.4g}": "-" if v is None else fmt.format(v)  # noqa: E731
    for line in lines:
        table.add_row(escape(line.name), g(line.gmse), g(line.gmse_se, "{:.2g}"), line.method, g(line.bits, "{:.4f}"),
                      f"{line.rho:.4f}", g(line.rho_per_bit), g(line.floor))
    _out(table)
    return 0


# ----------------------------------------------------------------------------------------------------
# bench leaderboard / plot / plan


def _store(args: argparse.Namespace) -> Any:
    """The results store `--store` names (default: `default_store_path()`), opened for reading: a missing path
    or a file that is not a store is a BenchError (`check_is_store`), never a new empty store."""
    from cslaws.bench.store import ResultsStore

    return ResultsStore(args.store, create=False)


def _selection(args: argparse.Namespace, store: Any) -> Any:
    """The runs to fit from `store`, chosen by `select` (its notices go to stderr, one line each)."""
    from cslaws.laws.select import select_from_store

    selection = select_from_store(store, where=args.where, min_params=args.min_params, max_epochs=args.max_epochs,
                                  group=args.group)
    for notice in selection.notices:
        print(f"note: {notice}", file=sys.stderr)
    return selection


def _store_records(args: argparse.Namespace) -> list[Any]:
    return _selection(args, _store(args)).records


def _common_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", type=path_argument, default=None, help="results store (default: $CSLAWS_STORE or runs/results.db)")
    p.add_argument("--min-params", type=int, default=0, metavar="N",
                   help="leave out runs of models with fewer than N non-embedding parameters (below the power-law regime)")
    p.add_argument("--dense", default="dense", help="reference label with eff = 1 (default: dense)")
    p.add_argument("--max-epochs", type=float, default=None, metavar="X",
                   help="keep only runs that made at most X passes over the training split (runs whose epochs were "
                        "not recorded are left out)")
    p.add_argument("--where", nargs="+", action="extend", default=[], metavar="FIELD=VALUE",
                   help="keep only runs whose stored FIELD equals VALUE (e.g. seq_len=64 tokenizer=...)")
    p.add_argument("--group", type=int, default=None, metavar="K",
                   help="fit comparability group K (the error for a store with several groups lists them)")


def _store_args(p: argparse.ArgumentParser) -> None:
    _common_store_args(p)
    p.add_argument("--bootstrap", type=int, default=100, metavar="K", help="bootstrap resamples (default 100)")
    p.add_argument("--seed", type=int, default=None, help="bootstrap seed (default 0)")


def _check_bootstrap(k: int | None, *, intervals_optional: bool) -> None:
    """--bootstrap, before any fit: at least 2 resamples, or 0 (no intervals) where the command can do without
    them (the leaderboard's table, figures and page show intervals, so they need resamples)."""
    if k is None or k >= 2 or (intervals_optional and k == 0):
        return
    allowed = "0 (no intervals) or at least 2 resamples" if intervals_optional else "at least 2 resamples"
    raise BenchError(f"--bootstrap must be {allowed}, got {k}")


def _seed(seed: int | None, k: int) -> int:
    """The bootstrap seed, checked before any fit: numpy's generator refuses a negative one only after the fit
    the bootstrap follows, and a seed given without resamples would be ignored."""
    if seed is None:
        return 0
    if seed < 0:
        raise BenchError(f"--seed must be a non-negative integer, got {seed}")
    if not k:
        raise BenchError(f"--seed {seed} seeds the bootstrap, and there is none: give --bootstrap K too")
    return seed


def _leaderboard(argv: list[str]) -> int:
    p = BenchParser(prog="bench leaderboard", description="Refit the compression law and rank formats.")
    _store_args(p)
    p.add_argument("--format", choices=("text", "md", "csv", "json"), default="text")
    args = p.parse_args(argv)
    _check_bootstrap(args.bootstrap, intervals_optional=False)
    seed = _seed(args.seed, args.bootstrap)
    board = lb.build(_store_records(args), reference=args.dense, k=args.bootstrap, seed=seed)
    if args.format == "json":
        _print_json(board.to_dict())
    elif args.format == "md":
        print(lb.render_markdown(board), end="")
    elif args.format == "csv":
        print(lb.render_csv(board), end="")
    else:
        _out(lb.render_table(board))
    return 0


def _rho_args(p: argparse.ArgumentParser) -> None:
    from cslaws.laws.plot import DEFAULT_FIXED

    default = " ".join(f"{k}={v:g}" for k, v in DEFAULT_FIXED.items())
    p.add_argument("--fix", nargs="+", action="extend", default=None, metavar="NAME=VALUE",
                   help=f"pin unified-law constants of the fitted rho curve, as in `bench law unified` (default: {default}; "
                        "the curve is drawn only where the runs determine the free constants)")


def _fixed(args: argparse.Namespace) -> dict[str, float]:
    from cslaws.laws.plot import DEFAULT_FIXED
    from cslaws.laws.unified import parse_fixed

    return dict(DEFAULT_FIXED) if args.fix is None else parse_fixed(args.fix)


def _check_fixed(fixed: dict[str, float], records: Sequence[Any]) -> None:
    """The families `--fix` pins are among those of `records`, checked before the fits."""
    from cslaws.laws.unified import check_fixed_families, format_parts

    check_fixed_families(fixed, format_parts(records))


def _plot(argv: list[str]) -> int:
    from cslaws.laws.heldout import fit_rho
    from cslaws.laws.plot import plot_all
    from cslaws.laws.unified import format_parts

    p = BenchParser(prog="bench plot", description="Figures of the leaderboard fit.")
    _store_args(p)
    _rho_args(p)
    p.add_argument("--out", type=path_argument, required=True, help="folder for the PNG files")
    args = p.parse_args(argv)
    fixed = _fixed(args)
    _check_bootstrap(args.bootstrap, intervals_optional=False)
    seed = _seed(args.seed, args.bootstrap)
    _check_figures_out(args.out)
    records = _store_records(args)
    _check_fixed(fixed, records)
    board = lb.build(records, reference=args.dense, k=args.bootstrap, seed=seed)
    fit = fit_rho(records, fixed, reference=args.dense, k=args.bootstrap, seed=seed)
    for path in plot_all(board, lb.runs_of(records), fit, format_parts(records), args.out):
        print(path)
    return 0


def _report(argv: list[str]) -> int:
    from cslaws.laws.heldout import check_fit_on
    from cslaws.laws.report import ReportOptions, render

    p = BenchParser(prog="bench report", description="One self-contained HTML page of a store's law fits: "
                                "leaderboard, figures, held-out checks, planner and runs.")
    _store_args(p)
    _rho_args(p)
    p.add_argument("--fit-on", nargs="+", action="extend", default=None, metavar="LABEL",
                   help="held-out predictions from one unified fit on the reference and these formats (default: each "
                        "format in turn is predicted from the others of its families)")
    p.add_argument("--out", type=path_argument, required=True, help="the HTML file to write")
    args = p.parse_args(argv)
    _check_report_out(args.out, args.store)
    _check_bootstrap(args.bootstrap, intervals_optional=False)
    seed = _seed(args.seed, args.bootstrap)
    fixed = _fixed(args)
    store = _store(args)
    selection = _selection(args, store)
    _check_fixed(fixed, selection.records)
    chosen = " ".join(f"{flag} {value}" for flag, value in (
        ("--where", " ".join(args.where)), ("--min-params", args.min_params or ""), ("--max-epochs", args.max_epochs),
        ("--group", args.group)) if value not in (None, "")) or "all finished runs"
    if args.fit_on is not None:
        check_fit_on(args.fit_on, {r.label for r in selection.records}, args.dense)
    options = ReportOptions(str(store.path), chosen, args.dense, args.bootstrap, seed, fixed, args.fit_on)
    text = render(options, selection.records, store.runs(status=None), selection.notices)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


#: The first bytes of every SQLite database (a results store among them), and of every PNG file.
SQLITE_HEADER = b"SQLite format 3\x00"
PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def _starts_with(path: Path, header: bytes) -> bool:
    with open(path, "rb") as fh:
        return fh.read(len(header)) == header


def _check_report_out(out: Path, store: Path | None) -> None:
    """`bench report --out out`, before the fits: a new file in a folder that can hold it, or a page a report
    wrote before (replaced); never the results store `--store store` names, nor any other existing file, which
    the page would replace (a mistyped --out must not lose a store's runs)."""
    from cslaws.bench.store import default_store_path
    from cslaws.laws.report import REPORT_HEAD

    if out.is_dir():
        raise BenchError(f"--out {out} is a folder; give the path of the HTML file to write (e.g. report.html)")
    check_can_create(out.parent, f"--out {out}")
    if not out.exists():
        return
    store = default_store_path() if store is None else store
    try:
        if store.exists() and out.samefile(store):
            what = "the results store the page is made from"
        elif not out.is_file():
            what = "not a regular file"
        elif _starts_with(out, REPORT_HEAD):
            return
        elif _starts_with(out, SQLITE_HEADER):
            what = "a SQLite database (a results store?)"
        else:
            what = "a file that bench report did not write"
    except OSError as err:
        what = f"a file that cannot be read ({err.strerror or err})"
    raise BenchError(f"--out {out} is {what}; the page would replace it: give a new path, or that of a page "
                     "bench report wrote before")


def _check_figures_out(out: Path) -> None:
    """`bench plot --out out`, before the fits: a folder that is or can be made, where the figures' PNG files
    may replace those of an earlier plot but no other file that has one of their names (a store, a folder)."""
    from cslaws.laws.plot import FIGURES, figure_path

    check_can_create(out, f"--out {out}")
    for path in (figure_path(out, stem) for stem in FIGURES):
        try:
            if not path.exists() or (path.is_file() and _starts_with(path, PNG_HEADER)):
                continue
            what = "not a PNG file"
        except OSError as err:
            what = f"a file that cannot be read ({err.strerror or err})"
        raise BenchError(f"--out {out}: {path} is {what}; the figure would replace it: give another folder")


def _plan(argv: list[str]) -> int:
    p = BenchParser(prog="bench plan", description="Rank formats by predicted loss under a budget.")
    _common_store_args(p)
    p.add_argument("--memory-bits", type=float, default=None, help="memory budget for the weights, in bits")
    p.add_argument("--flops", type=float, default=None, help="training compute budget C in FLOPs (C = 6 N D)")
    p.add_argument("--formats", nargs="+", action="extend", default=None, help="candidate labels (default: every fitted label)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    args = p.parse_args(argv)
    if args.memory_bits is None and args.flops is None:
        p.error("give --memory-bits, --flops, or both")
    check_request(args.memory_bits, args.flops, args.formats)
    records = _store_records(args)
    labels = sorted({r.label for r in records})
    if unknown := [label for label in args.formats or [] if label not in labels]:  # before the fit, not after it
        raise BenchError(f"plan: no runs of {unknown} among the selected runs; formats: {', '.join(labels)}")
    law = fit_compression(lb.runs_of(records), args.dense)
    if why := undetermined_terms(law, args.flops):
        raise BenchError(f"bench plan: {why}")
    # each label's weight bits on the model size its plan lands at (from its mean stored bits over its runs)
    bits = {label: mean for label, (mean, _, _) in lb.label_bits(records).items()}
    pricers = run_pricers(records, [*(args.formats or law.eff), law.reference])
    choices = plan_priced(law, bits, pricers, args.memory_bits, args.flops, args.formats)
    if args.format == "json":
        _print_json([c.to_dict() for c in choices])
        return 0
    budget = ", ".join(s for s in (args.memory_bits and f"memory {args.memory_bits:.3g} bits",
                                   args.flops and f"compute {args.flops:.3g} FLOPs") if s)
    table = Table(title=f"Plan under {budget} (predicted loss, best first)", caption=escape(lb.law_summary(law)))
    for col in ("format", "bits/param", "priced on", "eff", "N", "D", "pred. loss", f"better than {law.reference} by"):
        table.add_column(col, justify="left" if col in ("format", "priced on") else "right")
    for c in choices:
        table.add_row(escape(c.label), f"{c.bits:.3f}", escape(c.priced_on), f"{c.eff:.3f}", f"{c.n:.3g}",
                      "unlimited" if c.d is None else f"{c.d:.3g}", f"{c.loss:.4f}", f"{c.improvement:+.4f}")
    _out(table)
    note = extrapolation_note(choices, records, law)
    if note:
        _out(f"[yellow]note:[/] {escape(note)}")
    return 0
