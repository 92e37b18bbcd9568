"""The one error type for input a user got wrong.

Raised anywhere (CLI values, configs, data paths, stores, budgets that the corpus cannot hold), it reaches
`bench` as `bench: error: <message>` and exit code 2, without a traceback: a traceback is kept for bugs.
The message names the value and says what is allowed. It is a ValueError, so that callers (and tests) that
catch bad values keep working when a check is tightened into a BenchError.
"""


class BenchError(ValueError):
    """Input the suite cannot run with; the message names the value and what is allowed."""
