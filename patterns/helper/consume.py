"""Consume: an Inbox receives messages and settles each one - deleted after its work, retried
later, poisoned, or released on Ctrl+C. No outage and no message ends a consumer."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from azure.storage.queue import QueueClient, QueueMessage

from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.support import failures, idle, lease, outage, poison, quirks, signals, tracing
from patterns.helper.support.lines import describe

VISIBILITY_TIMEOUT = 30  # seconds a received message stays hidden from other consumers
MAX_ATTEMPTS = 5  # deliveries before a failing message goes to <queue>-poison
BATCH_SIZE = 1  # messages per receive call (at most 32)
IDLE_MAX = 1.0  # seconds: the longest wait between two polls of an empty queue
RETRY_BACKOFF = 1  # seconds before a failed task comes back, doubled per failure (2, 4, 8...)
RETRY_BACKOFF_MAX = 60  # seconds: the longest wait between two attempts
log = logging.getLogger("patterns")
Backoff = idle.Backoff  # an empty queue is asked again a little later each time (0.1 s, 0.2 s...)


class Inbox:
    """A queue this script consumes, with the consumer flags' options (max_attempts None: no one
    works on them). Leaving the `with` block releases what was received but not settled."""

    def __init__(self, queue: str | QueueClient, *, visibility_timeout: int = VISIBILITY_TIMEOUT,
                 max_attempts: int | None = MAX_ATTEMPTS, batch_size: int = BATCH_SIZE,
                 idle_max: float = IDLE_MAX, retry_backoff: int = RETRY_BACKOFF,
                 retry_backoff_max: int = RETRY_BACKOFF_MAX) -> None:  # fmt: skip
        name = queue if isinstance(queue, str) else queue.queue_name
        self.name = connect.queue_name(name, consumed=True)  # room for its poison queue's name
        self.queue = connect.open_queue(name) if isinstance(queue, str) else queue
        self.visibility_timeout, self.max_attempts = visibility_timeout, max_attempts
        self.batch_size, self.idle = batch_size, idle.Backoff(maximum=idle_max)
        self.retry_backoff, self.retry_backoff_max = retry_backoff, retry_backoff_max
        self.lease = lease.Keeper(self.queue, visibility_timeout)  # in hand; renewed in work
        self.excused = outage.Excused()  # deliveries an outage ended: not counted
        self.quirk = quirks.Undeliverable(name, visibility_timeout)  # Azurite's, not the pattern

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.lease.release_all(self.release)  # what was received but not settled: at once

    def receive(self, stop: signals.Shutdown, most: int | None = None) -> Iterator[QueueMessage]:
        """The messages of one receive call (up to batch_size, and `most`: the free workers). After
        an empty one it waits (0.1 s, doubling up to idle_max); Ctrl+C stops it handing out."""
        if stop.requested:  # e.g. pressed while we waited for a free worker
            return
        messages = self.receive_batch(min(self.batch_size, most or self.batch_size))
        if not messages:
            self.idle.wait(stop)
            return
        self.idle.reset()
        for message in messages:
            if stop.requested:
                return  # the rest are released when the Inbox closes
            yield message

    def receive_batch(self, max_messages: int) -> list[QueueMessage]:
        """One receive call for up to `max_messages` (1-32): [] on an empty queue or an outage.
        A message delivered more than max_attempts times goes to poison here, before any work:
        its consumer may have died on it each time (kill -9), unable to count the attempt."""
        n = self.quirk.most(max_messages)
        try:
            with signals.interruptible(), self.quirk.watch():  # Ctrl+C cuts the wait short
                pages = self.queue.receive_messages(
                    max_messages=n, messages_per_page=n, visibility_timeout=self.visibility_timeout,
                    raw_response_hook=self.quirk.saw,
                ).by_page()  # fmt: skip
                messages = list(next(pages, []))  # only the first page: one request, no more
        except signals.Interrupted:
            return []  # what it took comes back when its visibility timeout ends
        except Exception as error:  # the service away (503 Server Busy too), the queue deleted
            if not (self.excused.failed_receive(error) or outage.deleted(error, self.name)):
                raise
            return []
        outage.queue_service.over()
        self.lease.hold(messages)
        tracing.received(messages, self.name)  # tracing: each message's queue wait ends here
        for message in messages:
            if why := failures.used_up(message, self.max_attempts, self.excused.count(message)):
                self.poison(message, why)
        return [message for message in messages if self.lease.holds(message)]

    @contextmanager
    def settle(self, message: QueueMessage) -> Iterator[None]:
        """The `with` block is the work on `message`, ending with `inbox.delete(message)`. If it
        raises: BadMessage poisons the message at once (no retry could help); the service away
        leaves it to come back, not counted as an attempt; another error retries it later, or
        poisons it once it has used its attempts; Ctrl+C releases it, for another consumer."""
        span, outcome, why = tracing.begin(message, self.name), "done", ""  # receive -> settle
        try:
            with self.lease.kept(message), tracing.active(span):  # renewed while work goes on
                yield
            if self.lease.holds(message):  # the work forgot to settle it: a bug, said, given back
                log.warning(f"the work on {describe(message)} ended without deleting it")
                outcome = "released" if self.release(message) else "outage"
        except signals.Interrupted:  # Ctrl+C: give it back at once, for another consumer
            outcome = "released"
            self.release(message)
        except (BadMessage, RecursionError) as error:  # the same message fails the same way
            outcome, why = "poisoned", str(error) or type(error).__name__
            self.poison(message, why)
        except Exception as error:
            outcome, why = self._failed(message, error)
        except BaseException:  # a second Ctrl+C: give it back, then stop at once
            outcome = "released"
            self.release(message)
            raise
        finally:
            tracing.end(span, outcome, why)

    def _failed(self, message: QueueMessage, error: Exception) -> tuple[str, str]:
        """A failed attempt: leave the message (an outage), retry it later, or poison it."""
        self.lease.let_go(message)
        if outage.queue_service.warn_if_away(error):  # the service's trouble, not the message's
            self.excused.add(message)
            return "outage", outage.in_short(error)
        why = f"{type(error).__name__}: {error}"
        if final := failures.final(message, self.max_attempts, failures.wait(message, self)):
            self.poison(message, f"{final}; last: {why}")  # attempts used, or it would expire
            return "poisoned", f"{final}; last: {why}"
        attempt, retry = (
            f"{message.dequeue_count} of {self.max_attempts}",
            self.retry_later(message),
        )
        log.warning(f"attempt {attempt} failed for {describe(message)}: {why}; {retry}")
        return "retry", why

    def delete(self, message: QueueMessage) -> bool:
        """Delete a message whose work is done; True if it is gone. Never raises: a message
        that could not be deleted is delivered again (at-least-once), and a line says so."""
        self.lease.let_go(message)
        try:
            self.queue.delete_message(message.id, message.pop_receipt)
        except connect.FAILED as error:
            return failures.not_deleted(message, error, self.excused)
        self.excused.forget(message)
        return True

    def retry_later(self, message: QueueMessage) -> str:
        """Make a failed message visible again after 1, 2, 4, 8 s..., not its visibility timeout."""
        self.lease.let_go(message)
        if not self.retry_backoff:
            return f"next attempt in {self.visibility_timeout} s (its visibility timeout)"
        wait = failures.wait(message, self)
        try:
            self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=wait)
        except connect.FAILED as error:
            return failures.not_delayed(error)
        return f"next attempt in {wait} s"

    def release(self, message: QueueMessage) -> bool:
        """Make a message visible again at once (one short try: we stop); False if we could not."""
        self.lease.let_go(message, patience=(seconds := signals.RELEASE_TIMEOUT))
        try:
            self.queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=0, retry_total=0,
                connection_timeout=seconds, read_timeout=seconds,
            )  # fmt: skip
        except connect.FAILED as error:
            return failures.not_released(message, error, self.visibility_timeout)
        log.info(f"released {describe(message)} back to '{self.name}'")
        return True

    def poison(self, message: QueueMessage, reason: str) -> None:
        """Move a message to `<queue>-poison` with the reason, then delete the original: the
        copy is written first, so nothing is lost. Poison records never expire."""
        where = f"{self.name}{connect.POISON_SUFFIX}"
        record = poison.record(self.name, message, reason)  # the reason, the body, ...
        try:
            connect.open_queue(where).send_message(record, time_to_live=connect.NEVER_EXPIRE)
        except (Fatal, *connect.FAILED) as error:
            self.lease.let_go(message)
            return failures.not_poisoned(message, error)  # it comes back
        self.delete(message)
        log.warning(f"moved {describe(message)} to '{where}': {reason}")
