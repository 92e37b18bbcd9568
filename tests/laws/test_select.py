"""Which stored runs a law is fitted to: non-finite losses skipped, comparability groups never mixed,
sweep-cell duplicates once, the epochs filter; and the law commands through the real `bench` entry point."""

from __future__ import annotations

import json
import sqlite3

import pytest

from cslaws.bench.cli import main as bench
from cslaws.bench.store import ResultsStore, RunRecord
from cslaws.errors import BenchError
from cslaws.laws.select import runs_like, select

from conftest import synthetic


def _record(i: int, **kw) -> RunRecord:
    base = dict(label="dense", model="m", n_params=1000 + i, tokens=10_000, bits_per_value=16.0, seed=0,
                dataset="corpus", tokenizer="bpe-a", code_version="t", vocab_size=300, seq_len=64, val_set="v1",
                status="finished", final_val_loss=3.0, run_id=i, finished_at=float(i), epochs=0.5)
    return RunRecord(**(base | kw))


def test_nonfinite_losses_are_skipped_with_a_notice() -> None:
    records = [_record(1), _record(2, final_val_loss=None), _record(3, final_val_loss=float("nan")), _record(4)]
    sel = select(records)
    assert [r.run_id for r in sel.records] == [1, 4]
    assert sel.notices == ["skipped 2 finished run(s) without a finite final loss (run ids 2, 3)"]


def test_two_tokenizers_are_two_groups_and_never_mixed() -> None:
    records = [_record(1), _record(2, tokenizer="bpe-b"), _record(3), _record(4, tokenizer="bpe-b", seq_len=128)]
    with pytest.raises(BenchError) as err:
        select(records)
    text = str(err.value)
    assert "3 comparability groups" in text and "--group K" in text and "--where" in text
    assert "group 0: 2 run(s), dataset=corpus, tokenizer=bpe-a, vocab_size=300, seq_len=64, val_set=v1" in text
    assert "group 2: 1 run(s), dataset=corpus, tokenizer=bpe-b, vocab_size=300, seq_len=128" in text
    assert [r.run_id for r in select(records, group=1).records] == [2]
    assert [r.run_id for r in select(records, where=["tokenizer=bpe-a"]).records] == [1, 3]
    assert [r.run_id for r in select(records, where=["tokenizer=bpe-b", "seq_len=128"]).records] == [4]
    with pytest.raises(BenchError, match="--group 3 does not exist"):
        select(records, group=3)
    with pytest.raises(BenchError, match="FIELD one of .*got 'colour=red'"):
        select(records, where=["colour=red"])


def test_duplicates_of_a_cell_count_once_the_latest() -> None:
    records = [_record(1, cell="c1", finished_at=5.0), _record(2, cell="c1", finished_at=9.0), _record(3, cell="c2"),
               _record(4), _record(5)]
    sel = select(records)
    assert [r.run_id for r in sel.records] == [2, 3, 4, 5]
    assert "left out run ids 1" in sel.notices[0]


def test_max_epochs_keeps_runs_within_and_leaves_out_unknown() -> None:
    records = [_record(1, epochs=0.8), _record(2, epochs=1.6), _record(3, epochs=None), _record(4, epochs=1.0)]
    assert len(select(records).records) == 4  # no filter: unknown epochs stay
    sel = select(records, max_epochs=1.0)
    assert [r.run_id for r in sel.records] == [1, 4]
    assert any("epochs were not recorded (run ids 3)" in n for n in sel.notices)
    assert any("over --max-epochs 1 (run ids 2)" in n for n in sel.notices)
    with pytest.raises(BenchError, match="--max-epochs must be a positive number"):
        select(records, max_epochs=0.0)


def test_runs_like_picks_the_group_of_the_run(tmp_path) -> None:
    store = ResultsStore(tmp_path / "s.db")
    ids = [store.add_finished(_record(i, run_id=None, tokenizer=t)) for i, t in enumerate(["a", "b", "a"])]
    assert [r.run_id for r in runs_like(store, ids[2]).records] == [ids[0], ids[2]]


@pytest.fixture()
def two_tokenizer_store(tmp_path):
    """A fittable grid of runs under tokenizer a, a second one under tokenizer b, and one diverged row
    that an older version marked finished with a NULL loss."""
    path = tmp_path / "two.db"
    store = ResultsStore(path)
    n, d, loss, lab = synthetic(effs={"dense": 1.0, "int4": 0.7})
    for tok, shift in (("a", 0.0), ("b", 0.3)):
        for ni, di, li, label in zip(n, d, loss, lab):
            store.add_finished(RunRecord(label=label, model="m", n_params=int(ni), tokens=int(di), bits_per_value=16.0,
                                         seed=0, dataset="s", tokenizer=tok, code_version="v",
                                         final_val_loss=float(li) + shift, epochs=0.5))
    bad = store.start_run(RunRecord(label="dense", model="m", n_params=10**7, tokens=10**8, bits_per_value=16.0,
                                    seed=0, dataset="s", tokenizer="a", code_version="v"))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE runs SET status='finished', final_val_loss=NULL WHERE run_id=?", (bad,))
    return path, bad


def test_leaderboard_explains_the_groups_then_fits_one(capsys, two_tokenizer_store) -> None:
    path, bad = two_tokenizer_store
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: the store") and "2 comparability groups" in err and "Traceback" not in err
    assert bench(["leaderboard", "--store", str(path), "--bootstrap", "2", "--where", "tokenizer=b", "--format", "json"]) == 0
    out = capsys.readouterr()
    board = json.loads(out.out)
    assert board["law"]["runs"] == 56 and {r["label"] for r in board["rows"]} == {"dense", "int4"}
    assert f"note: skipped 1 finished run(s) without a finite final loss (run ids {bad})" in out.err


def test_negative_min_params_is_refused() -> None:
    with pytest.raises(BenchError, match="--min-params must be a non-negative number of parameters, got -5"):
        select([_record(0)], min_params=-5)
