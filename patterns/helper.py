"""The one shared helper: everything every script needs that is *not* the pattern itself.

Settings and clients, sending JSON, receiving a batch, settling a message (delete, retry later,
poison, release), lease renewal, idle backoff, Ctrl+C handling and one log format. Each
pattern script keeps its own loop in plain sight and calls these pieces.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from xml.sax.saxutils import escape as xml_escape

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage, QueueServiceClient
from dotenv import dotenv_values, find_dotenv

CONNECTION_STRING_VAR = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_VAR = "AZURE_STORAGE_ACCOUNT_URL"  # Entra ID sign-in (optional extra `entra`)
AZURITE_PORT = 10001
# Azurite's well-known development account: public, documented, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
MAX_MESSAGE_BYTES = 64 * 1024  # the service's limit for one message request
XML_ENVELOPE_BYTES = 100  # <QueueMessage><MessageText>...</MessageText></QueueMessage> and header
MAX_BATCH = 32  # the service returns at most 32 messages per receive
QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
POISON_SUFFIX = "-poison"
MAX_CONSUMED_NAME = 63 - len(POISON_SUFFIX)  # a consumed queue's poison queue must fit in 63
QUEUE_BEING_DELETED_WAITS = 12  # x 5 s: a deleted queue's name is reusable after 30 s or more

T = TypeVar("T")
R = TypeVar("R")

# Transport problems: the service did not answer (down, unreachable, connection dropped).
UNREACHABLE = (ServiceRequestError, ServiceResponseError)


class Fatal(Exception):
    """An expected failure: `run()` prints it as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadMessage(Exception):
    """A message that can never be processed (not JSON, wrong shape): it goes to poison."""


class Interrupted(Exception):
    """Raised by `Shutdown.sleep()` when Ctrl+C arrives in the middle of work."""


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    connection_string: str  # "" when signing in with Entra ID (account_url)
    source: str  # "environment", the .env path, or "default" (local Azurite)
    account_url: str = ""  # https://<account>.queue.core.windows.net, with DefaultAzureCredential


def azurite_connection_string(port: int = AZURITE_PORT, host: str = "127.0.0.1") -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT};"
    )


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None
) -> Settings:
    """The real environment wins, then `.env` (searched from the current directory up),
    then the local Azurite on 127.0.0.1:10001. In each place a connection string wins over
    AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in)."""
    places: list[tuple[str, Mapping[str, str | None]]] = [
        ("environment", os.environ if environ is None else environ)
    ]
    path = str(dotenv_file) if dotenv_file is not None else find_dotenv(usecwd=True)
    if path and Path(path).is_file():
        places.append((path, dotenv_values(path)))
    for source, values in places:
        value = (values.get(CONNECTION_STRING_VAR) or "").strip()
        if value:
            return Settings(value, source)
        url = (values.get(ACCOUNT_URL_VAR) or "").strip()
        if url:
            return Settings("", source, account_url=url)
    return Settings(azurite_connection_string(), "default")


def redact(connection_string: str) -> str:
    """Hide account keys and SAS signatures so a connection string is safe to print."""
    return re.sub(
        r"(?i)(AccountKey|SharedAccessSignature|sig)=([^;&]+)", r"\1=***", connection_string
    )


def queue_name(text: str, *, consumed: bool = False) -> str:
    """Validate a queue name: 3-63 chars, a-z 0-9, single hyphens (Fatal if not).

    A queue that is `consumed` needs room for its poison queue, `<name>-poison`: at most 56
    characters. Producers check their queues by this rule too, so that nothing is sent to a
    queue no consumer would accept."""
    if not (3 <= len(text) <= 63 and QUEUE_NAME.match(text)):
        raise Fatal(
            f"invalid queue name {text!r}: use 3-63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit"
        )
    if consumed and len(text) > MAX_CONSUMED_NAME:
        raise Fatal(
            f"queue name {text!r} is {len(text)} characters: a queue that is consumed may have "
            f"at most {MAX_CONSUMED_NAME}, so that its poison queue "
            f"'<name>{POISON_SUFFIX}' fits in 63"
        )
    return text


# --- logging ------------------------------------------------------------------------------


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            head, _, tail = text.partition("] ")
            return f"{head}] {record.levelname.lower()}: {tail}"
        return text


def logger(role: str) -> logging.Logger:
    """One log format for every script: `HH:MM:SS.mmm role[pid] text`, flushed per line."""
    log = logging.getLogger(f"patterns.{role}")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stdout)  # StreamHandler flushes after every line
        handler.setFormatter(
            _LineFormatter(f"%(asctime)s.%(msecs)03d {role}[%(process)d] %(message)s", "%H:%M:%S")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


# --- clients ------------------------------------------------------------------------------

_service: QueueServiceClient | None = None


def service(log: logging.Logger | None = None) -> QueueServiceClient:
    """The queue service client for this process (created once).

    The retry policy gives up after ~2 s (not the SDK default's minute) so that a learner
    whose emulator is not running hears about it at once."""
    global _service
    if _service is None:
        settings = load_settings()
        if settings.source == "default" and log is not None:
            log.info(
                f"{CONNECTION_STRING_VAR} is not set: using the local Azurite at "
                f"127.0.0.1:{AZURITE_PORT}"
            )
        options: dict[str, Any] = {
            "retry_policy": LinearRetry(backoff=0.5, random_jitter_range=0.2, retry_total=3),
            "connection_timeout": 3,
            "read_timeout": 30,
        }
        if settings.account_url:
            _service = entra_client(settings.account_url, log, **options)
            return _service
        try:
            _service = QueueServiceClient.from_connection_string(
                settings.connection_string, **options
            )
        except ValueError as error:
            raise Fatal(
                f"{CONNECTION_STRING_VAR} is not a valid connection string "
                f"({redact(settings.connection_string)}): {error}"
            ) from error
    return _service


def entra_client(
    account_url: str, log: logging.Logger | None = None, **options: Any
) -> QueueServiceClient:
    """A client that signs in with Microsoft Entra ID (DefaultAzureCredential: `az login`,
    environment variables, managed identity...) instead of an account key."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise Fatal(
            f"{ACCOUNT_URL_VAR} is set (Entra ID sign-in) but azure-identity is not installed: "
            f"run `pip install -e '.[entra]'`, or set {CONNECTION_STRING_VAR} instead"
        ) from None
    if not re.match(r"^https://[^/?#\s]+/?$", account_url):
        raise Fatal(
            f"{ACCOUNT_URL_VAR} must look like https://<account>.queue.core.windows.net "
            f"(got {redact(account_url)!r})"
        )
    logging.getLogger("azure.identity").setLevel(logging.ERROR)  # no multi-line token chatter
    if log is not None:
        log.info(f"signing in to {account_url} with Microsoft Entra ID")
    return QueueServiceClient(account_url, credential=DefaultAzureCredential(), **options)


def open_queue(name: str, log: logging.Logger | None = None) -> QueueClient:
    """A client for queue `name`, creating the queue if it does not exist yet (idempotent),
    so scripts can be started in any order."""
    queue = service(log).get_queue_client(queue_name(name))
    for _ in range(QUEUE_BEING_DELETED_WAITS):
        try:
            queue.create_queue()
            if log is not None:
                log.info(f"created queue '{name}'")
        except ResourceExistsError as error:
            if error.error_code != "QueueBeingDeleted":
                return queue  # already there: exactly what we wanted
            # Azure keeps a deleted queue's name for 30 s or more before it can be reused.
            if log is not None:
                log.info(f"queue '{name}' is still being deleted by the service; waiting")
            time.sleep(5)
            continue
        return queue
    raise Fatal(f"queue '{name}' is still being deleted; try again in a minute")


def unreachable_message() -> str:
    endpoint = service().url
    return (
        f"cannot reach the queue service at {endpoint} - is the emulator running? "
        "Start it with `make emulator` (or set AZURE_STORAGE_CONNECTION_STRING)"
    )


# --- sending ------------------------------------------------------------------------------


def size_as_sent(text: str) -> int:
    """Bytes a message takes in the request: XML-escaped UTF-8 plus the XML envelope."""
    return len(xml_escape(text).encode("utf-8")) + XML_ENVELOPE_BYTES


def encode(body: Mapping[str, Any]) -> str:
    """JSON text for a message, refusing what the service would refuse (> 64 KiB)."""
    text = json.dumps(body, ensure_ascii=False)
    if size_as_sent(text) > MAX_MESSAGE_BYTES:
        raise Fatal(
            f"message is {size_as_sent(text)} bytes as sent; a queue message can hold at most "
            "64 KiB: store big payloads elsewhere (e.g. a blob) and send a reference"
        )
    return text


def send_json(
    queue: QueueClient, body: Mapping[str, Any], time_to_live: int | None = None
) -> QueueMessage:
    """Send one JSON message. `time_to_live` (seconds) makes it expire if nobody takes it."""
    return queue.send_message(encode(body), time_to_live=time_to_live)


def concurrently(work: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """work(item) for every item, `concurrency` at a time; the results in the items' order.

    Unlike ThreadPoolExecutor.map, it takes the next item only when there is room, so
    `--count 10000000` never builds ten million tasks in memory. Stopped early (an error,
    Ctrl+C), it sends nothing more: only the few already started finish."""
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            for item in items:
                window.append(pool.submit(work, item))
                if len(window) >= 2 * concurrency:  # a few queued: no thread waits for us
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()


def parse_json(message: QueueMessage) -> dict[str, Any]:
    """The message body as a JSON object, or BadMessage (which sends it to poison)."""
    text = message.content or ""
    if not text.strip():
        raise BadMessage("empty message")
    try:
        body = json.loads(text)
    except json.JSONDecodeError as error:
        raise BadMessage(f"not JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadMessage(f"expected a JSON object, got {type(body).__name__}")
    return body


# --- receiving and settling ---------------------------------------------------------------


class Inbox:
    """A queue this script consumes: receive batches, then settle each message.

    Used as a context manager so that messages received but not yet settled when the script
    stops (Ctrl+C, error) are released at once instead of waiting out their visibility timeout.
    """

    def __init__(
        self,
        name: str,
        log: logging.Logger,
        *,
        visibility_timeout: int = 30,
        max_attempts: int = 5,
        batch_size: int = 1,
        idle_max: float = 1.0,
    ) -> None:
        queue_name(name, consumed=True)  # its poison queue's name must be valid too
        self.name = name
        self.log = log
        self.visibility_timeout = visibility_timeout
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.idle = Backoff(maximum=idle_max)
        self.queue = open_queue(name, log)
        self._keeper = _VisibilityKeeper(self.queue, visibility_timeout, log)
        self._poison: QueueClient | None = None
        self._held: dict[str, QueueMessage] = {}
        self._outage = False

    @classmethod
    def from_args(cls, name: str, log: logging.Logger, args: Any) -> Inbox:
        """An Inbox with the options that add_consumer_arguments() put on the command line."""
        return cls(
            name,
            log,
            visibility_timeout=args.visibility_timeout,
            max_attempts=args.max_attempts,
            batch_size=args.batch_size,
            idle_max=args.idle_max,
        )

    def __enter__(self) -> Inbox:
        return self

    def batch(self, stop: Shutdown) -> Iterator[QueueMessage]:
        """The messages of one receive call (up to batch_size), one by one.

        Never a hot loop, never a needless wait: after an empty receive it backs off (0.1 s,
        doubling up to idle_max) before returning, so the caller's next call comes later;
        after a non-empty one the next call polls again at once. It stops handing out
        messages when Ctrl+C is pressed; the rest of the batch is released on leaving the
        Inbox."""
        messages = self.receive(self.batch_size)
        if not messages:
            self.idle.wait(stop)
            return
        self.idle.reset()
        for message in messages:
            if stop.requested:
                return
            yield message

    def __exit__(self, *exc: object) -> None:
        for message in list(self._held.values()):
            self.release(message)

    def receive(self, max_messages: int = 1) -> list[QueueMessage]:
        """One receive call for up to `max_messages` (1-32). [] on empty queue or outage."""
        try:
            pages = self.queue.receive_messages(
                messages_per_page=max_messages,
                max_messages=max_messages,
                visibility_timeout=self.visibility_timeout,
            ).by_page()
            messages = list(next(pages, []))  # only the first page: one request, no more
        except UNREACHABLE:
            self._warn_outage()
            return []
        except ResourceNotFoundError:  # someone deleted the queue under us: make it again
            self.log.warning(f"queue '{self.name}' was deleted; creating it again")
            open_queue(self.name)
            return []
        except HttpResponseError as error:
            if error.status_code is None or error.status_code < 500:
                raise
            self._warn_outage()
            return []
        if self._outage:
            self._outage = False
            self.log.info("the queue service answers again; carrying on")
        for message in messages:
            self._held[message.id] = message
        return messages

    def _warn_outage(self) -> None:
        if not self._outage:
            self._outage = True
            self.log.warning(f"{unreachable_message()}; retrying with backoff")

    @contextmanager
    def settle(self, message: QueueMessage) -> Iterator[None]:
        """Run the `with` block as the work for `message`, then settle it:

        - success: delete it;
        - BadMessage: move it to the poison queue at once (retrying cannot help);
        - any other error: leave it to reappear after its visibility timeout, or move it to
          the poison queue once it has been delivered `max_attempts` times;
        - Ctrl+C (Interrupted): release it so another consumer can take it at once.

        While the block runs, the message's visibility timeout is extended again and again,
        so that long work is not handed to a second consumer.
        """
        self._keeper.keep(message)
        try:
            try:
                yield
            finally:
                self._keeper.drop(message)  # from here on, message.pop_receipt is final
        except Interrupted:
            self.release(message)
            return
        except BadMessage as error:
            self.poison(message, str(error))
            return
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
            if message.dequeue_count >= self.max_attempts:
                self.poison(message, f"failed {message.dequeue_count} times; last: {reason}")
            else:
                self._held.pop(message.id, None)
                self.log.warning(
                    f"attempt {message.dequeue_count} of {self.max_attempts} failed ({reason}); "
                    f"it will be retried after its visibility timeout"
                )
            return
        except BaseException:  # a second Ctrl+C: give the message back, then stop
            self.release(message)
            raise
        self.delete(message)

    def delete(self, message: QueueMessage) -> None:
        self._held.pop(message.id, None)
        try:
            self.queue.delete_message(message.id, message.pop_receipt)
        except ResourceNotFoundError:
            self.log.warning(
                f"message {message.id} was no longer ours to delete (its visibility timeout "
                "ran out); another consumer may process it again"
            )
        except UNREACHABLE:
            self.log.warning(
                f"could not delete message {message.id} (service unreachable); "
                "it will be delivered again"
            )

    def release(self, message: QueueMessage) -> None:
        """Make a message visible again at once (instead of after its visibility timeout)."""
        self._held.pop(message.id, None)
        try:
            self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)
            self.log.info(f"released message {message.id} back to '{self.name}'")
        except (ResourceNotFoundError, *UNREACHABLE):
            pass  # its visibility timeout already ran out: it reappears on its own

    def poison(self, message: QueueMessage, reason: str) -> None:
        """Move a message to `<queue>-poison` with the reason, then delete the original.
        Nothing is lost: the copy is written before the original is deleted."""
        if self._poison is None:
            self._poison = open_queue(self.name + POISON_SUFFIX, self.log)
        record = {
            "reason": reason,
            "source_queue": self.name,
            "dequeue_count": message.dequeue_count,
            "poisoned_at": datetime.now(timezone.utc).isoformat(),
            "message_id": message.id,
            "body": message.content,
        }
        text = json.dumps(record, ensure_ascii=False)
        if size_as_sent(text) > MAX_MESSAGE_BYTES:
            text = message.content  # the wrapper would not fit: keep the body, log the reason
        try:
            self._poison.send_message(text)
        except UNREACHABLE:
            self._held.pop(message.id, None)
            self.log.warning(f"could not move message {message.id} to poison; it will come back")
            return
        self.delete(message)
        self.log.warning(f"moved message {message.id} to '{self.name}{POISON_SUFFIX}': {reason}")


class _VisibilityKeeper:
    """Keeps the messages in hand invisible while work on them outlasts the visibility timeout:
    one background thread per Inbox extends each message's timeout every half timeout (a
    thread per message would cost more than a small task's whole work)."""

    def __init__(self, queue: QueueClient, timeout: int, log: logging.Logger) -> None:
        self.queue, self.timeout, self.log = queue, timeout, log
        self.interval = max(timeout / 2, 0.5)
        self._due: dict[str, tuple[QueueMessage, float]] = {}  # id -> (message, next renewal)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def keep(self, message: QueueMessage) -> None:
        with self._changed:
            self._due[message.id] = (message, time.monotonic() + self.interval)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
            self._changed.notify()

    def drop(self, message: QueueMessage) -> None:
        with self._changed:  # waits for a renewal in progress: its pop receipt is the live one
            self._due.pop(message.id, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                for message, due in list(self._due.values()):
                    if due <= now:
                        self._extend(message)
                        self._due[message.id] = (message, now + self.interval)
                wake = min((due for _, due in self._due.values()), default=now + 60)
                self._changed.wait(max(wake - time.monotonic(), 0.01))

    def _extend(self, message: QueueMessage) -> None:
        try:
            receipt = self.queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=self.timeout
            )
            message.pop_receipt = receipt.pop_receipt  # the old receipt is void now
        except (HttpResponseError, *UNREACHABLE) as error:
            self.log.warning(f"could not extend the visibility timeout of {message.id}: {error}")


# --- polling and shutdown -----------------------------------------------------------------


class Shutdown:
    """Ctrl+C / SIGTERM: the first asks the script to stop taking messages and to release the
    one in hand; a second one stops at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._event.is_set():
            raise KeyboardInterrupt
        self._event.set()

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


class Backoff:
    """Idle polling: wait `initial` s after the first empty receive, doubling up to `maximum`.
    After a non-empty receive, call reset() and poll again at once."""

    def __init__(self, initial: float = 0.1, maximum: float = 1.0) -> None:
        self.initial, self.maximum = initial, maximum
        self.delay = initial

    def reset(self) -> None:
        self.delay = self.initial

    def wait(self, shutdown: Shutdown) -> None:
        shutdown.wait(self.delay)
        self.delay = min(self.delay * 2, self.maximum)


# --- command line -------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other expected failure
    (`error: argument --count: expected ...`, exit 2) instead of the whole usage first."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


# The `type=` of every numeric flag: each flag states its range once, and a value outside it
# stops the script before it sends a single request.


def whole_number(*, least: int, most: int | None = None) -> Callable[[str], int]:
    """A whole number from `least` to `most` (no upper limit if None)."""
    expected = f"from {least} to {most}" if most is not None else f"of {least} or more"

    def check(text: str) -> int:
        try:
            value: int | None = int(text)
        except ValueError:
            value = None
        if value is None or value < least or (most is not None and value > most):
            raise argparse.ArgumentTypeError(f"expected a whole number {expected}, got {text!r}")
        return value

    return check


def seconds(
    *, most: float, least: float | None = None, above: float | None = None
) -> Callable[[str], float]:
    """A duration in seconds: from `least` (or more than `above`) up to `most`."""
    strict = least is None  # `above`: the bound itself is not allowed
    low = above if strict else least
    assert low is not None, "give least= or above="
    expected = f"above {low:g}, at most {most:g}" if strict else f"from {low:g} to {most:g}"

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not ((value > low if strict else value >= low) and value <= most):  # nan, inf too
            raise argparse.ArgumentTypeError(f"expected seconds {expected}, got {text!r}")
        return value

    return check


def any_queue(text: str) -> str:
    """`type=` for a queue name (the error names the flag)."""
    try:
        return queue_name(text)
    except Fatal as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def consumed_queue(text: str) -> str:
    """`type=` for a queue that someone consumes: short enough for its poison queue."""
    try:
        return queue_name(text, consumed=True)
    except Fatal as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --idle-max (every consumer, and the latency benchmark): the backoff starts at 0.1 s, so a
# lower ceiling would only make an idle script poll faster.
IDLE_MAX = seconds(least=0.1, most=60)


def add_consumer_arguments(
    parser: argparse.ArgumentParser,
    *,
    batch_size: int = 1,
    visibility_timeout: int = 30,
    work_seconds: float | None = None,
) -> None:
    """The options every consumer has (and --work-seconds for those that simulate work)."""
    if work_seconds is not None:
        parser.add_argument(
            "--work-seconds",
            type=seconds(least=0, most=3600),
            default=work_seconds,
            metavar="SECONDS",
            help=f"simulated work per message (default {work_seconds:g})",
        )
    parser.add_argument(
        "--batch-size",
        type=whole_number(least=1, most=MAX_BATCH),
        metavar="1-32",
        default=batch_size,
        help=f"messages per receive call (default {batch_size})",
    )
    parser.add_argument(
        "--visibility-timeout",
        type=whole_number(least=1, most=7 * 24 * 3600),  # the service's limit: 7 days
        default=visibility_timeout,
        metavar="SECONDS",
        help=f"how long a received message stays hidden from others (default {visibility_timeout})",
    )
    parser.add_argument(
        "--max-attempts",
        type=whole_number(least=1),
        default=5,
        metavar="N",
        help="deliveries before a failing message moves to the poison queue (default 5)",
    )
    parser.add_argument(
        "--idle-max",
        type=IDLE_MAX,
        default=1.0,
        metavar="SECONDS",
        help="longest wait between polls of an empty queue (0.1-60, default 1.0)",
    )


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's main() and turn expected failures into one line and an exit code."""
    try:
        code = main() or 0
    except Fatal as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        code = error.exit_code
    except UNREACHABLE:
        print(f"error: {unreachable_message()}", file=sys.stderr, flush=True)
        code = 2
    except ClientAuthenticationError as error:
        reason = error.reason or (error.message or "").strip().split("\n")[0]
        check = (
            "your Entra ID sign-in (`az login`)"
            if load_settings().account_url
            else CONNECTION_STRING_VAR
        )
        print(
            f"error: the queue service refused our credentials ({reason}); check {check}",
            file=sys.stderr,
            flush=True,
        )
        code = 2
    except HttpResponseError as error:
        message = (error.message or "").splitlines()[0] if error.message else error.reason
        print(f"error: the queue service refused the request: {message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        code = 130
    sys.exit(code)
