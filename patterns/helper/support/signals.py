"""Ctrl+C and SIGTERM: the first asks the script to stop, a second Ctrl+C insists; a receive
under way and work that sleeps are cut short, so that a frozen service cannot hold a stop up.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Stopping, a release is one try of at most this many seconds (no retries): a message we
# could not release comes back anyway when its visibility timeout ends.
RELEASE_TIMEOUT = 2


class Interrupted(Exception):
    """Raised by `Shutdown.sleep()` when Ctrl+C arrives in the middle of work."""


class Shutdown:
    """Ctrl+C / SIGTERM: the first asks the script to stop taking messages and to release the
    one in hand (and cuts short a receive under way: see interruptible()); a second Ctrl+C
    stops at once. SIGTERM only ever asks: a process may be sent it more than once for one
    stop (Linux sends a parent-death signal once per thread of the dying parent)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._event.set()
        if _cut_short:
            raise Interrupted

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop was requested meanwhile."""
        return self._event.wait(seconds)

    def sleep(self, seconds: float) -> None:
        """Sleep as part of the work: Ctrl+C interrupts it (raises Interrupted)."""
        if self._event.wait(seconds):
            raise Interrupted


_cut_short = False  # the main thread is in an interruptible() block


@contextmanager
def interruptible() -> Iterator[None]:
    """The first Ctrl+C cuts the block short (Interrupted), in the main thread: for a request
    that loses nothing if never answered, a receive (whatever it took comes back when its
    visibility timeout ends)."""
    global _cut_short
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only: nothing to cut short here
        return
    _cut_short = True
    try:
        yield
    finally:
        _cut_short = False
