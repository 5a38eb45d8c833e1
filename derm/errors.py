"""Errors that describe a user's mistake rather than a bug.

Commands catch DermError in one place (``derm._cli.run_command``) and print its message on
one line (no traceback): the message names the file, key or image and says what is
allowed. A ConfigError exits 2 (usage or config), any other DermError 1 (the data or the
run failed). Anything else is a programming error and keeps its traceback.
"""


class DermError(Exception):
    """A problem the user can fix: bad config, missing data, bad files."""


class ConfigError(DermError):
    """A config or search-space file that does not validate, or a command-line argument that
    names something unusable (a missing folder, a rank that does not exist)."""


class DataError(DermError):
    """A dataset folder or file that cannot be used as given."""
