"""One rich console for every command: tables keep their full width when output goes to a file or a pipe; and
quieting a library's log lines where `bench` says the same thing itself."""

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

PIPE_WIDTH = 200


def console() -> Console:
    """Rich's console, as wide as the terminal, or `PIPE_WIDTH` columns when stdout is not one (rich would use 80
    and cut the cells of wide tables)."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)


@contextmanager
def quiet_logs(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise the loggers `names` to `level` for the block, then put their levels back."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(level)
    try:
        yield
    finally:
        for log, old in zip(loggers, levels):
            log.setLevel(old)
