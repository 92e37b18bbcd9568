"""The unified law over a results store: fit rho's constants per family from measured runs.

Panferov et al. 2025 ("Unified Scaling Laws for Compressed Representations") write every format's
multiplier as a function of its Gaussian MSE, eff = prod over compressed parts of
rho_family(GMSE) = Lsat tanh(F log4(1 / GMSE))^C, with F, C, Lsat shared within a family. This module
rebuilds each stored format from its spec, splits it into its parts (`Format.capacity_parts`: a
composition into its sparsifier and quantizer; weights and activations separately), measures their GMSE,
and fits the family constants jointly with A, B, E, alpha, beta (`fit_unified`). Beside each format it
reports the free multiplier of the compression form on the same runs, so the reader sees how well one
rho per family explains them. The fitted constants are what `bench capacity --F --C --Lsat` takes to
predict formats that were never trained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from cslaws.laws.capacity import declared
from cslaws.laws.fit import FAMILY_MAX, FAMILY_MIN, FAMILY_PARAMS, FitError, LawFit, constant_key, fit_compression, fit_unified, pinned
from cslaws.laws.leaderboard import label_capacity, law_summary, runs_of, side_parts
from cslaws.laws.uncertainty import Bootstrap, bootstrap


@dataclass
class UnifiedRow:
    label: str
    components: list[tuple[str, float]]
    eff_free: float
    eff_unified: float
    runs: int


@dataclass
class UnifiedReport:
    law: LawFit
    fixed: dict[str, float]
    intervals: Bootstrap | None
    rows: list[UnifiedRow]

    def to_dict(self) -> dict[str, Any]:
        out = {"law": self.law.to_dict(), "fixed": dict(self.fixed), "rows": [asdict(r) for r in self.rows]}
        if self.intervals is not None:
            out["ci"] = {k: list(v) for k, v in self.intervals.ci.items()}
        return out


def parse_fixed(items: Sequence[str]) -> dict[str, float]:
    """`NAME=VALUE` (every family) or `FAMILY.NAME=VALUE` (one family) pairs, NAME one of F, C, Lsat, from
    the command line. A family's pin overrides a global one (`cslaws.laws.fit.pinned`)."""
    fixed: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        family, dot, name = key.rpartition(".")
        if not sep or name not in FAMILY_PARAMS or (dot and not family):
            raise ValueError(f"--fix takes NAME=VALUE or FAMILY.NAME=VALUE with NAME one of {', '.join(FAMILY_PARAMS)}; "
                             f"got {item!r}")
        if key in fixed:  # the later value would silently win
            raise ValueError(f"--fix {item!r}: {key} is already pinned to {fixed[key]:g}; give each name once")
        try:
            fixed[key] = float(value)
        except ValueError:
            raise ValueError(f"--fix {item!r}: {value!r} is not a number") from None
        check_constant(f"--fix {item!r}", fixed[key])
    return fixed


def check_constant(option: str, value: float) -> None:
    """A ValueError naming `option` unless `value` lies in the range the fits search for a free F, C or Lsat,
    [FAMILY_MIN, FAMILY_MAX]: rho of a nan, infinite or non-positive constant is no capacity, and one far out
    (Lsat 1e300) overflowed the fit into effs of 300 digits."""
    if not (math.isfinite(value) and FAMILY_MIN <= value <= FAMILY_MAX):
        raise ValueError(f"{option}: unified-law constants lie in [{FAMILY_MIN:g}, {FAMILY_MAX:g}] (the range a fit "
                         f"searches), got {value}")


def check_fixed_families(fixed: dict[str, float], parts: dict[str, list[tuple[str, float]]]) -> None:
    """A ValueError, before any fit, where a FAMILY.NAME pin of `--fix` names a family none of the formats
    in `parts` (`format_parts`) has: the fit could not use it."""
    families = sorted(families_of(parts))
    for key, value in fixed.items():
        family = key.rpartition(".")[0]
        if family and family not in families:
            raise ValueError(f"--fix {key}={value:g}: no format of the selected runs is of family {family!r}; "
                             f"families: {', '.join(families) or 'none'}")


def pins_for(fixed: dict[str, float], parts: dict[str, list[tuple[str, float]]]) -> dict[str, float]:
    """The pins of `fixed` that a fit over the formats in `parts` uses: every pin of all families, and the
    FAMILY.NAME pins of its families. A subset of the runs (`--fit-on`, a held-out format's "other formats")
    may lack a family the store has and a pin names (`--fix sparse.C=1.39` for an INT-only fit): that pin
    has nothing to act on there, and `check_fixed_families` has checked it against all the runs."""
    families = families_of(parts)
    return {key: value for key, value in fixed.items() if key.rpartition(".")[0] in ("", *families)}


def families_of(parts: dict[str, list[tuple[str, float]]]) -> set[str]:
    """The unified-law families of the formats in `parts` (`format_parts`)."""
    return {fam for components in parts.values() for fam, _ in components}


def format_parts(records: Sequence[Any]) -> dict[str, list[tuple[str, float]]]:
    """Per label, its compressed parts as (family, GMSE), as its runs stored them: weights' then activations'."""
    return {label: declared(side_parts(cap)) for label, cap in label_capacity(records).items()}


def build_unified(
    records: Sequence[Any], fixed: dict[str, float] | None = None, reference: str = "dense", k: int = 0, seed: int = 0,
    holdout: bool = True,
) -> UnifiedReport:
    """Fit the unified form over `records` (finished RunRecords); `k` > 0 adds bootstrap intervals, `holdout`
    the leave-largest-size-out check."""
    runs = runs_of(records)
    parts = format_parts(records)
    if parts.get(reference, []) != []:
        raise FitError(f"the reference label {reference!r} has compressed parts {parts[reference]}; it must be dense")
    fixed = pins_for(fixed or {}, parts)
    law = fit_unified(runs, [parts[s] for s in runs.label], fixed=fixed, holdout=holdout)
    free = fit_compression(runs, reference, holdout=False)
    intervals = bootstrap(law, runs, k=k, seed=seed) if k else None
    rows = [UnifiedRow(label, parts[label], free.eff[label], law.family_eff(parts[label]),
                       int(np.sum(runs.label == label))) for label in free.eff]
    rows.sort(key=lambda r: -r.eff_free)
    return UnifiedReport(law, dict(fixed or {}), intervals, rows)


def family_rows(report: UnifiedReport) -> list[list[str]]:
    """One row per family: its constants, each with its interval or "fixed"."""
    ci = report.intervals.ci if report.intervals else {}
    out = []
    for fam, consts in report.law.family.items():
        cells = [fam]
        for name in FAMILY_PARAMS:
            if pinned(report.fixed, fam, name) is not None:
                cells.append(f"{consts[name]:.4g} (fixed)")
            elif constant_key(name, fam) in report.law.at_bound:  # its resamples stay there: no interval
                cells.append(f"{consts[name]:.4g} (at search bound)")
            elif constant_key(name, fam) in ci:
                lo, hi = ci[constant_key(name, fam)]
                cells.append(f"{consts[name]:.4g} [{lo:.3g}, {hi:.3g}]")
            else:
                cells.append(f"{consts[name]:.4g}")
        out.append(cells)
    return out


def describe_parts(components: Sequence[tuple[str, float]]) -> str:
    return " x ".join(f"{fam}({g:.4g})" for fam, g in components) or "-"


def render_tables(report: UnifiedReport, undetermined: dict[str, str]):
    """The constants, the formats, and per family the command to predict with, or, for a family in
    `undetermined` (`heldout.judged`), why its constants are not determined by the runs."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    fams = Table(title="Unified law: rho(GMSE) = Lsat tanh(F log4(1/GMSE))^C per family",
                 caption=escape(law_summary(report.law)))
    for col in ("family", *FAMILY_PARAMS):
        fams.add_column(col, justify="left" if col == "family" else "right")
    for cells in family_rows(report):
        fams.add_row(*(escape(c) for c in cells))
    formats = Table(title="Formats: parts as family(GMSE); eff of the free fit beside the unified prediction")
    for col in ("format", "parts", "eff (free)", "eff = prod rho", "runs"):
        formats.add_column(col, justify="left" if col in ("format", "parts") else "right")
    for r in report.rows:
        formats.add_row(escape(r.label), escape(describe_parts(r.components)), f"{r.eff_free:.3f}",
                        f"{r.eff_unified:.3f}", str(r.runs))
    hints = [f"{fam} formats: none; its constants are not determined by the runs ({undetermined[fam]})"
             if fam in undetermined else
             f"bench capacity --F {c['F']:.4g} --C {c['C']:.4g} --Lsat {c['Lsat']:.4g} ...   ({fam} formats)"
             for fam, c in report.law.family.items()]
    return Group(fams, formats, escape("Predict untrained formats with these constants:\n  " + "\n  ".join(hints)))
