"""SIGTERM and SIGINT as ``Interrupted`` (a ``KeyboardInterrupt``) in the main thread, so a
worker marks its running trials before it stops."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT): stop after marking the running trial."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGINT into ``Interrupted`` in the main thread while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        # One interrupt is enough: a second (Ctrl-C, then the pool's SIGTERM) must not cut
        # short the clean-up that marks the running trial. A no-op handler, not SIG_IGN: a
        # signal already on its way when SIG_IGN is set prints "Signal 15 ignored due to
        # race condition" with a traceback.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _ignore)
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
