"""`bench report`: one self-contained HTML page of a results store's law fits, to read in a browser.

Nothing in the page is fetched: the style sheet is inline, the figures are inline SVG (matplotlib), there is
no JavaScript. Every number comes from the code the other store commands run: the leaderboard is
`leaderboard.build` with the same options as `bench leaderboard` (so the same bootstrap seed gives the same
intervals), the figures are `plot`'s, the planner is `plan.plan`, the unified law is `unified.build_unified`.
Sections:

1. the leaderboard with its intervals and the law's summary;
2. loss vs N with the fitted curves per format;
3. the loss difference to the reference (dense) per format against N, with the law's bootstrap band, and
   the measured change of that difference per doubling of D at fixed N (`gaps`), which the law says is 0,
   beside the penalty form fitted to the same runs (`penalty`: a difference that may grow with D);
4. eff vs GMSE with the unified law's rho where its constants are determined, the family constants, and
   held-out predictions (`heldout`): each compressed format's eff predicted from its GMSE alone by a unified
   fit without its runs (or, with `--fit-on`, by one fit on the formats named), beside the eff measured with
   its runs;
5. the iso-memory view: loss vs memory, and the planner's choice under the memory and compute of the
   largest reference run;
6. the law's leave-largest-size-out check, run by run;
7. every run of the store (failed and running included): settings, status, epochs, code version, and
   whether the fit used it.
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from typing import Collection, Iterable, Sequence

import matplotlib
import matplotlib.pyplot as plt
import yaml
from matplotlib.figure import Figure

from cslaws.bench.store import RunRecord
from cslaws.laws import leaderboard as lb
from cslaws.laws import plot
from cslaws.laws.fit import FAMILY_PARAMS, FitError, LawFit, Runs, fit_compression
from cslaws.laws.gaps import GROWTH_COLUMNS, gap_growth, growth_caption, growth_cells
from cslaws.laws.heldout import Prediction, RhoFit, fit_rho, fitted_on, held_out_predictions
from cslaws.laws.penalty import PENALTY_COLUMNS, bootstrap_penalty, penalty_rows, penalty_summary, try_fit_penalty
from cslaws.laws.plan import Choice, extrapolation_note, plan_priced, run_pricers, undetermined_terms
from cslaws.laws.unified import describe_parts, family_rows, format_parts
from cslaws.models.llama import SIZES, non_embedding_params


@dataclass
class ReportOptions:
    """What the page was made from, printed at its top so that a reader can rebuild it."""

    store: str
    selection: str
    reference: str
    k: int
    seed: int
    fixed: dict[str, float]
    #: formats the held-out predictions are fitted on (None: each format in turn is left out)
    fit_on: list[str] | None = None


# ----------------------------------------------------------------------------------------------------
# Numbers


@dataclass
class HoldoutRow:
    run_id: int | None
    label: str
    n: float
    tokens: float
    measured: float
    predicted: float


def largest_size_check(records: Sequence[RunRecord], law: LawFit) -> list[HoldoutRow]:
    """The runs of the largest model size predicted by the compression law refitted without them: the
    check `LawFit.holdout` summarises, run by run (empty when the refit is impossible: see holdout_note)."""
    largest = max(r.n_params for r in records)
    train = [r for r in records if r.n_params < largest]
    try:
        refit = fit_compression(lb.runs_of(train), law.reference, holdout=False)
    except FitError:
        return []
    test = [r for r in records if r.n_params == largest and r.label in refit.eff]
    return [HoldoutRow(r.run_id, r.label, r.n_params, r.tokens, r.final_val_loss,
                       float(refit.predict(r.n_params, r.tokens, refit.eff[r.label]))) for r in test]


def reference_budget(records: Sequence[RunRecord], reference: str) -> tuple[float, float, RunRecord]:
    """(memory bits, FLOPs) of the largest reference run (most parameters, then most tokens): the budget the
    planner spends on every format, so its choice answers "what would this budget buy in another format"."""
    ref = max((r for r in records if r.label == reference), key=lambda r: (r.n_params, r.tokens))
    return ref.n_params * ref.bits_per_value, 6.0 * ref.n_params * ref.tokens, ref


def settings_summary(config: str) -> str:
    """The training settings of a stored resolved config that set a run apart (learning rate, batch, ...)."""
    try:
        fit = (yaml.safe_load(config) or {}).get("fit", {})
    except yaml.YAMLError:
        return "config unreadable"
    if not isinstance(fit, dict):
        return "-"
    model, data = fit.get("model") or {}, fit.get("data") or {}
    if model.get("lr") is None:  # unset: the rate of the run's size at its code version trained it
        model = {**model, "lr": "size default"}
    keys = [("lr", model, "lr"), ("warmup", model, "warmup"), ("wd", model, "weight_decay"),
            ("D", model, "tokens"), ("D/N", model, "tokens_per_param"), ("batch", data, "batch_size"),
            ("seq", data, "seq_len"), ("vocab", data, "vocab_size")]
    return " ".join(f"{name}={src[key]}" for name, src, key in keys if src.get(key) is not None) or "-"


# ----------------------------------------------------------------------------------------------------
# HTML


def svg(fig: Figure, name: str) -> str:
    """The figure as an inline <svg> element. Text stays text (smaller, sharp at any zoom), and every id and
    every reference to one is prefixed with `name`: matplotlib numbers its groups from 1 in every figure
    (figure_1, axes_1, ...), and several figures share one page, where ids must be unique."""
    buf = io.StringIO()
    # a fixed salt for matplotlib's hashed ids (else a random one): the same store gives the same page
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    for before in ('id="', 'url(#', 'href="#'):
        text = text.replace(before, f"{before}{name}-")
    return text


def _num(value: float | None, fmt: str = "{:.4g}") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def table(table_id: str, header: Sequence[str], rows: Iterable[Sequence[str]], text: Collection[int] = (0,)) -> str:
    """An HTML table; the columns in `text` are text (left-aligned, wrapping), the others numbers (right-aligned)."""
    def cells(tag: str, values: Sequence[str]) -> str:
        return "".join(f'<{tag}{"" if i in text else " class=num"}>{html.escape(str(v))}</{tag}>'
                       for i, v in enumerate(values))

    body = "\n".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f'<table id="{table_id}">\n<thead><tr>{cells("th", header)}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


def figure(fig: Figure, name: str, caption: str) -> str:
    return f'<figure id="fig-{name}">{svg(fig, name)}<figcaption>{html.escape(caption)}</figcaption></figure>'


def section(anchor: str, title: str, *parts: str) -> str:
    # "sec-": a section's table may carry the section's own name as its id, and ids must be unique in a page
    return f'<section id="sec-{anchor}">\n<h2>{html.escape(title)}</h2>\n' + "\n".join(parts) + "\n</section>"


def para(text: str, cls: str = "") -> str:
    return f'<p{f" class={cls}" if cls else ""}>{html.escape(text)}</p>'


STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1120px; margin: 0 auto; padding: 1.5em 2em 4em; background: #fff; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 8px; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; } .num { text-align: right; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; display: block; }
figcaption, .note { color: #555; font-size: 13px; } .warn { color: #8a4b00; font-size: 13px; }
.scroll { overflow-x: auto; } td:not(.num) { min-width: 4em; }
#runs td:last-child { min-width: 24em; } #predictions td:last-child { min-width: 20em; } th.num { white-space: normal; } nav a { margin-right: 1em; } code { font-size: 13px; }
"""


#: The title of the page `render` writes.
TITLE = "Compression scaling report"


def _head(title: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<title>{html.escape(title)}</title>\n')


def page(title: str, body: str) -> str:
    return _head(title) + f"<style>{STYLE}</style>\n</head>\n<body><main>\n{body}\n</main></body>\n</html>\n"


#: The first bytes of every page `render` writes: an existing file that begins with them is a page
#: `bench report --out` may replace; it refuses any other file (the results store, say), which would be lost.
REPORT_HEAD = _head(TITLE).encode()


SECTIONS = (("leaderboard", "Leaderboard"), ("loss-vs-n", "Loss vs N"), ("loss-gap", "Loss difference to the reference"),
            ("gap-growth", "Does the difference depend on D?"),
            ("unified", "Multiplier vs GMSE and held-out predictions"), ("iso-memory", "Iso-memory and the planner"),
            ("holdout", "Held-out check: largest model size"), ("runs", "Runs"))


def _leaderboard_section(board: lb.Leaderboard) -> str:
    return section("leaderboard", "Leaderboard",
                   para(f"eff relative to {board.law.reference}; {100 * board.intervals.level:.0f}% bootstrap intervals "
                        f"from {len(board.intervals.samples['A'])} resamples of the runs. Ranked by eff x 16 / bits."),
                   f'<div class="scroll">{table("leaderboard", lb.COLUMNS, (lb._cells(r) for r in board.rows))}</div>',
                   para(lb.law_summary(board.law), "note"))


def _gap_growth_section(board: lb.Leaderboard, runs: Runs, k: int, seed: int) -> str:
    reference = board.law.reference
    rows = gap_growth(runs, reference)
    penalty, why = try_fit_penalty(runs, reference, start=board.law)
    if penalty is None:
        fitted = [para(f"No penalty-form fit: {why}.", "warn")]
    else:
        intervals = bootstrap_penalty(penalty, runs, k=k, seed=seed)
        fitted = [
            para("The penalty form of Chen et al. (2025), L = A N^-alpha + B D^-beta + E + k_f (D / D0)^gamma_D "
                 "(N / N0)^-gamma_N, fitted to the same runs (`bench law penalty`): each format's penalty k_f at "
                 "the runs' geometric-mean N0 and D0, with exponents shared by the formats, which may make the "
                 "difference grow with D; the compression form is its case gamma_D = 0, gamma_N = alpha. eff at "
                 "(N0, D0) is the multiplier whose difference A N0^-alpha (eff^-alpha - 1), with this fit's A and "
                 f"alpha, equals k_f; beside it the compression fit's constant eff. {100 * intervals.level:.0f}% bootstrap intervals, {k} resamples."),
            f'<div class="scroll">{table("penalty", PENALTY_COLUMNS, penalty_rows(penalty, intervals, board.law, board.intervals.eff_ci))}</div>',
            para(". ".join(penalty_summary(penalty, intervals, board.law)) + ".", "note"),
        ]
    return section("gap-growth", "Does the difference depend on D?",
                   para("Per format: its mean loss difference to the reference over all (N, budget) cells, and the "
                        "slope of that difference against log2 of the tokens per parameter at each size trained at two "
                        "or more budgets, averaged over the sizes with a Student-t interval across them. Measured run "
                        "against run; no fitted constant enters. `bench law gaps` prints the same table."),
                   figure(plot.gap_vs_d_figure(board, runs, penalty), "gap-vs-d",
                          f"Each format's loss minus {reference}'s against D: one line per model size joining its "
                          "token budgets (seeds averaged); dashed: the fitted law's difference at that size; dotted: "
                          "the penalty form's."),
                   f'<div class="scroll">{table("gap-growth", GROWTH_COLUMNS, (growth_cells(r) for r in rows), text=(0, 4))}</div>',
                   para(growth_caption(reference), "note"), *fitted)


def _unified_section(board: lb.Leaderboard, fit: RhoFit, predictions: Sequence[Prediction],
                     parts_of: dict[str, list[tuple[str, float]]], fixed: dict[str, float],
                     fit_on: Sequence[str] | None) -> str:
    pins = ", ".join(f"{k}={v:g}" for k, v in fixed.items()) or "nothing"
    fitted = "these runs" if fit_on is None else f"the reference's and {', '.join(fit_on)}'s runs (--fit-on)"
    parts = [figure(plot.eff_vs_gmse_figure(board, fit, parts_of, predictions), "eff-vs-gmse",
                    "Black: each format's eff from the free compression fit with all runs (95% bootstrap interval); a "
                    "composition of one family's parts sits where that family's fitted rho equals their product, "
                    "one of mixed families (open square) where the published rho does. Grey dashes: the "
                    f"published rho. Solid: the unified law's rho fitted to {fitted}, drawn only for families whose "
                    "constants the runs determine, with its bootstrap band. Red diamonds: held-out predictions.")]
    if fit.report is None:
        parts.append(para(f"No unified fit (pinned: {pins}): {fit.why_none}.", "warn"))
    else:
        parts.append(table("unified-constants", ("family", *FAMILY_PARAMS, "determined"),
                           ([*cells, fit.undetermined.get(cells[0], "yes")] for cells in family_rows(fit.report)),
                           text=(0, 4)))
        parts.append(para(f"Unified law fitted on {fitted} (pinned: {pins}): {lb.law_summary(fit.report.law)}", "note"))
    design = ("the unified law refitted without its runs (on the reference and the other formats of the same "
              "families)" if fit_on is None else
              f"the unified law fitted on the reference and {', '.join(fit_on)} only (--fit-on)")
    parts.append(para(f"Held-out predictions: for each compressed format, {design} predicts its eff from its GMSE "
                      "alone; the measured eff is the free fit's, with all runs."))
    rows = []
    for p in predictions:
        ratio = None if p.predicted is None else p.predicted / p.measured
        inside = {None: "-", True: "yes", False: "no"}[p.inside()]
        rows.append([p.label, describe_parts(parts_of[p.label]), f"{p.measured:.3f}",
                     p.measured_interval(), _num(p.predicted, "{:.3f}"),
                     "-" if p.predicted_lo is None else f"[{p.predicted_lo:.3f}, {p.predicted_hi:.3f}]",
                     _num(ratio, "{:.3f}"), inside, p.why or "-"])
    parts.append(f'<div class="scroll">{table("predictions", ("format", "parts", "measured eff", "95% CI", "predicted eff", "95% CI", "predicted / measured", "in measured CI", "note"), rows, text=(0, 1, 8))}</div>')
    return section("unified", "Multiplier vs GMSE and held-out predictions", *parts)


def _plan_section(board: lb.Leaderboard, runs, records: Sequence[RunRecord]) -> str:
    law = board.law
    memory, flops, ref = reference_budget(records, law.reference)
    figure_ = figure(plot.iso_memory_figure(board, runs), "iso-memory",
                     "Measured final loss against the memory of the weights (N x the format's stored bits per value, its mean over the runs).")
    budget = (f"the memory and compute of the largest {law.reference} run (run {ref.run_id}: N={ref.n_params:.4g}, "
              f"D={ref.tokens:.4g}): memory {memory:.4g} bits, compute {flops:.4g} FLOPs")
    if why := undetermined_terms(law, flops):
        return section("iso-memory", "Iso-memory and the planner", figure_,
                       para(f"No plan under {budget}: {why}.", "warn"))
    bits = {label: mean for label, (mean, _, _) in lb.label_bits(records).items()}
    choices: list[Choice] = plan_priced(law, bits, run_pricers(records, [*law.eff, law.reference]), memory, flops)
    rows = [[c.label, f"{c.bits:.3f}", c.priced_on, f"{c.eff:.3f}", f"{c.n:.4g}", _num(c.d), f"{c.loss:.4f}",
             f"{c.improvement:+.4f}"] for c in choices]
    note = extrapolation_note(choices, records, law)
    warning = para(note, "warn") if note else ""
    return section("iso-memory", "Iso-memory and the planner", figure_,
                   para(f"The planner (bench plan) under {budget}. Each format takes the N that minimises its "
                        "predicted loss within both budgets, its bits per parameter priced on the layers of the model "
                        "size nearest that N (the norms' gains at 16 bits); best first."),
                   table("plan", ("format", "bits/param", "priced on", "eff", "N", "D", "predicted loss",
                                  f"better than {law.reference} by"), rows, text=(0, 2)), warning)


def _holdout_section(records: Sequence[RunRecord], law: LawFit) -> str:
    rows = largest_size_check(records, law)
    if law.holdout is None:
        summary = para(law.holdout_note, "warn")
    else:
        h = law.holdout
        summary = para(f"The compression law fitted without the largest size (N={h.n:.4g}) predicts its {h.runs} runs "
                       f"with RMSE(log L) = {h.rmse_log:.4f} and max relative error {h.max_rel_err:.2%}.")
    body = table("holdout", ("run", "format", "N", "D", "measured loss", "predicted loss", "error"),
                 ([str(r.run_id), r.label, f"{r.n:.4g}", f"{r.tokens:.4g}", f"{r.measured:.4f}", f"{r.predicted:.4f}",
                   f"{r.predicted / r.measured - 1:+.2%}"] for r in rows), text=(1,))
    return section("holdout", "Held-out check: largest model size", summary, body)


def _runs_section(all_runs: Sequence[RunRecord], used: set[int | None]) -> str:
    rows = []
    for r in all_runs:
        rows.append([str(r.run_id), r.label, r.model, "yes" if r.run_id in used else "no", r.status, f"{r.n_params:,}",
                     f"{r.tokens:,}", _num(r.epochs, "{:.2f}"), f"{r.bits_per_value:.3f}", _num(r.activation_bits, "{:.3f}"),
                     str(r.seed), _num(r.final_val_loss, "{:.4f}"), r.code_version, settings_summary(r.config)])
    header = ("run", "format", "model", "in fit", "status", "N", "D", "epochs", "bits w", "bits a", "seed",
              "final loss", "code version", "settings")
    sizes = sorted({r.model for r in all_runs if r.model in SIZES}, key=lambda m: non_embedding_params(SIZES[m]))
    defaults = ", ".join(f"{m} {SIZES[m].lr:g}" for m in sizes)
    return section("runs", "Runs",
                   para(f"Every run of the store ({len(all_runs)}); 'in fit' marks the {len(used)} the laws above use. "
                        "'lr=size default': the peak rate of the run's model size (cslaws.models.llama.SIZES) at the "
                        f"run's code version{'; in this version: ' + defaults if defaults else ''}."),
                   f'<div class="scroll">{table("runs", header, rows, text=(1, 2, 3, 4, 12, 13))}</div>')


def render(options: ReportOptions, records: Sequence[RunRecord], all_runs: Sequence[RunRecord],
           notices: Sequence[str]) -> str:
    """The report page of the selected `records` (the fit's runs) among `all_runs` (the store's)."""
    board = lb.build(records, reference=options.reference, k=options.k, seed=options.seed)
    runs = lb.runs_of(records)
    # with --fit-on, the one fit on those formats: its constants and curve are what the predictions come from
    fitted = records if options.fit_on is None else fitted_on(records, options.fit_on, options.reference)
    fit = fit_rho(fitted, options.fixed, reference=options.reference, k=options.k, seed=options.seed)
    parts_of = format_parts(records)
    predictions = held_out_predictions(records, board, parts_of, options.fixed, options.k, options.seed, options.fit_on,
                                       shared=None if options.fit_on is None else fit)
    head = [f"<h1>{TITLE}</h1>",
            para(f"Store {options.store}; {len(records)} runs fitted ({options.selection}); reference "
                 f"{options.reference}; {options.k} bootstrap resamples, seed {options.seed}."),
            "<nav>" + "".join(f'<a href="#sec-{a}">{html.escape(t)}</a>' for a, t in SECTIONS) + "</nav>"]
    head += [para(f"note: {n}", "warn") for n in notices]
    body = [
        _leaderboard_section(board),
        section("loss-vs-n", "Loss vs N", figure(plot.loss_vs_n_figure(board, runs), "loss-vs-n",
                "Final validation loss per run; curves: the fitted compression law at each token budget.")),
        section("loss-gap", "Loss difference to the reference",
                figure(plot.loss_gap_figure(board, runs), "loss-gap",
                       f"Each format's loss minus {board.law.reference}'s at the same N and token budget (points, "
                       "seeds averaged), and the law's A N^-alpha (eff^-alpha - 1) with its 95% bootstrap band.")),
        _gap_growth_section(board, runs, options.k, options.seed),
        _unified_section(board, fit, predictions, parts_of, options.fixed, options.fit_on),
        _plan_section(board, runs, records),
        _holdout_section(records, board.law),
        _runs_section(all_runs, {r.run_id for r in records}),
    ]
    return page(TITLE, "\n".join(head + body))
