"""The one error boundary of every ``python -m derm.<command>``.

A command is argument parsing over one library call; ``run_command`` runs that call and
turns a user's mistake (``DermError``) into one ``error: ...`` line on stderr, no
traceback, with the exit status saying which kind it was:

- 2: a usage or config mistake (``ConfigError``: a bad option, key, value or path to
  something that is not what the command needs), as argparse exits for its own;
- 1: the data or the run failed (``DataError`` and every other ``DermError``: unreadable
  files, a NaN loss, a sweep in which no trial trained).

Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from derm.errors import ConfigError, DermError

USAGE_ERROR = 2
RUN_FAILURE = 1


def exit_status(error: DermError) -> int:
    return USAGE_ERROR if isinstance(error, ConfigError) else RUN_FAILURE


def run_command(call: Callable[[], int | None]) -> int:
    """``call()``'s exit status (None: 0), or the status and one line for a DermError it raises."""
    try:
        return call() or 0
    except DermError as error:
        # One line even when a library's message inside it runs over several (torch's unpickling errors do).
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        return exit_status(error)
