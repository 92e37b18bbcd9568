"""One rich console for every command: tables keep their full width when output goes to a file or a pipe."""

import sys

from rich.console import Console

PIPE_WIDTH = 200


def console() -> Console:
    """Rich's console, as wide as the terminal, or `PIPE_WIDTH` columns when stdout is not one (rich would use 80
    and cut the cells of wide tables)."""
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else PIPE_WIDTH)
