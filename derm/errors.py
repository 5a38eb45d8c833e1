"""Errors that describe a user's mistake rather than a bug.

Command-line entry points catch DermError and print its message on one line
(no traceback): the message names the file, key or image and says what is
allowed. Anything else is a programming error and keeps its traceback.
"""


class DermError(Exception):
    """A problem the user can fix: bad config, missing data, bad files."""


class ConfigError(DermError):
    """A config or search-space file that does not validate."""


class DataError(DermError):
    """A dataset folder or file that cannot be used as given."""
