"""Test-wide settings: one torch thread (the CI machine is small and shared), a private cache per session."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tokenizers and tokenized corpora go to a temporary cache, so tests never see a user's cache."""
    os.environ["CSLAWS_CACHE"] = str(tmp_path_factory.mktemp("cslaws-cache"))


@pytest.fixture(autouse=True)
def own_working_directory(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in an empty directory of its own: what `bench` writes by default (runs/ with its
    checkpoints and config.yaml, runs/results.db) never lands in the checkout, nor in another test's way."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Three plays of the built-in corpus as plain text files: real prose, small enough to tokenize in a second."""
    from cslaws.bench.corpora import shakespeare_files

    out = tmp_path_factory.mktemp("corpus")
    paths = []
    for src in shakespeare_files()[:3]:
        dst = out / (os.path.basename(src) + ".txt")
        dst.write_text(open(src, encoding="utf-8").read(), encoding="utf-8")
        paths.append(str(dst))
    return paths
