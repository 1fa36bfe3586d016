"""Idle backoff: a consumer asks an empty queue again a little later each time (0.1 s, doubling
up to --idle-max), and at once again when work arrives: about one request a second per idle
queue, never a hot loop, and no sleep while work is waiting.
"""

from __future__ import annotations

from patterns.helper.support import signals


class Backoff:
    """Wait `initial` s after the first empty receive, doubling up to `maximum`; reset() after
    a non-empty one, to poll again at once. One thread receives, so it needs no lock."""

    def __init__(self, initial: float = 0.1, maximum: float = 1.0) -> None:
        self.initial, self.maximum, self.delay = initial, maximum, initial

    def reset(self) -> None:
        self.delay = self.initial

    def wait(self, stop: signals.Shutdown) -> None:
        stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.maximum)
