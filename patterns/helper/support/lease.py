"""Lease renewal: a message stays hidden while its work outlasts the visibility timeout; and
the messages in hand (received, not yet settled), which a consumer releases when it stops.

Each update_message returns a new pop receipt and voids the old one, so the keeper writes the
live receipt back into the message: whatever settles it next (delete, release, retry) uses it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from azure.storage.queue import QueueClient, QueueMessage

from patterns.helper import connect
from patterns.helper.support import failures, outage, signals
from patterns.helper.support.lines import describe

log = logging.getLogger("patterns")


class Keeper:
    """The messages in hand, and those in work kept invisible: one background thread per Inbox
    extends each one's timeout every half timeout (a thread per message would cost more than a
    small task's whole work). Its requests are made outside the lock, so workers starting or
    ending other messages never wait for them."""

    def __init__(self, queue: QueueClient, timeout: int) -> None:
        self.queue, self.timeout = queue, timeout
        self._held: dict[str, QueueMessage] = {}  # received, not yet settled
        self.interval = max(timeout / 2, 0.5)
        self._due: dict[str, tuple[QueueMessage, float]] = {}  # id -> (message, next renewal)
        self._renewing: set[str] = set()  # ids whose renewal request is under way
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake = 0.0  # when the thread, asleep, wakes up next (monotonic)

    def hold(self, messages: list[QueueMessage]) -> None:
        """Messages just received: in hand until let go."""
        with self._changed:
            self._held.update((message.id, message) for message in messages)

    def holds(self, message: QueueMessage) -> bool:
        with self._changed:
            return message.id in self._held

    def release_all(self, release: Callable[[QueueMessage], bool]) -> None:
        """Release every message in hand (the consumer stops), until the service cannot be
        asked: the rest come back when their visibility timeout ends, as the line says."""
        with self._changed:
            held = list(self._held.values())
        for n, message in enumerate(held, 1):
            if not release(message) and n < len(held):  # the service is away: stop asking
                log.warning(
                    f"{len(held) - n} other message(s) received but not worked on come back "
                    "when their visibility timeout ends"
                )
                return

    def let_go(self, message: QueueMessage, patience: float | None = None) -> None:
        """Settled, or left to come back: stop renewing it (its receipt is final now, see drop)
        and forget it."""
        self.drop(message, patience)
        with self._changed:
            self._held.pop(message.id, None)

    @contextmanager
    def kept(self, message: QueueMessage) -> Iterator[None]:
        """Renew the message while the block runs. Stopping (Ctrl+C), a renewal stuck on a
        frozen service is not waited out: the release that follows says what became of it."""
        self.keep(message)
        patience = None
        try:
            yield
        except (signals.Interrupted, KeyboardInterrupt):
            patience = signals.RELEASE_TIMEOUT
            raise
        finally:
            self.drop(message, patience)

    def keep(self, message: QueueMessage) -> None:
        with self._changed:
            due = time.monotonic() + self.interval
            self._due[message.id] = (message, due)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
            elif due < self._wake:  # it sleeps past this renewal: wake it to plan again
                # (Not for every message: waking the thread per message cost a zero-work
                # consumer ~15% of its CPU.)
                self._changed.notify_all()

    def drop(self, message: QueueMessage, patience: float | None = None) -> None:
        """Stop renewing a message. A renewal under way is waited for (its new pop receipt is
        the live one), for at most `patience` seconds if given."""
        deadline = None if patience is None else time.monotonic() + patience
        with self._changed:
            while message.id in self._renewing:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(left)
            self._due.pop(message.id, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [message for message, at in self._due.values() if at <= now]
                if not due:
                    self._wake = min((at for _, at in self._due.values()), default=now + 60)
                    self._changed.wait(max(self._wake - now, 0.01))
                    continue
            for message in due:
                with self._changed:
                    if self._due.get(message.id, (None, 0))[0] is not message:
                        continue  # dropped meanwhile: settled, or being settled
                    self._renewing.add(message.id)
                kept = True
                try:
                    kept = self._extend(message)
                finally:  # whatever happened, drop() must not wait for this renewal forever
                    with self._changed:
                        self._renewing.discard(message.id)
                        if kept and message.id in self._due:  # (not dropped meanwhile)
                            self._due[message.id] = (message, time.monotonic() + self.interval)
                        else:
                            self._due.pop(message.id, None)
                        self._changed.notify_all()

    def _extend(self, message: QueueMessage) -> bool:
        """Extend one message's visibility timeout; False when it is no longer ours."""
        try:
            receipt = self.queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=self.timeout
            )
            message.pop_receipt = receipt.pop_receipt  # the old receipt is void now
        except connect.FAILED as error:
            if outage.queue_service.warn_if_away(error):
                return True  # try again at the next renewal
            log.warning(
                f"could not extend the visibility timeout of {describe(message)}: "
                f"{outage.in_short(error)}; another consumer may take it"
            )
            return not failures.not_ours(error)
        except Exception as error:  # unforeseen: warn and try again, the keeper must live on
            log.warning(
                f"could not extend the visibility timeout of {describe(message)}: "
                f"{type(error).__name__}: {error}; trying again in {self.interval:g} s"
            )
        return True
