"""Prediction without training, put to the test on a store's own runs.

The unified law's claim (Panferov et al. 2025) is that one rho(GMSE) per family of formats tells a format's
multiplier from its Gaussian MSE alone, without training it. Here the law is fitted on some formats' runs and
asked for the eff of formats whose runs it did not see; the measured eff beside it is the free compression
fit's, with all runs. Two designs:

- `fit_on` given (`bench law unified --fit-on int8 int4 int3 int2`): one fit on the reference and those
  formats predicts every other format whose parts belong to families they determine (an FP-element
  format from the INT formats; w4a4 as the product of its weight and activation parts);
- `fit_on` None (the report's default): each compressed format in turn is left out and predicted from the
  reference and the other formats made of the same families.

A prediction is made only where the fit determines the constants of every family the format uses
(`undetermined`); otherwise the row says why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Collection, Sequence

import numpy as np

from cslaws.laws import leaderboard as lb
from cslaws.laws.fit import FAMILY_PARAMS, FitError, LawFit, constant_key, first_repeated, pinned, rho, unified_eff
from cslaws.laws.uncertainty import Bootstrap
from cslaws.laws.unified import UnifiedReport, build_unified, describe_parts

#: A family constant whose e-fold change moves log rho by less than this at every measured GMSE is not read
#: from the runs (measured multipliers carry errors of several percent): the fit left it where it started
#: or ran it off along a ridge (the CPU store's F = 2.65e-321 with C = 8.8e-6 is one: rho ~ 0.99 flat).
MIN_SENSITIVITY = 0.01
#: A bootstrap interval of a constant wider than this factor: the runs allow curves that look nothing alike.
MAX_INTERVAL_RATIO = 10.0

Parts = dict[str, list[tuple[str, float]]]


@dataclass
class Prediction:
    """A format's eff predicted from its GMSE by a unified fit that did not see its runs (None: `why`)."""

    label: str
    measured: float
    measured_lo: float | None  # None: a format of one run has no measured interval
    measured_hi: float | None
    predicted: float | None
    predicted_lo: float | None
    predicted_hi: float | None
    why: str = ""  # why there is no prediction, or what the one made rests on

    def inside(self) -> bool | None:
        """Whether the prediction lies in the measured interval (None: no prediction, or no interval)."""
        if self.predicted is None or self.measured_lo is None:
            return None
        return self.measured_lo <= self.predicted <= self.measured_hi

    def measured_interval(self) -> str:
        return "-" if self.measured_lo is None else f"[{self.measured_lo:.3f}, {self.measured_hi:.3f}]"


def first_sentence(text: str) -> str:
    """The statement of a long error message (its hints follow the first '. '), for a legend or caption."""
    return text.split(". ", 1)[0].rstrip(".")


def rho_sensitivity(gmse: np.ndarray, F: float, C: float, Lsat: float) -> dict[str, np.ndarray]:
    """d log rho / d log p for p in F, C, Lsat at each GMSE (how much the runs can say about each constant)."""
    z = F * np.log(1.0 / np.asarray(gmse, dtype=np.float64)) / math.log(4.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # 2z / sinh(2z) written with exp(-2z) so that a large z does not overflow; its limit at z = 0 is 1
        d_f = np.where(z > 0, C * 4.0 * z * np.exp(-2.0 * z) / -np.expm1(-4.0 * z), C)
        d_c = C * np.log(np.tanh(z))
    return {"F": d_f, "C": d_c, "Lsat": np.ones_like(z)}


def undetermined(law: LawFit, intervals: Bootstrap | None, fixed: dict[str, float],
                 gmses: dict[str, Sequence[float]]) -> dict[str, str]:
    """Per family of a unified fit, why its free constants are not determined by the runs (absent: they are).

    Four signs: an exponent of the law sits at its search bound (`LawFit.at_bound`: the N or D term is not
    determined, so no eff is); a constant sits at an end of its search range (also `at_bound`: it ran off, and a
    bootstrap that refits from there stays there, so its interval can look narrow); a constant barely moves rho
    at the family's measured GMSEs (MIN_SENSITIVITY); its bootstrap interval spans more than
    MAX_INTERVAL_RATIO. E alone at its bound is no sign: a narrow
    range of N rarely determines the irreducible loss (QuEST's 104 runs do not either), and the measured effs
    the predictions are set against come from the same fit (`caveat` says so).
    """
    ci = intervals.ci if intervals is not None else {}
    out = {}
    exponents = [name for name in law.at_bound if name in ("alpha", "beta")]
    for fam, consts in law.family.items():
        reasons = [f"exponents at their search bound ({', '.join(exponents)})"] if exponents else []
        sens = rho_sensitivity(np.asarray(gmses[fam]), **consts)
        for name in FAMILY_PARAMS:
            if pinned(fixed, fam, name) is not None:
                continue
            value = consts[name]
            key = constant_key(name, fam)
            if key in law.at_bound:
                reasons.append(f"{name}={value:.3g} ran to an end of its search range")
            elif not np.max(np.abs(np.nan_to_num(sens[name]))) >= MIN_SENSITIVITY:
                reasons.append(f"{name}={value:.3g} barely moves rho at the measured GMSEs")
            elif key in ci:
                lo, hi = ci[key]
                if not (lo > 0 and hi / lo <= MAX_INTERVAL_RATIO):
                    reasons.append(f"{name}'s {100 * intervals.level:.0f}% interval [{lo:.3g}, {hi:.3g}] spans "
                                   f"more than {MAX_INTERVAL_RATIO:g}x")
        if reasons:
            out[fam] = "; ".join(reasons)
    return out


def caveat(law: LawFit) -> str:
    """What a prediction from `law` rests on beyond its family constants (empty: nothing)."""
    return "E at its search bound: predicted and measured eff are both conditional on it" if "E" in law.at_bound else ""


def eff_interval(parts: Sequence[tuple[str, float]], boot: Bootstrap) -> tuple[float, float]:
    """Bootstrap interval of prod rho over `parts` under the resampled family constants."""
    draws = np.ones(len(boot.samples["A"]))
    for fam, g in parts:
        draws = draws * rho(g, *(boot.samples[constant_key(p, fam)] for p in FAMILY_PARAMS))
    tail = 50.0 * (1.0 - boot.level)
    lo, hi = np.percentile(draws, [tail, 100.0 - tail])
    return float(lo), float(hi)


@dataclass
class RhoFit:
    """A unified fit over some runs: its report (None, with `why_none`, when it cannot be fitted), and per
    family why its constants are not determined (a family not in `undetermined` is drawn and predicts)."""

    report: UnifiedReport | None
    why_none: str = ""
    undetermined: dict[str, str] = field(default_factory=dict)

    def determined(self) -> list[str]:
        return [] if self.report is None else [f for f in self.report.law.family if f not in self.undetermined]


def family_gmses(report: UnifiedReport) -> dict[str, list[float]]:
    """The GMSEs each family's constants were fitted on (every part of every format)."""
    out: dict[str, list[float]] = {fam: [] for fam in report.law.family}
    for row in report.rows:
        for fam, g in row.components:
            out[fam].append(g)
    return out


def judged(report: UnifiedReport) -> RhoFit:
    """`report` with the families its runs do not determine."""
    return RhoFit(report, undetermined=undetermined(report.law, report.intervals, report.fixed, family_gmses(report)))


def fit_rho(records: Sequence[Any], fixed: dict[str, float], reference: str = "dense", k: int = 0,
            seed: int = 0, holdout: bool = True) -> RhoFit:
    """The unified fit over `records` and which of its families are determined; a fit the runs cannot
    support (too few GMSEs for the free constants, ...) becomes a reason to show, not an error."""
    try:
        return judged(build_unified(records, fixed, reference=reference, k=k, seed=seed, holdout=holdout))
    except FitError as err:
        return RhoFit(None, why_none=first_sentence(str(err)))


def _predict(prediction: Prediction, components: Sequence[tuple[str, float]], fit: RhoFit, fitted_on: str) -> None:
    """Fill `prediction` from `fit`, or say why not."""
    law = fit.report.law if fit.report is not None else None
    missing = sorted({fam for fam, _ in components} - set(law.family if law else ()))
    if law is None:
        prediction.why = f"no fit on {fitted_on}: {fit.why_none}"
    elif missing:
        prediction.why = f"no format of family {', '.join(missing)} among {fitted_on}"
    elif any(fam in fit.undetermined for fam, _ in components):
        prediction.why = "; ".join(f"{fam}: {fit.undetermined[fam]}" for fam in dict(components) if fam in fit.undetermined)
    else:
        prediction.predicted = unified_eff(components, law.family)
        prediction.why = caveat(law)
        if fit.report.intervals is not None:
            prediction.predicted_lo, prediction.predicted_hi = eff_interval(components, fit.report.intervals)


def fitted_on(records: Sequence[Any], fit_on: Collection[str], reference: str) -> list[Any]:
    """The runs a `--fit-on` fit uses: the reference's and those of the formats named."""
    return [r for r in records if r.label in {*fit_on, reference}]


def held_out_predictions(records: Sequence[Any], board: lb.Leaderboard, parts: Parts, fixed: dict[str, float],
                         k: int, seed: int, fit_on: Collection[str] | None = None,
                         shared: RhoFit | None = None) -> list[Prediction]:
    """Per compressed format not fitted on, its eff predicted by a unified fit that did not see its runs,
    beside the eff `board` measured with all of them (see the module docstring for the two designs).
    `parts`: `format_parts(records)`; `fit_on`: labels of the fitting formats (the reference is added);
    `shared`: the fit on `fitted_on(records, fit_on, ...)` where the caller has made it already."""
    reference = board.law.reference
    if fit_on is not None and shared is None:
        shared = fit_rho(fitted_on(records, fit_on, reference), fixed, reference, k, seed, holdout=False)
    out = []
    for row in board.rows:
        if not parts[row.label] or (fit_on is not None and row.label in fit_on):
            continue
        prediction = Prediction(row.label, row.eff, row.eff_lo, row.eff_hi, None, None, None)
        if shared is not None:
            _predict(prediction, parts[row.label], shared, "--fit-on " + " ".join(sorted(fit_on)))
        else:
            # only formats made of the same families: they are what the prediction rests on, and a family the
            # format does not use (one the runs cannot determine) must not block it
            families = {fam for fam, _ in parts[row.label]}
            rest = [r for r in records if r.label != row.label and {fam for fam, _ in parts[r.label]} <= families]
            _predict(prediction, parts[row.label], fit_rho(rest, fixed, reference, k, seed, holdout=False),
                     "the other formats")
        out.append(prediction)
    return out


def check_fit_on(fit_on: Sequence[str], labels: Collection[str], reference: str) -> None:
    """`--fit-on` names formats of the selected runs, compressed ones: a ValueError (a BenchError at the
    command line) names the value and the labels allowed."""
    allowed = sorted(set(labels) - {reference})
    if (twice := first_repeated(list(fit_on))) is not None:
        # as `bench plan --formats`: a label listed twice was likely mistyped for another
        raise ValueError(f"--fit-on lists {twice!r} twice; give each label once")
    for label in fit_on:
        if label not in allowed:
            raise ValueError(f"--fit-on {label!r}: not a compressed format of the selected runs; "
                             f"allowed: {', '.join(allowed)}")


def render_predictions(predictions: Sequence[Prediction], parts: Parts):
    """Rich table: measured against predicted eff per held-out format."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="Held out: eff predicted from GMSE alone vs measured (free fit, all runs), 95% intervals")
    for col in ("format", "parts", "measured", "95% CI", "predicted", "95% CI", "pred / meas", "in CI", "note"):
        table.add_column(col, justify="left" if col in ("format", "parts", "note") else "right")
    for p in predictions:
        inside = p.inside()
        table.add_row(escape(p.label), escape(describe_parts(parts[p.label])), f"{p.measured:.3f}",
                      p.measured_interval(),
                      "-" if p.predicted is None else f"{p.predicted:.3f}",
                      "-" if p.predicted_lo is None else f"[{p.predicted_lo:.3f}, {p.predicted_hi:.3f}]",
                      "-" if p.predicted is None else f"{p.predicted / p.measured:.3f}",
                      "-" if inside is None else ("yes" if inside else "no"), escape(p.why or "-"))
    return table


def predictions_to_dict(predictions: Sequence[Prediction]) -> list[dict[str, Any]]:
    return [asdict(p) for p in predictions]
