"""The queue service: the one client per process, queues and their names, sending; and the
blob service beside it (claim-check payloads), from the same settings.

Also what a script says when the service cannot be reached, refuses it or is not a queue
service at all (`explain`, for cli.run), and the one warning per outage a consumer gives.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError

from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceExistsError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage, QueueServiceClient

from patterns.helper import BadMessage, Fatal, codec, settings, tracing

if TYPE_CHECKING:  # imported on first use: only the claim-check lesson needs blobs
    from azure.storage.blob import BlobServiceClient, ContainerClient

# --- queue names ----------------------------------------------------------------------------

QUEUE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
POISON_SUFFIX = "-poison"
MAX_CONSUMED_NAME = 63 - len(POISON_SUFFIX)  # a consumed queue's poison queue must fit in 63


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


# --- the client -----------------------------------------------------------------------------

# Transport problems: the service did not answer (down, unreachable, connection dropped).
UNREACHABLE = (ServiceRequestError, ServiceResponseError)
# Queue operations are small: a healthy service answers in milliseconds, a busy emulator in
# well under a second. A read timeout of a few seconds (not the SDK's 30) with one retry
# means a hung service is reported within ~11 s instead of ~2 minutes.
CONNECT_TIMEOUT = 3
READ_TIMEOUT = 5
QUEUE_BEING_DELETED_WAITS = 12  # x 5 s: a deleted queue's name is reusable after 30 s or more


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


_service: QueueServiceClient | None = None


def service(log: logging.Logger | None = None) -> QueueServiceClient:
    """The queue service client for this process: made on first use, the one place a client
    is created. Says (to `log`) where the settings came from when it is not the obvious place,
    and refuses a connection string that does not parse without ever echoing it."""
    global _service
    if _service is None:
        config = settings.load_settings()
        encoding = codec.encoding()  # a bad value stops the script here, before any request
        tracing.start(log)  # so do tracing settings that cannot work; says where spans go
        if log is not None:
            for note in config.notes:
                log.warning(note)
            if config.source == "default":
                missing = "has no usable value" if config.notes else "is not set"
                log.info(
                    f"{settings.CONNECTION_STRING_VAR} {missing}: using the local Azurite at "
                    f"127.0.0.1:{settings.AZURITE_PORT}"
                )
            if encoding == "base64":
                log.info(
                    f"messages are sent and read as Base64 ({settings.MESSAGE_ENCODING_VAR}="
                    "base64), as an Azure Functions queue trigger expects"
                )
        options: dict[str, Any] = {
            "retry_policy": _Retry(),
            "connection_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
        }
        if config.account_url:
            _service = _signed_in_client(config.account_url, log, options)
        else:
            _service = _key_client(config, options)
    return _service


def _key_client(config: settings.Settings, options: dict[str, Any]) -> QueueServiceClient:
    var, shape = settings.CONNECTION_STRING_VAR, settings.CONNECTION_STRING_SHAPE
    invalid = f"{var} in {config.where} is not a valid connection string"
    problems = settings.connection_string_problems(config.connection_string)
    if problems:
        raise Fatal(
            f"{invalid}: {'; '.join(problems)}. It should look like {shape} "
            "(Portal: your storage account > Access keys > Connection string)"
        )
    try:
        return QueueServiceClient.from_connection_string(config.connection_string, **options)
    except ValueError as error:  # what the check above missed; the SDK quotes no values
        raise Fatal(f"{invalid}: {error}") from None


def _signed_in_client(
    account_url: str, log: logging.Logger | None, options: dict[str, Any]
) -> QueueServiceClient:
    """A client that signs in with Microsoft Entra ID (DefaultAzureCredential: `az login`,
    environment variables, managed identity...) instead of an account key."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise Fatal(
            f"{settings.ACCOUNT_URL_VAR} is set (Entra ID sign-in) but azure-identity is not "
            f"installed: run `pip install -e '.[entra]'`, or set {settings.CONNECTION_STRING_VAR} "
            "instead"
        ) from None
    problem = settings.endpoint_problem(account_url)
    if problem or not re.match(r"^https://[^/?#]+/?$", account_url):
        raise Fatal(  # without the value: it may be a key pasted in the wrong place
            f"{settings.ACCOUNT_URL_VAR} must look like https://<account>.queue.core.windows.net"
            + (f"; it {problem}" if problem and account_url.startswith("https://") else "")
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


# --- blobs (claim-check) ---------------------------------------------------------------------

_blob_service: BlobServiceClient | None = None
BLOB_CHUNK = 4 * 1024 * 1024
MAX_BLOB_NAME = 1024  # characters, the service's limit


def blob_service(log: logging.Logger | None = None) -> BlobServiceClient:
    """The blob service client for this process, from the same settings as the queues': the
    connection string's BlobEndpoint, or with Entra ID the account URL's `.queue.` made
    `.blob.`. Same short timeouts and retries as the queue client."""
    global _blob_service
    if _blob_service is None:
        from azure.storage.blob import BlobServiceClient
        from azure.storage.blob import LinearRetry as BlobRetry

        queues = service(log)  # first: it checks the settings and says where they came from
        config = settings.load_settings()
        options: dict[str, Any] = {
            "retry_policy": BlobRetry(
                backoff=0.5, random_jitter_range=0.2, retry_total=3, retry_read=1
            ),
            "connection_timeout": CONNECT_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            # A download is read in 4 MiB requests (the SDK's first one is 32 MiB otherwise),
            # so a consumer that streams a payload holds no more than that at a time.
            "max_single_get_size": BLOB_CHUNK,
            "max_chunk_get_size": BLOB_CHUNK,
        }
        if config.account_url:
            url = config.account_url.replace(".queue.", ".blob.", 1)
            if url == config.account_url:
                raise Fatal(
                    f"{settings.ACCOUNT_URL_VAR} has no '.queue.' to make the blob service's "
                    "address from (https://<account>.queue.core.windows.net)"
                )
            _blob_service = BlobServiceClient(url, credential=queues.credential, **options)
        else:
            names = {
                part.split("=", 1)[0].strip().lower()
                for part in config.connection_string.split(";")
            }
            if "queueendpoint" in names and "blobendpoint" not in names:
                raise Fatal(
                    f"{settings.CONNECTION_STRING_VAR} names a QueueEndpoint but no BlobEndpoint: "
                    "the claim-check lesson needs the blob service too (`make emulator` prints "
                    "a connection string with both)"
                )
            _blob_service = BlobServiceClient.from_connection_string(
                config.connection_string, **options
            )
    return _blob_service


def blob_container(name: str, log: logging.Logger | None = None) -> ContainerClient:
    """A client for blob container `name` (the same naming rules as a queue's), creating it
    if it does not exist yet, so scripts can be started in any order."""
    container = blob_service(log).get_container_client(container_name(name))
    try:
        container.create_container()
        if log is not None:
            log.info(f"created blob container '{name}'")
    except ResourceExistsError as error:
        if error.error_code == "ContainerBeingDeleted":
            raise Fatal(
                f"blob container '{name}' is still being deleted; try again in a minute"
            ) from None
    except UNREACHABLE:
        where = settings.printable_url(blob_service().url)
        raise Fatal(
            f"cannot reach the blob service at {where} - is the emulator "
            "running with its blob service (`make emulator`)? (or check "
            f"{settings.CONNECTION_STRING_VAR})"
        ) from None
    return container


def container_name(name: str) -> str:
    """Validate a blob container name: the same rules as a queue's (Fatal if not)."""
    if not (3 <= len(name) <= 63 and QUEUE_NAME.match(name)):
        raise Fatal(
            f"invalid blob container name {name!r}: use 3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )
    return name


def blob_in(where: Any, container: str, prefix: str) -> tuple[str, str]:
    """(container, blob name) of a blob reference read from a message - a claim check, a poison
    record's body_blob - if it points inside `container`, under `prefix`: the one place the
    lesson writes such blobs. Anything else is a BadMessage, decided before any request, so a
    forged reference reaches no other blob, and the reason says nothing about the blob it
    names (whether it exists, how big it is): nobody looked."""
    where = where if isinstance(where, dict) else {}
    named, name = where.get("container"), where.get("blob")
    if not (isinstance(named, str) and isinstance(name, str)):
        raise BadMessage("its blob reference needs a container and a blob name, both strings")
    if problem := _unsafe_blob_name(name):
        raise BadMessage(f"its blob name {problem}: refused without looking it up")
    if named != container or not name.startswith(prefix):
        raise BadMessage(
            f"it refers to a blob outside {container}/{prefix}, the only place this lesson "
            "keeps them: refused without looking it up"
        )
    return named, name


def _unsafe_blob_name(name: str) -> str:
    """What makes a blob name unsafe to follow ('' if nothing)."""
    if not name:
        return "is empty"
    if len(name) > MAX_BLOB_NAME:
        return f"is over {MAX_BLOB_NAME} characters"
    if re.search(r"[\x00-\x1f\x7f-\x9f]", name):
        return "has a control character"
    if "\\" in name:
        return "has a backslash"
    if name.startswith("/"):
        return "starts with '/'"
    if {"", ".", ".."} & set(name.split("/")):  # HTTP clients resolve 'q/../other/x' to 'other/x'
        return "has an empty, '.' or '..' part"
    return ""


def blob_endpoint() -> str:
    """The blob service's address, fit to print: no SAS token, no trailing slash."""
    url = urlsplit(blob_service().url)
    return f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}"


# --- when the service is not there ---------------------------------------------------------


def is_outage(error: BaseException) -> bool:
    """The service is away or failing (a transport error, or a 5xx answer): not the message's
    fault, so a consumer leaves it to come back and the attempt does not count towards poison."""
    if isinstance(error, UNREACHABLE):
        return True
    return isinstance(error, HttpResponseError) and (error.status_code or 0) >= 500


def in_short(error: BaseException) -> str:
    """'service unreachable', '503 Service Unavailable', or the error's type, for a log line."""
    if isinstance(error, UNREACHABLE):
        return "service unreachable"
    if isinstance(error, HttpResponseError):
        return f"{error.status_code} {error.reason}"
    return type(error).__name__


def endpoint() -> str:
    """The queue service's address, fit to print: no SAS token, no password, no trailing /."""
    return settings.printable_url(service().url)


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
    config = settings.load_settings()
    var = settings.ACCOUNT_URL_VAR if config.account_url else settings.CONNECTION_STRING_VAR
    if not local:
        return (
            f"cannot reach the queue service at {where} - check the account name in {var} "
            f"(set in {config.where}) and your network"
        )
    start = "make emulator"
    if port != settings.AZURITE_PORT:
        start += f' ARGS="--port {port}"'
    # Suggest setting the variable only when it is not set: else say where this address is from.
    hint = (
        f"or set {var}"
        if config.source == "default"
        else f"the address comes from {var} in {config.where}"
    )
    return (
        f"cannot reach the queue service at {where} - is the emulator running? "
        f"Start it with `{start}` ({hint})"
    )


def not_a_queue_service(status: int | None = None, server: str | None = None) -> str:
    """One line for an endpoint where something else answers (a web server, a proxy)."""
    what = f"HTTP {status}" if status else "an answer that is not a queue service's XML"
    if server:
        what += f" from {server[:40]!r}"
    check = (
        "check the port: the emulator prints its address when it starts"
        if _is_local()
        else f"check the endpoint in {settings.CONNECTION_STRING_VAR} (and any proxy)"
    )
    return f"what answers at {endpoint()} is not a queue service ({what}) - {check}"


def explain(error: Exception) -> tuple[str, int] | None:
    """One line and an exit code for an SDK error that ended a script (None: not one of them):
    2 when the service is unreachable, refuses our credentials or is not a queue service,
    1 when it refused a request."""
    if isinstance(error, UNREACHABLE):
        return unreachable_message(error), 2
    if isinstance(error, ClientAuthenticationError):
        # azure-identity's (no sign-in) has no error_code, and a message of many lines
        reason = getattr(error, "error_code", None) or error.reason or error.message or ""
        reason = str(reason).strip().split("\n")[0]
        check = (
            "your Entra ID sign-in (`az login`)"
            if settings.load_settings().account_url
            else f"AccountName and AccountKey in {settings.CONNECTION_STRING_VAR}"
        )
        return f"the queue service refused our credentials ({reason}); check {check}", 2
    if isinstance(error, DecodeError | ParseError):  # an answer that is not a queue's XML
        return not_a_queue_service(error.status_code if isinstance(error, DecodeError) else None), 2
    if isinstance(error, HttpResponseError):
        answer = error.response
        if answer is not None and "x-ms-request-id" not in answer.headers:  # see _Retry
            return not_a_queue_service(error.status_code, answer.headers.get("Server")), 2
        first = (error.message or "").splitlines()[0] if error.message else error.reason
        return f"the queue service refused the request: {first}", 1
    return None


class Outage:
    """One warning when a service goes away - however many queues and threads of a consumer
    notice it - and one line when it answers again. `outage` is the queue service's;
    `blob_outage` the blob service's (claim-check), whose calls go in `with blob_outage.watch()`."""

    def __init__(self, service: str = "queue") -> None:
        self.service = service
        self._lock = threading.Lock()
        self.active = False

    def noticed(self, log: logging.Logger, error: BaseException) -> bool:
        """True if `error` is an outage (warned about once per outage), else False."""
        if not is_outage(error):
            return False
        if getattr(error, "outage_of", self.service) != self.service:
            return True  # another service's, warned about by its own Outage (see watch())
        with self._lock:
            warn, self.active = not self.active, True
        if warn:
            if self.service == "queue":
                what = f"the queue service answers {in_short(error)}"
                if isinstance(error, UNREACHABLE):
                    what = unreachable_message(error)
                log.warning(f"{what}; retrying with backoff")
            else:
                what = "cannot be reached"
                if not isinstance(error, UNREACHABLE):
                    what = f"answers {in_short(error)}"
                log.warning(
                    f"the {self.service} service at {blob_endpoint()} {what}; the messages "
                    "that need it are left to come back (not counted as failed attempts)"
                )
        return True

    def over(self, log: logging.Logger) -> None:
        with self._lock:
            was, self.active = self.active, False
        if was:
            log.info(f"the {self.service} service answers again; carrying on")

    @contextmanager
    def watch(self, log: logging.Logger) -> Iterator[None]:
        """Calls to this service in the block: an outage is warned about once, as this
        service's, and the first answer after it says it is over. The error goes on, marked,
        so that settle() leaves the message to come back without blaming the queue service."""
        try:
            yield
        except Exception as error:
            if self.noticed(log, error):
                error.outage_of = self.service  # type: ignore[attr-defined]
            else:
                self.over(log)  # it answered (a 404 is an answer)
            raise
        self.over(log)


outage = Outage()
blob_outage = Outage("blob")


# --- sending --------------------------------------------------------------------------------

MAX_BATCH = 32  # the service hands out (and lets us peek at) at most 32 messages per call
NEVER_EXPIRE = -1  # time_to_live for poison and rejected records: someone must look at them
TIME_TO_LIVE = 7 * 24 * 3600  # the service's default: a message lives 7 days
T = TypeVar("T")
R = TypeVar("R")


def send_json(
    queue: QueueClient,
    body: Mapping[str, Any],
    time_to_live: int | None = None,
    delay: int = 0,
) -> QueueMessage:
    """Send one JSON message. `time_to_live` (seconds) makes it expire if nobody takes it;
    `delay` (seconds, up to 7 days) keeps it invisible until then: its initial visibility
    timeout, which must end before the message expires."""
    if delay and time_to_live is None:
        # A message's time to live runs from the send, its delay included: with the default 7
        # days, a task delayed 7 days would expire the second it became visible. So a delayed
        # message lives its delay plus the usual 7 days: a whole life once it is due.
        time_to_live = delay + TIME_TO_LIVE
    if delay and time_to_live != NEVER_EXPIRE and delay >= time_to_live:
        raise Fatal(
            f"a delay of {delay} s must be shorter than the message's time to live "
            f"({time_to_live} s): it would expire before anyone could see it"
        )
    with tracing.sending(queue.queue_name, body) as body:  # tracing: the journey goes on
        return queue.send_message(
            codec.encode(body), time_to_live=time_to_live, visibility_timeout=delay or None
        )


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
