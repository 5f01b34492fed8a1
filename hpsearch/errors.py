"""The one exception type the CLI turns into a single clear line."""

from __future__ import annotations


class HpsearchError(Exception):
    """A user-facing error: bad input, missing data, unreachable storage.

    The CLI prints ``str(error)`` on one line and exits non-zero, without a traceback.
    """
