"""Receiving and settling: an Inbox receives batches; `settle()` deletes a message after its
work, leaves it to come back, moves it to `<queue>-poison` or releases it on Ctrl+C, while a
keeper renews the visibility of long work. No outage and no message ends a consumer.
Workers runs several messages' work at once (--concurrency).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from queue import SimpleQueue
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient, QueueMessage

from patterns.helper import BadMessage, Fatal, cli, codec, connect, tracing

# Stopping, a release is one try of at most this many seconds (no retries): a message we
# could not release comes back anyway when its visibility timeout ends.
RELEASE_TIMEOUT = 2

# Poison records too big for a message keep their reason: the body goes to a blob here, named
# <queue>-poison/<message id>, and the record in <queue>-poison refers to it (body_blob).
POISON_RECORDS_CONTAINER = "poison-records"


@dataclass
class Settled:
    """What settle() did with a message, for work that must follow it (claim-check: delete
    the payload's blob only once its message is gone). `deleted`: the work succeeded and the
    message is deleted, so it will not come back."""

    deleted: bool = False


class Inbox:
    """A queue this script consumes. `visibility_timeout`: seconds a received message stays
    hidden from other consumers (renewed while its work goes on); `max_attempts`: deliveries
    before a failing message goes to `<name>-poison`; `batch_size`: messages per receive call;
    `idle_max`: the longest wait between two polls of an empty queue; `retry_backoff`: seconds
    before a failed task comes back, doubled per failure up to `retry_backoff_max` (0: it
    comes back after its visibility timeout). Defaults: cli.py. `max_attempts=None`: no one
    works on these messages (a tool that moves them), so none is ever poisoned for its count.

    A context manager: messages received but not settled when the script stops (Ctrl+C, an
    error) are released at once instead of waiting out their visibility timeout.

    One thread receives (batch, receive); any thread may settle: the messages in hand, the
    keeper and the poison queue are shared under locks (the outage warning is, in connect.py).
    """

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        visibility_timeout: int = cli.VISIBILITY_TIMEOUT,
        max_attempts: int | None = cli.MAX_ATTEMPTS,
        batch_size: int = cli.BATCH_SIZE,
        idle_max: float = cli.IDLE_MAX,
        retry_backoff: int = cli.RETRY_BACKOFF,
        retry_backoff_max: int = cli.RETRY_BACKOFF_MAX,
    ) -> None:
        connect.queue_name(name, consumed=True)  # its poison queue's name must be valid too
        self.name, self.log = name, log
        self.visibility_timeout, self.max_attempts = visibility_timeout, max_attempts
        self.batch_size, self.idle = batch_size, Backoff(maximum=idle_max)
        self.retry_backoff, self.retry_backoff_max = retry_backoff, retry_backoff_max
        self.queue = connect.open_queue(name, log)
        self._keeper = _VisibilityKeeper(self.queue, visibility_timeout, log)
        self._poison: QueueClient | None = None
        self._held: dict[str, QueueMessage] = {}  # received, not yet settled
        self._outage_ended: dict[str, int] = {}  # id -> its deliveries an outage ended, here
        self._lock = threading.Lock()  # for _held: workers settle at the same time
        self._poison_lock = threading.Lock()  # two workers poisoning at once: one creates it
        self._undeliverable = _Undeliverable(name, visibility_timeout, log)  # Azurite only

    def __enter__(self) -> Inbox:
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            held = list(self._held.values())
        for n, message in enumerate(held, 1):
            if not self.release(message) and n < len(held):  # the service is away: stop asking
                self.log.warning(
                    f"{len(held) - n} other message(s) received but not worked on come back "
                    "when their visibility timeout ends"
                )
                return

    def batch(self, stop: cli.Shutdown, most: int | None = None) -> Iterator[QueueMessage]:
        """The messages of one receive call (up to batch_size, and up to `most`: the workers
        free to take them), one by one. After an empty receive it backs off (0.1 s, doubling
        up to idle_max) before returning; after a non-empty one the next call polls at once.
        Ctrl+C stops it handing out messages."""
        if stop.requested:  # e.g. pressed while we waited for a free worker
            return
        messages = self.receive(self.batch_size if most is None else min(self.batch_size, most))
        if not messages:
            self.idle.wait(stop)
            return
        self.idle.reset()
        for message in messages:
            if stop.requested:
                return
            yield message

    def receive(self, max_messages: int = 1) -> list[QueueMessage]:
        """One receive call for up to `max_messages` (1-32): the messages to work on. [] on an
        empty queue or an outage. A message already delivered more than max_attempts times is
        moved to poison here, before any work: its consumer may have died on it each time
        (out of memory, a crash, kill -9), and a dead process cannot count a failed attempt."""
        answers: list[Any] = []  # every answer within this call, the SDK's retries included
        max_messages = self._undeliverable.most(max_messages)
        try:
            pages = self.queue.receive_messages(
                messages_per_page=max_messages,
                max_messages=max_messages,
                visibility_timeout=self.visibility_timeout,
                raw_response_hook=lambda response: answers.append(response.http_response),
            ).by_page()
            with cli.interruptible():  # Ctrl+C: stop now, even if the service does not answer
                messages = list(next(pages, []))  # only the first page: one request, no more
        except cli.Interrupted:
            return []
        except ResourceNotFoundError:  # someone deleted the queue under us: make it again
            self.log.warning(f"queue '{self.name}' was deleted; creating it again")
            try:
                connect.open_queue(self.name)
            except Exception as error:
                if not connect.outage.noticed(self.log, error):
                    raise
            return []
        except Exception as error:
            self._undeliverable.check(answers)
            if not connect.outage.noticed(self.log, error):  # 503 Server Busy: an outage too
                raise
            return []
        connect.outage.over(self.log)
        self._undeliverable.check(answers)
        with self._lock:
            self._held.update((message.id, message) for message in messages)
        tracing.received(messages, self.name)  # tracing: each message's queue wait ends here
        return [message for message in messages if not self._used_up(message)]

    def _used_up(self, message: QueueMessage) -> bool:
        """Poison a message delivered more than max_attempts times; True if it was. Deliveries
        that an outage ended in this process are not counted: not the message's doing."""
        with self._lock:
            excused = self._outage_ended.get(message.id, 0)
        if self.max_attempts is None or message.dequeue_count - excused <= self.max_attempts:
            return False
        besides = f" (besides {excused} an outage ended)" if excused else ""
        self.poison(
            message,
            f"delivered {message.dequeue_count - excused} times{besides}, more than "
            f"--max-attempts {self.max_attempts}; its consumer may have died on it each time",
        )
        return True

    def _ended_by_outage(self, message: QueueMessage) -> None:
        """Remember a delivery the service's outage ended: it comes back, uncounted (above)."""
        with self._lock:
            self._outage_ended[message.id] = self._outage_ended.get(message.id, 0) + 1
            if len(self._outage_ended) > 10_000:  # ids of messages gone elsewhere: the oldest go
                del self._outage_ended[next(iter(self._outage_ended))]

    @contextmanager
    def settle(self, message: QueueMessage) -> Iterator[Settled]:
        """Run the `with` block as the work for `message`, then settle it:

        - success: delete it;
        - BadMessage: move it to the poison queue at once (retrying cannot help);
        - the service away or failing (e.g. during a forward): leave it to come back after its
          visibility timeout; this does not count as a failed attempt;
        - any other error: make it come back after a backoff (retry_backoff s, doubled per
          failure), or move it to the poison queue once it has been delivered `max_attempts`
          times, or when it would expire before it comes back;
        - Ctrl+C (cli.Interrupted): release it so another consumer can take it at once.

        While the block runs, the message's visibility timeout is extended again and again,
        so that long work is not handed to a second consumer. `with inbox.settle(m) as s:`
        gives a Settled whose `deleted` says, after the block, whether the message is gone.
        """
        self._keeper.keep(message)
        span = tracing.begin(message, self.name)  # tracing: receive -> work -> settle
        settled, stopping = Settled(), False
        try:
            try:
                with tracing.active(span):
                    yield settled
            except (cli.Interrupted, KeyboardInterrupt):
                stopping = True
                raise
            finally:
                # From here on, message.pop_receipt is final. Stopping, a renewal stuck on a
                # frozen service is not waited out: the release says what became of it.
                self._keeper.drop(message, patience=RELEASE_TIMEOUT if stopping else None)
        except cli.Interrupted:
            self.release(message)
            tracing.end(span, "released")
        except (BadMessage, RecursionError) as error:  # the same message fails the same way
            self.poison(message, str(error) or type(error).__name__)
            tracing.end(span, "poisoned", str(error) or type(error).__name__)
        except Exception as error:
            self._let_go(message)
            if connect.outage.noticed(self.log, error):  # the service's trouble, not the message
                self._ended_by_outage(message)
                tracing.end(span, "outage", connect.in_short(error))
                return
            reason = f"{type(error).__name__}: {error}"
            attempt = f"attempt {message.dequeue_count} of {self.max_attempts}"
            wait, expires = self.retry_wait(message), message.expires_on
            if self.max_attempts and message.dequeue_count >= self.max_attempts:
                reason = f"failed {message.dequeue_count} times; last: {reason}"
            elif expires and datetime.now(timezone.utc) + timedelta(seconds=wait) >= expires:
                # Retried then, it would expire first: gone, and no one would know it failed.
                reason = (
                    f"{attempt} failed, and the next (in {wait} s) would come after the message "
                    f"expires at {expires:%Y-%m-%d %H:%M:%S} UTC; last: {reason}"
                )
            else:
                self.log.warning(
                    f"{attempt} failed for {codec.describe(message)}: {reason}; "
                    f"{self.retry_later(message)}"
                )
                tracing.end(span, "retry", reason)
                return
            self.poison(message, reason)
            tracing.end(span, "poisoned", reason)
        except BaseException:  # a second Ctrl+C: give the message back, then stop
            self.release(message)
            tracing.end(span, "released")
            raise
        else:
            settled.deleted = self.delete(message)
            tracing.end(span, "done")

    def _let_go(self, message: QueueMessage) -> None:
        """Forget a message: settled, or left to come back on its own."""
        with self._lock:
            self._held.pop(message.id, None)

    def _gone(self, message: QueueMessage) -> None:
        """A message deleted (done or poisoned): nothing more to remember about it."""
        with self._lock:
            self._outage_ended.pop(message.id, None)

    def delete(self, message: QueueMessage) -> bool:
        """Delete a message whose work is done; True if it is gone. Never raises: a message
        that could not be deleted is delivered again (at-least-once), and the line says so."""
        self._let_go(message)
        try:
            self.queue.delete_message(message.id, message.pop_receipt)
        except (HttpResponseError, *connect.UNREACHABLE) as error:
            if _not_ours(error):
                self.log.warning(
                    f"{codec.describe(message)} was no longer ours to delete (its visibility "
                    "timeout ran out); another consumer may process it again"
                )
                return False
            if connect.outage.noticed(self.log, error):
                self._ended_by_outage(message)
            self.log.warning(
                f"could not delete {codec.describe(message)}: {connect.in_short(error)}; "
                "it will be delivered again"
            )
            return False
        self._gone(message)
        return True

    def retry_wait(self, message: QueueMessage) -> int:
        """Seconds until a failed message comes back: an exponential backoff (1, 2, 4, 8 s...
        up to retry_backoff_max), or with retry_backoff 0 its visibility timeout."""
        if not self.retry_backoff:
            return self.visibility_timeout
        doublings = min(message.dequeue_count - 1, 32)  # a huge count must not overflow
        return min(self.retry_backoff * 2**doublings, self.retry_backoff_max)

    def retry_later(self, message: QueueMessage) -> str:
        """Make a failed message visible again after retry_wait() rather than its whole
        visibility timeout; says when."""
        if not self.retry_backoff:
            return f"next attempt in {self.visibility_timeout} s (its visibility timeout)"
        wait = self.retry_wait(message)
        try:
            self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=wait)
        except (HttpResponseError, *connect.UNREACHABLE) as error:
            if _not_ours(error):
                return "it was no longer ours; it comes back on its own"
            connect.outage.noticed(self.log, error)
            return f"next attempt after its visibility timeout ({connect.in_short(error)})"
        return f"next attempt in {wait} s"

    def release(self, message: QueueMessage) -> bool:
        """Make a message visible again at once (instead of after its visibility timeout): one
        short try, as we are stopping. False if the service could not be asked."""
        self._let_go(message)
        try:
            self.queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=0, retry_total=0,
                connection_timeout=RELEASE_TIMEOUT, read_timeout=RELEASE_TIMEOUT,
            )  # fmt: skip
        except (HttpResponseError, *connect.UNREACHABLE) as error:
            if _not_ours(error):
                self.log.info(f"{codec.describe(message)} was no longer ours to release")
                return True
            self.log.warning(
                f"could not release {codec.describe(message)}: {connect.in_short(error)}; it "
                f"comes back within {self.visibility_timeout} s, when its visibility timeout ends"
            )
            return False
        self.log.info(f"released {codec.describe(message)} back to '{self.name}'")
        return True

    def poison(self, message: QueueMessage, reason: str) -> None:
        """Move a message to `<queue>-poison` with the reason, then delete the original: the
        copy is written first, so nothing is lost. Poison records never expire."""
        record = {
            "reason": reason,
            "source_queue": self.name,
            "dequeue_count": message.dequeue_count,
            "poisoned_at": datetime.now(timezone.utc).isoformat(),
            "message_id": message.id,
            "body": message.content,
        }
        try:
            text = codec.encode(record)
        except codec.Unsendable:  # the record would not fit: its body goes to a blob
            text = self._record_with_body_in_blob(record, message)
        try:
            with self._poison_lock:
                if self._poison is None:
                    self._poison = connect.open_queue(self.name + connect.POISON_SUFFIX, self.log)
            self._poison.send_message(text, time_to_live=connect.NEVER_EXPIRE)
        except (Fatal, HttpResponseError, *connect.UNREACHABLE) as error:
            self._let_go(message)
            connect.outage.noticed(self.log, error)
            self.log.warning(
                f"could not move {codec.describe(message)} to poison: "
                f"{connect.in_short(error)}; it will come back"
            )
            return
        self.delete(message)
        where = f"{self.name}{connect.POISON_SUFFIX}"
        self.log.warning(f"moved {codec.describe(message)} to '{where}': {reason}")

    def _record_with_body_in_blob(self, record: dict[str, Any], message: QueueMessage) -> str:
        """A poison record whose body is in a blob (claim-check), so the reason stays with it.
        If the blob service cannot take it, the bare body (nothing lost; the reason is logged)."""
        name = f"{self.name}{connect.POISON_SUFFIX}/{message.id}"
        body = message.content or ""
        try:
            container = connect.blob_container(POISON_RECORDS_CONTAINER, self.log)
            container.upload_blob(name, body.encode("utf-8"), overwrite=True)
        except (Fatal, HttpResponseError, *connect.UNREACHABLE) as error:
            self.log.warning(
                f"could not store the body of {codec.describe(message)} in a blob "
                f"({connect.in_short(error)}); its poison copy is the bare body"
            )
            return body
        del record["body"]
        record["body_blob"] = {"container": POISON_RECORDS_CONTAINER, "blob": name}
        return codec.encode(record)


class _Undeliverable:
    """Azurite only (seen with 3.37), not the pattern: a message holding a character XML does
    not allow (a raw \\x00 sent by another client) is taken by a receive - hidden, dequeue
    count + 1 - but the answer that would carry it fails, with every message taken alongside,
    and no one ever gets its pop receipt. Azurite then answers 500 with no error code and an
    empty body; a real service's 500 or 503 always names its error (InternalError,
    ServerBusy), and is an outage like any other. While this recurs, take one message per
    call, so that the others are still served."""

    def __init__(self, queue_name: str, visibility_timeout: int, log: logging.Logger) -> None:
        self.queue_name, self.visibility_timeout, self.log = queue_name, visibility_timeout, log
        self.warned = False
        self.until = 0.0  # receive single messages until then (monotonic)

    def most(self, max_messages: int) -> int:
        """How many messages the next receive may take."""
        return 1 if time.monotonic() < self.until else max_messages

    def check(self, answers: list[Any]) -> None:
        """Look at every answer of one receive call (the SDK's retries included)."""
        failed = [answer for answer in answers if _cannot_hand_out(answer)]
        if not failed:
            return
        self.until = time.monotonic() + 2 * self.visibility_timeout
        if not self.warned:
            self.warned = True
            self.log.warning(
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


def _not_ours(error: BaseException) -> bool:
    """The message is no longer ours: gone, or received again by someone else (new receipt)."""
    return isinstance(error, ResourceNotFoundError) or (
        isinstance(error, HttpResponseError) and error.error_code == "PopReceiptMismatch"
    )


class _VisibilityKeeper:
    """Keeps the messages in hand invisible while work on them outlasts the visibility timeout:
    one background thread per Inbox extends each message's timeout every half timeout (a
    thread per message would cost more than a small task's whole work). Its requests are made
    outside the lock, so workers starting or ending other messages never wait for them."""

    def __init__(self, queue: QueueClient, timeout: int, log: logging.Logger) -> None:
        self.queue, self.timeout, self.log = queue, timeout, log
        self.interval = max(timeout / 2, 0.5)
        self._due: dict[str, tuple[QueueMessage, float]] = {}  # id -> (message, next renewal)
        self._renewing: set[str] = set()  # ids whose renewal request is under way
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._wake = 0.0  # when the thread, asleep, wakes up next (monotonic)

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
        except (HttpResponseError, *connect.UNREACHABLE) as error:
            if connect.outage.noticed(self.log, error):
                return True  # try again at the next renewal
            self.log.warning(
                f"could not extend the visibility timeout of {codec.describe(message)}: "
                f"{connect.in_short(error)}; another consumer may take it"
            )
            return not _not_ours(error)
        except Exception as error:  # unforeseen: warn and try again, the keeper must live on
            self.log.warning(
                f"could not extend the visibility timeout of {codec.describe(message)}: "
                f"{type(error).__name__}: {error}; trying again in {self.interval:g} s"
            )
        return True


class Backoff:
    """Idle polling: wait `initial` s after the first empty receive, doubling up to `maximum`.
    After a non-empty receive, call reset() and poll again at once. Used by the one thread
    that receives, so it needs no lock."""

    def __init__(self, initial: float = 0.1, maximum: float = cli.IDLE_MAX) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = initial

    def reset(self) -> None:
        self.delay = self.initial

    def wait(self, shutdown: cli.Shutdown) -> None:
        shutdown.wait(self.delay)
        self.delay = min(self.delay * 2, self.maximum)


class Workers:
    """Up to `n` messages' work at once, each on one of `n` threads (I/O-bound work: waiting on
    the network, or our simulated work; CPU-bound work needs processes, see the README).

    free() waits, without polling, until a worker is free and says how many are, so that the
    loop receives no message that would wait unworked while its visibility timeout runs out.
    With n = 1 there is no thread: submit() does the work in the caller's thread, as a plain
    loop would, and free() sets no limit (a --batch-size batch is worked through in turn).

    A context manager: leaving waits for the work in progress (Ctrl+C interrupts it, and each
    worker releases its message); after an error or a second Ctrl+C it does not wait.
    """

    def __init__(self, n: int) -> None:
        self.n, self._busy = n, 0
        self._changed = threading.Condition()
        self._error: BaseException | None = None  # a worker's unexpected error, for the loop
        self._tasks: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None]
        self._tasks = SimpleQueue()
        # Daemon threads: a second Ctrl+C ends the process even if some work ignores the first.
        # With n = 1, none: the caller's thread does the work.
        workers = range(n) if n > 1 else range(0)
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in workers]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for _ in self._threads:
            self._tasks.put(None)  # each worker ends after its current task
        if kind is None:
            for thread in self._threads:
                thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def free(self) -> int | None:
        """How many workers are free, waiting until one is (None: n = 1, no limit)."""
        if self.n == 1:
            return None
        with self._changed:
            while self._busy == self.n and self._error is None:
                self._changed.wait()  # a finishing worker wakes us; Ctrl+C still gets through
            if self._error is not None:
                raise self._error
            return self.n - self._busy

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        """Start work(*args) on a free worker (call free() first)."""
        if self.n == 1:
            work(*args)
            return
        with self._changed:
            self._busy += 1
        self._tasks.put((work, args))

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            work, args = task
            try:
                work(*args)
            except BaseException as error:  # settle() handles the expected ones: a bug
                with self._changed:
                    self._error = self._error or error
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify()
