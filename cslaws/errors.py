"""The one error type for input a user got wrong.

Raised anywhere (CLI values, configs, data paths, stores, budgets that the corpus cannot hold), it reaches
`bench` as `bench: error: <message>` and exit code 2, without a traceback: a traceback is kept for bugs.
The message names the value and says what is allowed. It is a ValueError, so that callers (and tests) that
catch bad values keep working when a check is tightened into a BenchError.
"""

from __future__ import annotations

import argparse
import re
from typing import NoReturn


class BenchError(ValueError):
    """Input the suite cannot run with; the message names the value and what is allowed."""


class BenchParser(argparse.ArgumentParser):
    """The parser of `bench`'s argparse commands (and, through `add_subparsers`, of their actions): a bad option
    is one line `bench: error: <command>: <message> (the options: bench <command> --help)`, exit code 2, as
    for every other command of `bench`, not argparse's usage block and its own `bench <command>: error:`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # a value such as -1e15 is a negative number, not an option: Python 3.11's argparse knew only -1 and -.5
        # and said "--flops: expected one argument" (this is the pattern of Python 3.13's argparse)
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("bench ")
        raise BenchError(f"{command}: {' '.join(message.split())} (the options: {self.prog} --help)")
