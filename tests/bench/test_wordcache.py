"""`wordcache`: the word cache gives exactly the library's ids (the reference is `Tokenizer.encode_batch`), on
real prose, on random ASCII with every control character, and on documents it must hand to the library; and it
is used only for tokenizers whose words are encoded on their own."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from cslaws.bench.corpora import kjv_chapters, kjv_database
from cslaws.bench.prepare import train_bpe
from cslaws.bench.wordcache import WordCache, applies, encoder


def library(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [enc.ids for enc in tok.encode_batch(texts, add_special_tokens=False)]


def ids(encoded: list[bytes], dtype=np.uint16) -> list[list[int]]:
    """The encoders' raw bytes of `dtype` per document, as ids."""
    return [np.frombuffer(b, dtype).tolist() for b in encoded]


@pytest.fixture(scope="module")
def prose(small_corpus) -> list[str]:
    """Shakespeare lines and 150 KJV chapters."""
    lines = [line for f in small_corpus for line in Path(f).read_text(encoding="utf-8").splitlines()]
    return lines + [c["text"] for c in itertools.islice(kjv_chapters(kjv_database()), 150)]


@pytest.fixture(scope="module")
def tok(prose) -> Tokenizer:
    return train_bpe(iter(prose[::3]), 600)


def test_prose_gives_the_librarys_ids(tok, prose):
    assert applies(tok)
    cache = WordCache(tok, np.uint16)
    assert ids(cache(prose)) == library(tok, prose)
    assert len(cache.words) > 1000  # the words were cached, not each sent to the library


def test_random_ascii_with_every_control_character_gives_the_librarys_ids(tok):
    # Python's \s takes \x1c-\x1f as white space and the library's regex does not: uniform random ASCII
    # documents meet them, and the contractions, digits and spaces that the split treats specially
    rng = random.Random(0)
    pieces = [chr(i) for i in range(128)] + ["'s", "'ll", "'S", "  ", " \n", "\t\t", "12", " x", "\x1c ", "\r\n"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 120))) for _ in range(3000)]
    assert ids(WordCache(tok, np.uint16)(texts)) == library(tok, texts)


def test_documents_with_unicode_are_cut_at_newlines_and_stay_exact(tok):
    # Unicode letters, digits and white space (no-break, em and ideographic spaces, NEL) beside newlines and
    # ASCII: the non-ASCII pieces go to the library, the ASCII lines between them come from the cache
    rng = random.Random(1)
    pieces = ["\n", "\n\n", " \n", "\n ", "\n\t", "x", " ab", "12", ".", "'s", " ", "\u00e9", "\u4e2d", "\u0663",
              "\u00a0", "\u2003", "\u3000", "\x85", "\u00e9t\u00e9", "\U0001f600"]
    texts = ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 80))) for _ in range(3000)]
    # a BPE trained on these texts has merges of white space runs with newlines: a wrong cut changes its ids
    for t in (tok, train_bpe(iter(texts), 400)):
        assert ids(WordCache(t, np.uint16)(texts)) == library(t, texts)
    cache = WordCache(tok, np.uint16)
    text = "na\u00efve\nplain words here\nthen \u00e9t\u00e9 again\nmore"
    assert ids(cache([text])) == library(tok, [text])
    assert {"plain", " words", "more"} <= set(cache.words) and " again" not in cache.words


def test_non_ascii_and_added_tokens_go_to_the_library_whole(tok):
    texts = ["caf\u00e9 and na\u00efve", "one<|endoftext|>two", "<|endoftext|>", "a < b and c > d", "<|endof", ""]
    cache = WordCache(tok, np.uint16)
    got = ids(cache(texts))
    assert got == library(tok, texts)
    assert tok.token_to_id("<|endoftext|>") in got[1]  # the special token, not its characters
    assert "caf" not in cache.words and "one" not in cache.words  # those documents never reached the cache
    assert " b" in cache.words  # a '<' alone is ordinary text


def test_the_cache_stops_growing_at_its_limit_and_stays_exact(tok, prose):
    cache = WordCache(tok, np.uint32, max_words=50)
    assert ids(cache(prose[:400]), np.uint32) == library(tok, prose[:400])
    assert len(cache.words) == 50


def _bpe(normalizer=None, pre_tokenizer=None, dropout=None) -> Tokenizer:
    vocab = {chr(c): i for i, c in enumerate(b"abcdefghijklmnopqrstuvwxyz")} | {"\u0120": 26}
    t = Tokenizer(models.BPE(vocab, [], dropout=dropout))
    if normalizer is not None:
        t.normalizer = normalizer
    t.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    return t


@pytest.mark.parametrize("tok, uses_cache", [
    (_bpe(), True),
    (_bpe(normalizer=normalizers.Lowercase()), False),
    (_bpe(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=True)), False),
    (_bpe(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)), False),
    (_bpe(pre_tokenizer=pre_tokenizers.Whitespace()), False),
    (_bpe(dropout=0.5), False),
], ids=["byte-level", "normalizer", "prefix-space", "no-regex", "whitespace", "dropout"])
def test_only_tokenizers_that_encode_words_alone_use_the_cache(tok, uses_cache):
    assert applies(tok) == uses_cache
    encode = encoder(tok, np.uint16)
    assert isinstance(encode, WordCache) == uses_cache
    texts = ["abc def", "Hello World", "ab  cd"]
    if tok.model.dropout is None:
        assert ids(encode(texts)) == library(tok, texts)
