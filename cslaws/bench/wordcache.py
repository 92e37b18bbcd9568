"""An exact, faster encoder for byte-level BPE tokenizers with the GPT-2 split: a cache of words' ids.

A byte-level BPE (GPT-2's, and the one `bench data prepare` trains) cuts text into words with the GPT-2 regex
and merges inside each word only, so a word's ids never depend on its neighbours. Text repeats its words
(Zipf), so `WordCache` splits a document with Python's `re` and looks each word's ids up in a dict, asking
the tokenizer's BPE model only for words it has not met; the ids are kept as bytes, so a document is one
C-level join. On one core this encodes several times faster than `Tokenizer.encode_batch`
(`benchmarks/prepare_speed.py` prints the ratio measured in one run), with the same ids: tests compare the
two on prose and on random ASCII (every control character) and Unicode text.

It applies only where that reasoning holds (`applies`): no normalizer, a ByteLevel pre-tokenizer that splits
with its regex and adds no prefix space, and a BPE model without dropout. Within such a tokenizer the pieces
of text with a non-ASCII character (where the regex's \\p{L} and \\p{N} need Unicode tables; a piece runs
between two places where the split always cuts, `CUT`, about a word) and the documents with an added
token's text (which the library splits out first) are encoded by the library. `encoder` picks the path.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Callable

import numpy as np

#: The ASCII characters of Unicode's White_Space, which is what the library's regex means by \s. Python's
#: \s would also take \x1c-\x1f, so the class is spelled out.
_WS = "\\t\\n\\x0b\\x0c\\r "
#: GPT-2's split, 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+, on ASCII text.
SPLIT = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^{_WS}A-Za-z0-9]+|[{_WS}]+(?![^{_WS}])|[{_WS}]+")

#: Where GPT-2's split always cuts, whatever comes before and after: (1) between a printable ASCII character
#: and an ASCII white space: no word holds both a non-space and a white space after it (letter, digit and
#: punctuation runs stop at white space, and only a leading " " joins a word); (2) before a newline that
#: precedes a printable ASCII character: the run of white space before it ends there (the regex takes a run
#: followed by a non-space as all but its last character, and a newline never joins the next word). The regex
#: looks back nowhere and ahead one character, so the pieces between cuts split exactly as the whole. (A cut
#: after that newline would not be exact: "\n\n." splits as "\n", "\n", ".", but "\n\n" alone as one
#: word.) Only the pieces with a non-ASCII character go to the library.
CUT = re.compile(r"(?=\n[!-~])|(?<=[!-~])(?=[\t\n\x0b\x0c\r ])")

#: Words kept per process: about 120 bytes each (word, ids and dict slot), some 30-40 MB; later new words are
#: encoded by the model each time they come.
MAX_WORDS = 1 << 18


def applies(tok) -> bool:
    """Whether `tok` (a `tokenizers.Tokenizer`) encodes every word of GPT-2's split on its own."""
    spec = json.loads(tok.to_str())
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (spec.get("normalizer") is None and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", False) and model.get("type") == "BPE" and not model.get("dropout"))


class _Words(dict):
    """word -> its ids as the raw bytes of `dtype`. A word met for the first time is encoded by the tokenizer's
    model alone: its characters mapped to the byte-level alphabet (`table`) and merged by `model.tokenize`, which
    is what `encode` does to each word of the split after the same mapping, at about half the cost per call."""

    def __init__(self, tok, dtype: np.dtype, max_words: int) -> None:
        super().__init__()
        self.tokenize, self.dtype, self.max_words = tok.model.tokenize, dtype, max_words
        # the byte-level alphabet of the ASCII characters, as the tokenizer's own pre-tokenizer maps them
        self.table = {b: tok.pre_tokenizer.pre_tokenize_str(chr(b))[0][0] for b in range(128)}

    def __missing__(self, word: str) -> bytes:
        ids = np.array([t.id for t in self.tokenize(word.translate(self.table))], self.dtype).tobytes()
        if len(self) < self.max_words:
            self[word] = ids
        return ids


class WordCache:
    """Encodes documents like `tok.encode_batch(texts, add_special_tokens=False)`, word by word from a cache,
    into each document's ids as the raw bytes of `dtype` (an array per document would cost about as much as
    encoding a short one)."""

    def __init__(self, tok, dtype: np.dtype, max_words: int = MAX_WORDS) -> None:
        self.words = _Words(tok, np.dtype(dtype), max_words)
        self.library = library_encoder(tok, dtype)
        # the library splits added tokens out before anything else: a document holding one goes to it whole
        added = sorted((t.content for t in tok.get_added_tokens_decoder().values() if t.content), key=len, reverse=True)
        self.added = re.compile("|".join(map(re.escape, added))) if added else None

    def _encode_words(self, text: str) -> bytes:
        # the lookups and the join run in C; only the words not yet cached call back into Python
        return b"".join(map(self.words.__getitem__, SPLIT.findall(text)))

    def __call__(self, texts: list[str]) -> list[bytes]:
        # per document, its pieces' ids in order; None for a piece the library encodes (in `library`, in order)
        plans: list[list[bytes | None]] = []
        library: list[str] = []
        for text in texts:
            if self.added is not None and self.added.search(text):
                plans.append([None])
                library.append(text)
                continue
            if text.isascii():
                plans.append([self._encode_words(text)])
                continue
            plan = []
            # consecutive pieces of one kind are joined again: few calls, and long runs of ASCII from the cache
            for ascii_only, pieces in itertools.groupby(CUT.split(text), key=str.isascii):
                piece = "".join(pieces)
                if ascii_only:
                    plan.append(self._encode_words(piece))
                else:
                    plan.append(None)
                    library.append(piece)
            plans.append(plan)
        encoded = iter(self.library(library))
        return [b"".join(next(encoded) if part is None else part for part in plan) for plan in plans]


def library_encoder(tok, dtype: np.dtype) -> Callable[[list[str]], list[bytes]]:
    """The `tokenizers` library's `encode_batch`, each document's ids as the raw bytes of `dtype`."""
    return lambda texts: [np.array(enc.ids, dtype).tobytes() for enc in tok.encode_batch(texts, add_special_tokens=False)]


def encoder(tok, dtype: np.dtype) -> Callable[[list[str]], list[bytes]]:
    """The fastest exact encoder of documents into ids (raw bytes of `dtype`) for `tok`: `WordCache` where it
    applies, else the library."""
    return WordCache(tok, dtype) if applies(tok) else library_encoder(tok, dtype)
