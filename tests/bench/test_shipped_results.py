"""The measured store shipped in results/ holds everything a refit needs, years later."""

from pathlib import Path

import pytest

from cslaws.bench.store import ResultsStore
from cslaws.laws.capacity import format_from_spec
from cslaws.models.llama import SIZES, non_embedding_params

STORE = Path(__file__).resolve().parents[2] / "results" / "cpu-matrix.db"


@pytest.fixture(scope="module")
def runs():
    return ResultsStore(STORE).runs(None)


def test_every_run_finished_with_its_provenance(runs) -> None:
    assert len(runs) == 48 and {r.status for r in runs} == {"finished"}
    for r in runs:
        assert r.n_params == non_embedding_params(SIZES[r.model])
        assert r.dataset and r.tokenizer and r.code_version.startswith("0.1.0") and r.cell
        assert "model:" in r.config and r.final_val_loss > 0


def test_recorded_formats_rebuild_with_their_recorded_bits(runs) -> None:
    for r in runs:
        weight = format_from_spec(r.weight)
        assert weight.bits_per_value == pytest.approx(r.bits_per_value)
        format_from_spec(r.activation)


def test_every_run_has_its_loss_curve(runs) -> None:
    store = ResultsStore(STORE)
    for r in runs:
        vals = [p for p in store.curve(r.run_id) if p[3] is not None]
        assert len(vals) == 4 and vals[-1][3] == pytest.approx(r.final_val_loss)
        assert vals[-1][1] == r.tokens
