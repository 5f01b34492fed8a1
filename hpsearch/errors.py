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


class TrialsFailing(HpsearchError):
    """Trial after trial failed in this worker: a broken region of the search space, or a
    broken machine. Exit code 70 (``EX_SOFTWARE``): a scheduler stops this worker, not the
    study's others (deploy/kubernetes fails the pod's index only)."""

    exit_code = 70


class DeviceMissing(HpsearchError):
    """The device asked for (``--device cuda``) is not on this machine: a node without its
    GPU or driver. Exit code 69 (``EX_UNAVAILABLE``): like ``TrialsFailing``, it stops this
    worker only; the same command works on another node."""

    exit_code = 69


# Each code hpsearch exits with for a known cause (besides 0, 1 for a crash and 130 for
# SIGINT/SIGTERM); docs/cluster.md's table and deploy/kubernetes' podFailurePolicy use them.
EXIT_CODES = {
    error.exit_code: error for error in (HpsearchError, DeviceMissing, TrialsFailing, Unavailable)
}
