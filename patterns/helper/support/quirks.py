"""Emulator quirks, not the pattern: Azurite's message that no receive can hand out.

Seen with Azurite 3.37: a message holding a character XML does not allow (a raw \\x00 sent by
another client) is taken by a receive - hidden, dequeue count + 1 - but the answer that would
carry it fails, with every message taken alongside, and no one ever gets its pop receipt.
Azurite then answers 500 with no error code and an empty body; a real service's 500 or 503
always names its error (InternalError, ServerBusy), and is an outage like any other.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("patterns")


class Undeliverable:
    """While the quirk recurs on a queue, receive one message per call, so that the others are
    still served; warned about once. A receive call runs in `watch()`, with `saw` as its
    raw_response_hook, and asks for most() messages."""

    def __init__(self, queue_name: str, visibility_timeout: int) -> None:
        self.queue_name, self.visibility_timeout = queue_name, visibility_timeout
        self.warned = False
        self.until = 0.0  # receive single messages until then (monotonic)
        self.answers: list[Any] = []  # every answer of the receive call under way (retries too)

    def most(self, max_messages: int) -> int:
        """How many messages the next receive may take."""
        return 1 if time.monotonic() < self.until else max_messages

    def saw(self, response: Any) -> None:
        self.answers.append(response.http_response)

    @contextmanager
    def watch(self) -> Iterator[None]:
        """A receive call: afterwards, whether it worked or not, look at its every answer."""
        try:
            yield
        finally:
            self.check()

    def check(self) -> None:
        """Look at every answer of the last receive call (the SDK's retries included)."""
        failed = [answer for answer in self.answers if _cannot_hand_out(answer)]
        self.answers = []
        if not failed:
            return
        self.until = time.monotonic() + 2 * self.visibility_timeout
        if not self.warned:
            self.warned = True
            log.warning(
                f"a receive from '{self.queue_name}' got {failed[0].status_code} "
                f"{failed[0].reason} with no error code from Azurite: the service holds a "
                "message it cannot hand out (one with a character XML forbids, e.g. \\x00). "
                "No one can receive or delete it; it comes back every "
                f"{self.visibility_timeout} s until it expires. Receiving one message at a "
                "time meanwhile, so the others are still served (warned once)"
            )


def _cannot_hand_out(answer: Any) -> bool:
    """Azurite's answer to a receive that took a message it cannot write into XML."""
    return (
        answer.status_code == 500
        and "x-ms-error-code" not in answer.headers
        and answer.headers.get("Server", "").startswith("Azurite")
    )
