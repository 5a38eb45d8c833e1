"""Tests of commands that draw progress bars: a captured stderr that looks like a terminal."""

import sys

from derm import progress as progress_module


def seen_as_terminal(monkeypatch):
    """Make the captured stderr look like a terminal, so bars are drawn; --quiet is undone after the test.

    Called in the test's body: pytest swaps its capture objects between a test's setup and call.
    """
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(progress_module, "_quiet", False)
