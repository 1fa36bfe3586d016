"""The one shared helper: everything every script needs that is *not* the pattern itself.

Settings and clients, sending JSON, receiving a batch, settling a message (delete, retry later,
poison, release), lease renewal, idle backoff, Ctrl+C handling and one log format. Each
pattern script keeps its own loop in plain sight and calls these pieces.
"""

from __future__ import annotations

import argparse
import base64
import io
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
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape as xml_escape

from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage, QueueServiceClient
from dotenv import find_dotenv
from dotenv.parser import parse_stream

from patterns import tracing  # optional OpenTelemetry; imports nothing while switched off

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
NEVER_EXPIRE = -1  # time_to_live for poison and rejected records: someone must look at them
ID_KEYS = ("id", "order_id", "correlation_id")  # where our messages carry their application id
# Characters XML 1.0 does not allow: a queue message holding one cannot be handed out again
# (Azurite answers 500 to every receive that would return it).
XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
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


class Unsendable(Fatal, BadMessage):
    """A body the service would refuse (over 64 KiB). A producer stops with one line (Fatal);
    a consumer whose forward it was poisons the message it came from (BadMessage): sending it
    again could never succeed."""


class Interrupted(Exception):
    """Raised by `Shutdown.sleep()` when Ctrl+C arrives in the middle of work."""


# --- settings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    connection_string: str  # "" when signing in with Entra ID (account_url)
    source: str  # "environment", the .env path, or "default" (local Azurite)
    account_url: str = ""  # https://<account>.queue.core.windows.net, with DefaultAzureCredential
    notes: tuple[str, ...] = ()  # what was found but not usable: said before falling back


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
    AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in). An empty variable or an unreadable `.env`
    line is skipped with a note, so that the learner hears why the next place was used."""
    notes: list[str] = []

    def places() -> Iterator[tuple[str, Mapping[str, str]]]:
        yield "environment", os.environ if environ is None else environ
        path = str(dotenv_file) if dotenv_file is not None else find_dotenv(usecwd=True)
        if path and Path(path).is_file():  # read only when the environment had nothing
            values, unreadable = read_dotenv(path)
            notes.extend(unreadable)
            yield path, values

    for source, values in places():
        for name in (CONNECTION_STRING_VAR, ACCOUNT_URL_VAR):
            if name in values and not (values[name] or "").strip():
                where = "the environment" if source == "environment" else source
                notes.append(f"{name} is set but empty in {where}: ignored")
        value = (values.get(CONNECTION_STRING_VAR) or "").strip()
        if value:
            return Settings(value, source, notes=tuple(notes))
        url = (values.get(ACCOUNT_URL_VAR) or "").strip()
        if url:
            return Settings("", source, account_url=url, notes=tuple(notes))
    return Settings(azurite_connection_string(), "default", notes=tuple(notes))


def read_dotenv(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """A .env file's variables, and a note for each line that does not parse. The notes name
    the line by number only: its text may hold a key."""
    try:
        content = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return {}, [f"{path} cannot be read ({error.strerror}): ignored"]
    values: dict[str, str] = {}
    notes: list[str] = []
    for binding in parse_stream(io.StringIO(content)):
        text = binding.original.string
        # A statement starts after the blank lines before it: count to its text.
        line = binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")
        if binding.error:
            notes.append(f"{path} line {line} is unreadable (expected NAME=value): ignored")
        elif binding.key is not None:
            values[binding.key] = binding.value or ""
    return values, notes


# The parts a storage connection string may have (Azure Storage documents these names).
CONNECTION_STRING_PARTS = {
    name.lower(): name
    for name in (
        "DefaultEndpointsProtocol", "AccountName", "AccountKey", "EndpointSuffix",
        "SharedAccessSignature", "UseDevelopmentStorage", "DevelopmentStorageProxyUri",
        "QueueEndpoint", "QueueSecondaryEndpoint", "BlobEndpoint", "BlobSecondaryEndpoint",
        "FileEndpoint", "FileSecondaryEndpoint", "TableEndpoint", "TableSecondaryEndpoint",
    )
}  # fmt: skip
CONNECTION_STRING_SHAPE = (
    "DefaultEndpointsProtocol=https;AccountName=<name>;AccountKey=<key>;"
    "EndpointSuffix=core.windows.net"
)
BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def connection_string_problems(text: str) -> list[str]:
    """What is wrong with a connection string, in words that quote none of its values (a
    value may be a key, and so may a part that is not Name=value at all). [] if it is fine."""
    parts = [part for part in text.strip().split(";") if part.strip()]
    if len(parts) == 1 and len(parts[0].strip()) >= 20 and BASE64.match(parts[0].strip()):
        return ["it looks like an account key on its own, not a whole connection string"]
    problems: list[str] = []
    found: dict[str, str] = {}
    for number, part in enumerate(parts, start=1):
        name, equals, value = part.partition("=")
        known = CONNECTION_STRING_PARTS.get(name.strip().lower())
        if not equals:
            problems.append(f"part {number} of {len(parts)} is not Name=value")
        elif known is None:
            # Show a name only when it cannot be a secret: a short word, like a misspelling.
            shown = f" '{name}'" if re.fullmatch(r"[A-Za-z]{1,30}", name) else ""
            problems.append(f"part {number} of {len(parts)}{shown} is not a connection setting")
        elif name != name.strip():
            problems.append(f"part {number} of {len(parts)} has a space around '{known}'")
        elif not value.strip():
            problems.append(f"{known} is empty")
        elif value != value.strip() or re.search(r"\s", value):
            problems.append(f"the value of {known} contains a space or line break")
        if known and equals:
            found[known] = value.strip()
    if problems:
        return problems
    if found.get("UseDevelopmentStorage", "").lower() == "true":
        return []
    if "SharedAccessSignature" in found:
        missing = [] if {"QueueEndpoint", "AccountName"} & found.keys() else ["AccountName"]
    else:
        missing = [name for name in ("AccountName", "AccountKey") if name not in found]
    if missing:
        problems.append(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if "AccountKey" in found and not _is_base64(found["AccountKey"]):
        problems.append("AccountKey is not a key (a key is base64 text, often ending in '=')")
    protocol = found.get("DefaultEndpointsProtocol", "https").lower()
    if protocol not in ("http", "https"):
        problems.append("DefaultEndpointsProtocol must be https (or http)")
    if not re.match(r"(?i)^https?://", found.get("QueueEndpoint", "https://")):
        problems.append("QueueEndpoint must start with https:// (or http://)")
    return problems


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
        # One event, one line: a line break inside a value (an id, a reason) is shown as \n.
        text = super().format(record).replace("\r", "\\r").replace("\n", "\\n")
        if record.levelno >= logging.WARNING:
            head, _, tail = text.partition("] ")
            return f"{head}] {record.levelname.lower()}: {tail}"
        return text


def logger(role: str) -> logging.Logger:
    """One log format for every script: `HH:MM:SS.mmm role[pid] text`, flushed per line."""
    log = logging.getLogger(f"patterns.{role}")
    if not log.handlers:
        # A message can carry text stdout cannot encode (half a surrogate pair, sent as "\ud800"
        # in JSON): print it escaped rather than lose the line to a "Logging error" traceback.
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
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

# Queue operations are small: a healthy service answers in milliseconds, a busy emulator in
# well under a second. A read timeout of a few seconds (not the SDK's 30) with one retry
# means a hung service is reported within ~11 s instead of ~2 minutes.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 5


class _Retry(LinearRetry):
    """The SDK's linear retry, short (3 retries 0.5 s apart, a read timeout retried once),
    plus a start-up probe: the process's first request is not retried when nothing answers
    in time, and its answer must come from a queue service. So a script whose endpoint is
    down, hung or something else says so within seconds, and the probe costs no request."""

    def __init__(self) -> None:
        super().__init__(backoff=0.5, random_jitter_range=0.2, retry_total=3, retry_read=1)
        self.probed = False

    def send(self, request: Any) -> Any:
        if self.probed:
            return super().send(request)
        request.context.options.update(retry_connect=0, retry_read=0)  # 5xx: retried as usual
        response = super().send(request)
        answer = response.http_response
        if "x-ms-request-id" not in answer.headers:  # every Azure Storage answer has one
            raise Fatal(not_a_queue_service(answer.status_code, answer.headers.get("Server")))
        self.probed = True
        return response


def service(log: logging.Logger | None = None) -> QueueServiceClient:
    """The queue service client for this process (created once).

    Says (to `log`) where the settings came from when it is not the obvious place, and
    refuses a connection string that does not parse without ever echoing it."""
    global _service
    if _service is None:
        settings = load_settings()
        if log is not None:
            for note in settings.notes:
                log.warning(note)
            if settings.source == "default":
                missing = "is not set" if not settings.notes else "has no usable value"
                log.info(
                    f"{CONNECTION_STRING_VAR} {missing}: using the local Azurite at "
                    f"127.0.0.1:{AZURITE_PORT}"
                )
        options: dict[str, Any] = {
            "retry_policy": _Retry(),
            "connection_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
        }
        if settings.account_url:
            _service = entra_client(settings.account_url, log, **options)
            return _service
        where = "the environment" if settings.source == "environment" else settings.source
        problems = connection_string_problems(settings.connection_string)
        if problems:
            raise Fatal(
                f"{CONNECTION_STRING_VAR} in {where} is not a valid connection string: "
                f"{'; '.join(problems)}. It should look like {CONNECTION_STRING_SHAPE} "
                "(Portal: your storage account > Access keys > Connection string)"
            )
        try:
            _service = QueueServiceClient.from_connection_string(
                settings.connection_string, **options
            )
        except ValueError as error:  # what the check above missed; the SDK quotes no values
            raise Fatal(
                f"{CONNECTION_STRING_VAR} in {where} is not a valid connection string: {error}"
            ) from None
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


def endpoint() -> str:
    """The queue service's address, fit to print: no SAS token, no trailing slash."""
    url = urlsplit(service().url)
    return f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}"


def _is_local() -> bool:
    return urlsplit(service().url).hostname in ("127.0.0.1", "localhost", "::1")


def unreachable_message(error: BaseException | None = None) -> str:
    """One line for a transport failure (by default the one being handled): nothing answers
    at all (refused, unknown host) or the endpoint takes the request but does not answer
    (hung, paused, a firewall that drops packets)."""
    error = error or sys.exc_info()[1]
    where, port, local = endpoint(), urlsplit(service().url).port, _is_local()
    if isinstance(error, ServiceResponseTimeoutError | ServiceRequestTimeoutError):
        waited = READ_TIMEOUT if isinstance(error, ServiceResponseTimeoutError) else CONNECT_TIMEOUT
        check = (
            f"check that the emulator is not paused (Ctrl+Z; `fg` resumes it) and that port "
            f"{port} is its port"
            if local
            else "check your network (firewall, proxy) and the endpoint"
        )
        return f"the queue service at {where} does not answer (nothing in {waited} s) - {check}"
    if not local:
        return (
            f"cannot reach the queue service at {where} - check the account name in "
            f"{CONNECTION_STRING_VAR} and your network"
        )
    start = "make emulator" if port == AZURITE_PORT else f'make emulator ARGS="--port {port}"'
    return (
        f"cannot reach the queue service at {where} - is the emulator running? "
        f"Start it with `{start}` (or set {CONNECTION_STRING_VAR})"
    )


def not_a_queue_service(status: int | None = None, server: str | None = None) -> str:
    """One line for an endpoint where something else answers (a web server, a proxy)."""
    what = f"HTTP {status}" if status else "an answer that is not a queue service's XML"
    if server:
        what += f" from {server[:40]!r}"
    check = (
        "check the port: the emulator prints its address when it starts"
        if _is_local()
        else f"check the endpoint in {CONNECTION_STRING_VAR} (and any proxy)"
    )
    return f"what answers at {endpoint()} is not a queue service ({what}) - {check}"


# --- sending ------------------------------------------------------------------------------


def size_as_sent(text: str) -> int:
    """Bytes a message takes in the request: XML-escaped UTF-8 plus the XML envelope."""
    return len(xml_escape(text).encode("utf-8")) + XML_ENVELOPE_BYTES


def encode(body: Mapping[str, Any]) -> str:
    """JSON text for a message, refusing what the service would refuse (> 64 KiB)."""
    try:
        text = json.dumps(body, ensure_ascii=False)
    except RecursionError:
        raise Unsendable("message is nested too deeply to be written as JSON") from None
    if XML_FORBIDDEN.search(text):  # e.g. U+FFFF or half a surrogate pair: escape them all
        text = json.dumps(body)  # the same JSON, in plain ASCII (\uXXXX escapes)
    if size_as_sent(text) > MAX_MESSAGE_BYTES:
        raise Unsendable(
            f"message is {size_as_sent(text)} bytes as sent; a queue message can hold at most "
            "64 KiB: store big payloads elsewhere (e.g. a blob) and send a reference"
        )
    return text


def send_json(
    queue: QueueClient, body: Mapping[str, Any], time_to_live: int | None = None
) -> QueueMessage:
    """Send one JSON message. `time_to_live` (seconds) makes it expire if nobody takes it."""
    with tracing.sending(queue.queue_name, body) as body:  # tracing: the journey goes on
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
    except RecursionError:
        raise BadMessage("JSON nested too deeply to read") from None
    except ValueError as error:  # valid JSON Python refuses, e.g. an integer of 5,000 digits
        raise BadMessage(f"unreadable JSON: {error}") from None
    if not isinstance(body, dict):
        raise BadMessage(f"expected a JSON object, got {type(body).__name__}")
    return body


def _is_id(value: object) -> bool:
    return isinstance(value, str) and value.strip() != "" and value.isprintable()


def app_id(body: Mapping[str, Any], key: str = "id") -> str:
    """The application id of a message body, or BadMessage (which sends it to poison).

    An id is a non-empty string of printable characters (it is shown in one-line logs). A
    missing or null id is not an id - two messages without one are not duplicates of each
    other - and 7 is not "7"."""
    value = body.get(key)
    if value is None:
        raise BadMessage(f"{key} is missing")
    if not _is_id(value):
        shown = _cut(json.dumps(value, ensure_ascii=False), 40)
        raise BadMessage(f"{key} must be a non-empty string of printable characters, got {shown}")
    return str(value)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def describe(message: QueueMessage) -> str:
    """'message <service id> (id task-001)' for log lines: the service's id, which changes with
    every copy, and beside it the application's id when the body has one."""
    try:
        body = json.loads(message.content or "")
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        for key in ID_KEYS:
            value = body.get(key)
            if _is_id(value):
                return f"message {message.id} ({key} {_cut(value, 80)})"
    return f"message {message.id}"


# --- receiving and settling ---------------------------------------------------------------


def is_outage(error: BaseException) -> bool:
    """The service is away or failing (a transport error, or a 5xx answer): not the message's
    fault, so it is left to come back and the attempt does not count towards poison."""
    if isinstance(error, UNREACHABLE):
        return True
    return isinstance(error, HttpResponseError) and (error.status_code or 0) >= 500


def _not_ours(error: BaseException) -> bool:
    """The message is no longer ours: gone, or received again by someone else (new receipt)."""
    return isinstance(error, ResourceNotFoundError) or (
        isinstance(error, HttpResponseError) and error.error_code == "PopReceiptMismatch"
    )


def _in_short(error: BaseException) -> str:
    if isinstance(error, UNREACHABLE):
        return "service unreachable"
    if isinstance(error, HttpResponseError):
        return f"{error.status_code} {error.reason}"
    return type(error).__name__


class _Outage:
    """One warning when the service goes away - however many queues and threads notice it -
    and one line when it answers again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active = False

    def begin(self, log: logging.Logger, error: BaseException) -> None:
        """Call inside the `except` block that caught `error`."""
        with self._lock:
            if self.active:
                return
            self.active = True
        if isinstance(error, UNREACHABLE):
            what = unreachable_message()
        else:
            what = f"the queue service answers {_in_short(error)}"
        log.warning(f"{what}; retrying with backoff")

    def end(self, log: logging.Logger) -> None:
        with self._lock:
            if not self.active:
                return
            self.active = False
        log.info("the queue service answers again; carrying on")


_outage = _Outage()


class Inbox:
    """A queue this script consumes: receive batches, then settle each message.

    Used as a context manager so that messages received but not yet settled when the script
    stops (Ctrl+C, error) are released at once instead of waiting out their visibility timeout.
    No outage and no message ends the script: every call backs off or leaves the message to
    come back, and says so in one line.
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
        self._undeliverable = False  # warned about a message the service cannot hand out?
        self._one_by_one_until = 0.0  # receive single messages until then (see receive())

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
        failed: list[str] = []  # 5xx answers within this call that the SDK retried away
        if time.monotonic() < self._one_by_one_until:
            max_messages = 1  # a message the service cannot hand out fails only itself

        def note(response: Any) -> None:  # called for every try, retries included
            answer = response.http_response
            if answer.status_code >= 500:
                failed.append(f"{answer.status_code} {answer.reason}")

        try:
            pages = self.queue.receive_messages(
                messages_per_page=max_messages,
                max_messages=max_messages,
                visibility_timeout=self.visibility_timeout,
                raw_response_hook=note,
            ).by_page()
            messages = list(next(pages, []))  # only the first page: one request, no more
        except ResourceNotFoundError:  # someone deleted the queue under us: make it again
            self.log.warning(f"queue '{self.name}' was deleted; creating it again")
            try:
                open_queue(self.name)
            except Exception as error:
                if not is_outage(error):
                    raise
                _outage.begin(self.log, error)
            return []
        except Exception as error:
            if not is_outage(error):
                raise
            if isinstance(error, HttpResponseError):
                self._one_by_one_until = time.monotonic() + 2 * self.visibility_timeout
            _outage.begin(self.log, error)
            return []
        _outage.end(self.log)
        if failed:
            # Seen with Azurite: a message holding a character XML does not allow (e.g. a raw
            # \x00 sent by another client) is taken - hidden, dequeue count + 1 - but the
            # answer that would carry it fails, and with it every message taken alongside.
            # No one ever gets its pop receipt. While this recurs, take one message per call.
            self._one_by_one_until = time.monotonic() + 2 * self.visibility_timeout
            if not self._undeliverable:
                self._undeliverable = True
                self.log.warning(
                    f"a receive from '{self.name}' got {failed[0]} and worked when retried: "
                    "the service holds a message it cannot hand out (Azurite: one with a "
                    "character XML forbids, e.g. \\x00). No one can receive or delete it; it "
                    f"comes back every {self.visibility_timeout} s until it expires. Receiving "
                    "one message at a time meanwhile, so the others are still served (warned "
                    "once)"
                )
        for message in messages:
            self._held[message.id] = message
        tracing.received(messages, self.name)  # tracing: each message's queue wait ends here
        return messages

    @contextmanager
    def settle(self, message: QueueMessage) -> Iterator[None]:
        """Run the `with` block as the work for `message`, then settle it:

        - success: delete it;
        - BadMessage: move it to the poison queue at once (retrying cannot help);
        - the service away or failing (e.g. during a forward): leave it to reappear after its
          visibility timeout; this does not count as a failed attempt;
        - any other error: leave it to reappear after its visibility timeout, or move it to
          the poison queue once it has been delivered `max_attempts` times;
        - Ctrl+C (Interrupted): release it so another consumer can take it at once.

        While the block runs, the message's visibility timeout is extended again and again,
        so that long work is not handed to a second consumer.
        """
        self._keeper.keep(message)
        span = tracing.begin(message, self.name)  # tracing: receive -> work -> settle
        try:
            try:
                with tracing.active(span):
                    yield
            finally:
                self._keeper.drop(message)  # from here on, message.pop_receipt is final
        except Interrupted:
            self.release(message)
            tracing.end(span, "released")
            return
        except (BadMessage, RecursionError) as error:  # the same message fails the same way
            self.poison(message, str(error) or type(error).__name__)
            tracing.end(span, "poisoned", str(error) or type(error).__name__)
            return
        except Exception as error:
            self._held.pop(message.id, None)
            if is_outage(error):  # the service's trouble, not the message's
                _outage.begin(self.log, error)
                tracing.end(span, "outage", _in_short(error))
                return
            reason = f"{type(error).__name__}: {error}"
            if message.dequeue_count >= self.max_attempts:
                reason = f"failed {message.dequeue_count} times; last: {reason}"
                self.poison(message, reason)
                tracing.end(span, "poisoned", reason)
            else:
                self.log.warning(
                    f"attempt {message.dequeue_count} of {self.max_attempts} failed for "
                    f"{describe(message)}: {reason}; it will be retried after its visibility "
                    "timeout"
                )
                tracing.end(span, "retry", reason)
            return
        except BaseException:  # a second Ctrl+C: give the message back, then stop
            self.release(message)
            tracing.end(span, "released")
            raise
        self.delete(message)
        tracing.end(span, "done")

    def delete(self, message: QueueMessage) -> None:
        """Delete a message whose work is done. Never raises: a message that could not be
        deleted is delivered again (at-least-once), and the line says so."""
        self._held.pop(message.id, None)
        try:
            self.queue.delete_message(message.id, message.pop_receipt)
        except (HttpResponseError, *UNREACHABLE) as error:
            if _not_ours(error):
                self.log.warning(
                    f"{describe(message)} was no longer ours to delete (its visibility timeout "
                    "ran out); another consumer may process it again"
                )
                return
            if is_outage(error):
                _outage.begin(self.log, error)
            self.log.warning(
                f"could not delete {describe(message)}: {_in_short(error)}; "
                "it will be delivered again"
            )

    def release(self, message: QueueMessage) -> None:
        """Make a message visible again at once (instead of after its visibility timeout)."""
        self._held.pop(message.id, None)
        try:
            self.queue.update_message(message.id, message.pop_receipt, visibility_timeout=0)
            self.log.info(f"released {describe(message)} back to '{self.name}'")
        except (HttpResponseError, *UNREACHABLE):
            pass  # no longer ours, or the service is away: it reappears on its own

    def poison(self, message: QueueMessage, reason: str) -> None:
        """Move a message to `<queue>-poison` with the reason, then delete the original.
        Nothing is lost: the copy is written before the original is deleted. Poison records
        never expire: they wait until someone has looked at them."""
        record = {
            "reason": reason,
            "source_queue": self.name,
            "dequeue_count": message.dequeue_count,
            "poisoned_at": datetime.now(timezone.utc).isoformat(),
            "message_id": message.id,
            "body": message.content,
        }
        try:
            text = encode(record)
        except Unsendable:
            text = message.content  # the wrapper would not fit: keep the body, log the reason
        try:
            if self._poison is None:
                self._poison = open_queue(self.name + POISON_SUFFIX, self.log)
            self._poison.send_message(text, time_to_live=NEVER_EXPIRE)
        except (Fatal, HttpResponseError, *UNREACHABLE) as error:
            self._held.pop(message.id, None)
            if is_outage(error):
                _outage.begin(self.log, error)
            self.log.warning(
                f"could not move {describe(message)} to poison: {_in_short(error)}; "
                "it will come back"
            )
            return
        self.delete(message)
        self.log.warning(f"moved {describe(message)} to '{self.name}{POISON_SUFFIX}': {reason}")


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
                        if self._extend(message):
                            self._due[message.id] = (message, now + self.interval)
                        else:
                            del self._due[message.id]
                wake = min((due for _, due in self._due.values()), default=now + 60)
                self._changed.wait(max(wake - time.monotonic(), 0.01))

    def _extend(self, message: QueueMessage) -> bool:
        """Extend one message's visibility timeout; False when it is no longer ours."""
        try:
            receipt = self.queue.update_message(
                message.id, message.pop_receipt, visibility_timeout=self.timeout
            )
            message.pop_receipt = receipt.pop_receipt  # the old receipt is void now
        except (HttpResponseError, *UNREACHABLE) as error:
            if is_outage(error):
                _outage.begin(self.log, error)  # try again at the next renewal
                return True
            self.log.warning(
                f"could not extend the visibility timeout of {describe(message)}: "
                f"{_in_short(error)}; another consumer may take it"
            )
            return not _not_ours(error)
        return True


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
        sys.exit(main() or 0)
    except Fatal as error:
        message, code = str(error), error.exit_code
    except UNREACHABLE as error:
        message, code = unreachable_message(error), 2
    except ClientAuthenticationError as error:
        reason = error.error_code or error.reason or (error.message or "").strip().split("\n")[0]
        check = (
            "your Entra ID sign-in (`az login`)"
            if load_settings().account_url
            else f"AccountName and AccountKey in {CONNECTION_STRING_VAR}"
        )
        message, code = f"the queue service refused our credentials ({reason}); check {check}", 2
    except (DecodeError, ParseError) as error:  # an answer that is not a queue service's XML
        status = error.status_code if isinstance(error, DecodeError) else None
        message, code = not_a_queue_service(status), 2
    except HttpResponseError as error:
        answer = error.response
        if answer is not None and "x-ms-request-id" not in answer.headers:  # see _Retry
            message = not_a_queue_service(error.status_code, answer.headers.get("Server"))
            code = 2
        else:
            first = (error.message or "").splitlines()[0] if error.message else error.reason
            message, code = f"the queue service refused the request: {first}", 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
