"""`bench report` end to end: the real command on synthetic stores, the page parsed with html.parser.

Two stores: one whose multipliers follow rho(GMSE) with known constants at several GMSEs (the unified fit is
determined: the page draws its curve and predicts held-out formats), and one whose quantized formats lose
nothing (eff = 1 at every GMSE: rho's F runs off, so no curve may be drawn and the legend must say why)."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.laws import plot
from cslaws.laws import leaderboard as lb
from cslaws.laws.fit import rho
from cslaws.laws.gaps import measured_gaps
from cslaws.laws.heldout import fit_rho
from cslaws.laws.unified import format_parts
from cslaws.models.llama import SIZES

from conftest import STORE_BUDGETS, STORE_SIZES, int_gmse, int_store

#: The constants the determined store's multipliers are drawn from (Lsat = 1, which the report pins).
F_TRUE, C_TRUE = 0.5, 1.2
K = 20


@pytest.fixture(scope="module")
def determined(tmp_path_factory):
    path = tmp_path_factory.mktemp("det") / "runs.db"
    store = int_store(path, lambda b: float(rho(int_gmse(b), F_TRUE, C_TRUE)))
    # a failed run: listed in the run table, not fitted
    run_id = store.start_run(RunRecord(label="int4", model="x", n_params=10**6, tokens=10**7, bits_per_value=4.0,
                                       seed=1, dataset="synthetic", tokenizer="none", code_version="test-1"))
    store.fail(run_id, "diverged")
    return path


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    path = tmp_path_factory.mktemp("flat") / "runs.db"
    int_store(path, lambda b: 1.0, noise=0.0, w4a4=False)
    return path


class Page(HTMLParser):
    """Tables (by id) as rows of cell texts, figures (by id) with their text, and every tag's attributes."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.tables: dict[str, list[list[str]]] = {}
        self.figures: dict[str, list[str]] = {}
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._table: str | None = None
        self._figure: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "figure":
            self._figure = attrs.get("id")
            self.figures[self._figure] = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._figure is not None:
            self.figures[self._figure].append(data)

    def body(self, table: str) -> list[list[str]]:
        return self.tables[table][1:]


def _report(capsys, store, out, *extra) -> Page:
    assert bench(["report", "--store", str(store), "--out", str(out), "--bootstrap", str(K), *extra]) == 0, \
        capsys.readouterr().err
    capsys.readouterr()
    return Page(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def page(determined, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report.html"
    assert bench(["report", "--store", str(determined), "--out", str(out), "--bootstrap", str(K)]) == 0
    return Page(out.read_text(encoding="utf-8"))


def test_page_is_self_contained(page):
    tags = {tag for tag, _ in page.tags}
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for tag, attrs in page.tags:
        for name in ("src", "href", "xlink:href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http:", "https:", "//")), (tag, name, value)
    assert set(page.figures) == {"fig-loss-vs-n", "fig-loss-gap", "fig-gap-vs-d", "fig-eff-vs-gmse", "fig-iso-memory"}
    svgs = sum(tag == "svg" for tag, _ in page.tags)
    assert svgs == len(page.figures)
    # every in-page reference (nav links, SVG clip paths and markers) points at an id the page defines
    all_ids = [attrs["id"] for _, attrs in page.tags if attrs.get("id")]
    assert len(all_ids) == len(set(all_ids)), "ids must be unique in a page"
    ids = set(all_ids)
    refs = [v for _, a in page.tags for k, v in a.items() if k in ("href", "xlink:href") and v]
    assert refs and all(ref.startswith("#") and ref[1:] in ids for ref in refs)


def test_the_page_begins_with_the_head_that_report_out_may_replace(page):
    from cslaws.laws.report import REPORT_HEAD

    assert page.text.encode("utf-8").startswith(REPORT_HEAD)


def test_leaderboard_matches_bench_leaderboard_json(page, determined, capsys):
    assert bench(["leaderboard", "--store", str(determined), "--format", "json", "--bootstrap", str(K)]) == 0
    board = json.loads(capsys.readouterr().out)
    header = page.tables["leaderboard"][0]
    rows = page.body("leaderboard")
    assert header == list(lb.COLUMNS)
    assert [r[0] for r in rows] == [r["label"] for r in board["rows"]]
    col = {name: i for i, name in enumerate(header)}
    for cells, row in zip(rows, board["rows"]):
        assert cells[col["eff"]] == f"{row['eff']:.3f}"
        assert cells[col["eff 95% CI"]] == f"[{row['eff_lo']:.3f}, {row['eff_hi']:.3f}]"
        assert cells[col["eff x 16/bits"]] == f"{row['eff_per_bit']:.3f}"
        assert cells[col["runs"]] == str(row["runs"])
    holdout = board["law"]["holdout"]
    assert len(page.body("holdout")) == holdout["runs"]
    assert f"RMSE(log L) = {holdout['rmse_log']:.4f}" in page.text


def test_gap_table_matches_bench_law_gaps_json(page, determined, capsys):
    assert bench(["law", "gaps", "--store", str(determined), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    cells = page.body("gap-growth")
    assert [c[0] for c in cells] == [r["label"] for r in rows] == ["int2", "int3", "int4", "w4a4"]
    for c, r in zip(cells, rows):
        assert c[1:4] == [f"{r['mean_gap']:+.4f}", f"{r['growth']:+.4f}", f"[{r['lo']:+.4f}, {r['hi']:+.4f}]"]
        assert c[5] == str(len(STORE_SIZES))


def test_gap_vs_d_draws_the_measured_gaps_and_the_laws(determined):
    records = ResultsStore(determined, create=False).runs()
    board = lb.build(records, k=K)
    runs = lb.runs_of(records)
    fig = plot.gap_vs_d_figure(board, runs)
    panel = next(ax for ax in fig.axes if ax.get_title() == "int2")
    gaps = measured_gaps(runs, "dense")["int2"]
    solid = [line for line in panel.get_lines() if line.get_marker() == "o"]
    dashed = [line for line in panel.get_lines() if line.get_linestyle() == "--"]
    assert len(solid) == len(dashed) == len(STORE_SIZES)
    law = board.law
    for line, flat, n in zip(solid, dashed, STORE_SIZES):
        rows = gaps.n == n
        assert list(line.get_xdata()) == pytest.approx(list(n * gaps.tokens_per_param[rows]))
        assert list(line.get_ydata()) == pytest.approx(list(gaps.diff[rows]))
        expected = law.A * n ** -law.alpha * (law.eff["int2"] ** -law.alpha - 1.0)
        assert list(flat.get_ydata()) == pytest.approx([expected, expected])


def test_penalty_table_matches_bench_law_penalty_json(page, determined, capsys):
    assert bench(["law", "penalty", "--store", str(determined), "--format", "json", "--bootstrap", str(K)]) == 0
    out = json.loads(capsys.readouterr().out)
    penalty, boot = out["penalty"], out["penalty"]["bootstrap"]
    cells = page.body("penalty")
    assert sorted(c[0] for c in cells) == sorted(penalty["k"]) == ["int2", "int3", "int4", "w4a4"]
    for c in cells:
        label = c[0]
        lo, hi = boot["eff_ci"][label]
        assert c[1] == f"{penalty['k'][label]:.4f}" and c[3] == f"{penalty['eff_at_centre'][label]:.3f}"
        assert c[4] == f"[{lo:.3f}, {hi:.3f}]"
        assert c[5] == f"{out['compression']['eff'][label]:.3f}"
    lo, hi = boot["ci"]["gamma_D"]
    assert f"gamma_D = {penalty['gamma_D']:.3f} [{lo:.3f}, {hi:.3f}]" in page.text


def test_gap_vs_d_draws_the_penalty_form_where_given(determined):
    from cslaws.laws.penalty import fit_penalty

    records = ResultsStore(determined, create=False).runs()
    board = lb.build(records, k=K)
    runs = lb.runs_of(records)
    penalty = fit_penalty(runs, holdout=False)
    panel = next(ax for ax in plot.gap_vs_d_figure(board, runs, penalty).axes if ax.get_title() == "int3")
    dotted = [line for line in panel.get_lines() if line.get_linestyle() == ":"]
    assert len(dotted) == len(STORE_SIZES)
    for line, n in zip(dotted, STORE_SIZES):
        d = line.get_xdata()
        assert d[0] == pytest.approx(n * min(STORE_BUDGETS)) and d[-1] == pytest.approx(n * max(STORE_BUDGETS))
        assert list(line.get_ydata()) == pytest.approx(list(penalty.penalty("int3", n, d)))
    bare = next(ax for ax in plot.gap_vs_d_figure(board, runs).axes if ax.get_title() == "int3")
    assert not [line for line in bare.get_lines() if line.get_linestyle() == ":"]


def test_run_table_lists_every_run_with_its_settings(page, determined):
    records = ResultsStore(determined, create=False).runs(status=None)
    rows = page.body("runs")
    assert len(rows) == len(records) == 5 * len(STORE_SIZES) * len(STORE_BUDGETS) + 1
    header = page.tables["runs"][0]
    col = {name: i for i, name in enumerate(header)}
    failed = [r for r in rows if r[col["status"]] == "failed"]
    assert len(failed) == 1 and failed[0][col["in fit"]] == "no" and failed[0][col["final loss"]] == "-"
    assert all(r[col["in fit"]] == "yes" for r in rows if r[col["status"]] == "finished")
    first = rows[0]
    assert first[col["code version"]] == "test-1" and first[col["epochs"]] == "0.50"
    assert "lr=0.003" in first[col["settings"]] and "batch=16" in first[col["settings"]]


def test_determined_fit_draws_its_curve_and_predicts_held_out_formats(page):
    families = page.body("unified-constants")
    assert [r[0] for r in families] == ["scalar"] and families[0][-1] == "yes"
    F = float(families[0][1].split()[0])
    assert F == pytest.approx(F_TRUE, rel=0.1)
    legend = " ".join(page.figures["fig-eff-vs-gmse"])
    assert "fitted rho, scalar (F=" in legend and "no fitted rho" not in legend
    header = page.tables["predictions"][0]
    predicted_col = header.index("predicted eff")
    rows = {r[0]: r for r in page.body("predictions")}
    assert set(rows) == {"int2", "int3", "int4", "w4a4"}
    # int3 and int4 lie between other formats' GMSEs and w4a4 is the product of two int4 parts: each is
    # predicted from the others close to the multiplier its runs were drawn from
    for label, true in (("int3", rho(int_gmse(3), F_TRUE, C_TRUE)), ("w4a4", rho(int_gmse(4), F_TRUE, C_TRUE) ** 2)):
        predicted = float(rows[label][predicted_col])
        assert predicted == pytest.approx(float(true), abs=0.05)
        lo, hi = (float(v) for v in rows[label][predicted_col + 1].strip("[]").split(","))
        assert lo <= predicted <= hi


def test_the_page_plans_nothing_the_runs_do_not_determine(capsys, determined, tmp_path):
    """With 2 values of D the D term is not determined, nor a plan under a compute budget: the page says why
    in place of the plan table (the held-out section on the same page refused its predictions already)."""
    from test_cli import two_values_of_d

    page = _report(capsys, two_values_of_d(determined, tmp_path / "two-d.db", 10, 10**7, 10**8), tmp_path / "r.html")
    assert "plan" not in page.tables and "fig-iso-memory" in page.figures
    assert ("compute 9.6e+15 FLOPs: the law does not determine a plan: B and beta fitted on 2 value(s) of D, not "
            "determined by the runs") in " ".join(page.text.split())


def test_plan_table_ranks_by_predicted_loss(page):
    rows = page.body("plan")
    losses = [float(r[6]) for r in rows]
    assert losses == sorted(losses) and {r[0] for r in rows} == {"dense", "int2", "int3", "int4", "w4a4"}
    assert next(r for r in rows if r[0] == "dense")[7] == "+0.0000"
    # each format's bits are priced on a model size; dense runs here keep no spec, so their stored bits
    assert all(r[2] in SIZES if r[0] != "dense" else r[2] == "its runs" for r in rows), [r[2] for r in rows]
    # a plan outside the measured sizes is named as the law's extrapolation, and only then
    n = [float(r[4]) for r in rows]
    outside = [r[0] for r, x in zip(rows, n) if not STORE_SIZES[0] <= x <= STORE_SIZES[-1]]
    assert ("lie outside the measured range of N" in page.text) == bool(outside)
    for label in outside:
        assert label in page.text.split("lie outside the measured range of N")[0].rsplit("The plans of", 1)[1]


def test_undetermined_fit_draws_no_curve_and_says_why(capsys, lossless, tmp_path):
    page = _report(capsys, lossless, tmp_path / "r.html")
    families = page.body("unified-constants")
    assert families[0][0] == "scalar" and families[0][-1] != "yes"
    legend = " ".join(page.figures["fig-eff-vs-gmse"])
    assert "no fitted rho for scalar" in legend and "fitted rho, scalar" not in legend
    # nor a held-out prediction from it
    rows = page.body("predictions")
    assert rows and all(r[4] == "-" and r[-1] != "-" for r in rows)


def test_plot_applies_the_same_rule(lossless):
    records = ResultsStore(lossless, create=False).runs()
    board = lb.build(records, k=K)
    fit = fit_rho(records, plot.DEFAULT_FIXED, k=K)
    assert fit.determined() == [] and "scalar" in fit.undetermined
    fig = plot.eff_vs_gmse_figure(board, fit, format_parts(records))
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert not any(label.startswith("fitted rho") for label in labels)
    assert any(label.startswith("no fitted rho for scalar") for label in labels)
    # the why entry is an empty line: nothing is drawn for it
    why = next(line for line in ax.get_lines() if line.get_label().startswith("no fitted rho"))
    assert len(why.get_xdata()) == 0


def test_unidentifiable_family_is_a_reason_not_an_error(lossless):
    # one quantized format: 1 GMSE for the 2 free constants F and C (Lsat pinned)
    records = [r for r in ResultsStore(lossless, create=False).runs() if r.label in ("dense", "int4")]
    fit = fit_rho(records, plot.DEFAULT_FIXED)
    assert fit.report is None and "cannot determine them" in fit.why_none


def test_out_must_be_a_file(capsys, lossless, tmp_path):
    assert bench(["report", "--store", str(lossless), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_bad_fix_is_a_bench_error(capsys, lossless, tmp_path):
    assert bench(["report", "--store", str(lossless), "--out", str(tmp_path / "r.html"), "--fix", "Q=1"]) == 2
    assert "--fix takes NAME=VALUE" in capsys.readouterr().err


def test_the_same_store_gives_the_same_page(page, determined, capsys, tmp_path):
    # figure ids are hashed by matplotlib with a salt that is random unless fixed: a page must be reproducible
    again = _report(capsys, determined, tmp_path / "again.html")
    assert again.text == page.text


def test_out_in_a_file_and_a_bad_fix_are_refused_before_the_fit(capsys, lossless, tmp_path, monkeypatch):
    from cslaws.laws import report

    def render(*_):
        raise AssertionError("the report was rendered before the check")

    monkeypatch.setattr(report, "render", render)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    assert bench(["report", "--store", str(lossless), "--out", str(notes / "r.html")]) == 2
    assert f"--out {notes / 'r.html'}: {notes} is a file, not a folder" in capsys.readouterr().err
    assert notes.read_text() == "mine"
    for fix, message in (("C=inf", "--fix 'C=inf': unified-law constants lie in [0.01, 100] (the range a fit searches), got inf"),
                         ("sparse.C=1", "--fix sparse.C=1: no format of the selected runs is of family 'sparse'")):
        assert bench(["report", "--store", str(lossless), "--out", str(tmp_path / "r.html"), "--fix", fix]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_an_unset_learning_rate_is_named_as_the_size_default():
    from cslaws.laws.report import settings_summary

    assert settings_summary("fit:\n  model:\n    size: nano\n    lr: null\n  data:\n    batch_size: 16\n") == \
        "lr=size default batch=16"
    assert settings_summary("fit:\n  model:\n    size: nano\n    lr: 0.003\n") == "lr=0.003"
