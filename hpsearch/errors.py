"""The exception types the CLI turns into a single clear line and an exit code."""

from __future__ import annotations


class HpsearchError(Exception):
    """A user-facing error: bad input, missing data, a study that does not fit.

    The CLI prints ``str(error)`` on one line and exits with ``exit_code``, without a
    traceback.
    """

    exit_code = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Unavailable(HpsearchError):
    """A service hpsearch needs (the database, the S3 endpoint) cannot be reached: worth
    trying again later, unlike bad input. Exit code 75 (``EX_TEMPFAIL`` of sysexits.h) lets
    a scheduler tell the two apart (deploy/kubernetes fails the Job on 2, retries on 75)."""

    exit_code = 75
