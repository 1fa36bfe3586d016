"""When the service is away: what counts as an outage, one warning per outage, and the one line
a script says when the service cannot be reached, refuses it, or is not a queue service at all.

An outage is not a message's fault: a consumer leaves the message to come back, and the
delivery it ended is not counted against the message (`Excused`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError

from azure.core.exceptions import (
    ClientAuthenticationError,
    DecodeError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestTimeoutError,
    ServiceResponseTimeoutError,
)
from azure.storage.queue import QueueMessage

from patterns.helper import connect
from patterns.helper.support import retries, settings

log = logging.getLogger("patterns")


def is_away(error: BaseException) -> bool:
    """The service is away or failing: no answer at all, or a 5xx answer (a throttled queue's
    503 Server Busy too)."""
    if isinstance(error, connect.UNREACHABLE):
        return True
    return isinstance(error, HttpResponseError) and (error.status_code or 0) >= 500


def in_short(error: BaseException) -> str:
    """'service unreachable', '503 Service Unavailable', or the error's type, for a log line."""
    if isinstance(error, connect.UNREACHABLE):
        return "service unreachable"
    if isinstance(error, HttpResponseError):
        return f"{error.status_code} {error.reason}"
    return type(error).__name__


class Outage:
    """One warning when a service goes away - however many queues and threads of a consumer
    notice it - and one line when it answers again."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._lock = threading.Lock()
        self.active = False

    def warn_if_away(self, error: BaseException) -> bool:
        """True if `error` says the service is away, warning about it once per outage."""
        if not is_away(error):
            return False
        if getattr(error, "outage_of", self.service) != self.service:
            return True  # another service's, warned about by its own Outage (see watch())
        with self._lock:
            warn, self.active = not self.active, True
        if warn and self.service == "queue":
            what = f"the queue service answers {in_short(error)}"
            if isinstance(error, connect.UNREACHABLE):
                what = unreachable_message(error)
            log.warning(f"{what}; retrying with backoff")
        elif warn:
            what = "cannot be reached"
            if not isinstance(error, connect.UNREACHABLE):
                what = f"answers {in_short(error)}"
            log.warning(
                f"the {self.service} service at {self.endpoint()} {what}; the messages "
                "that need it are left to come back (not counted as failed attempts)"
            )
        return True

    def endpoint(self) -> str:
        """This service's address, fit to print (imported when asked: only some lessons have
        blobs or tables)."""
        if self.service == "table":
            from patterns.helper.support import tables

            return tables.endpoint()
        from patterns.helper.support import blobs

        return blobs.endpoint()

    def over(self) -> None:
        """The service answered: if it was away, say it is back."""
        with self._lock:
            was, self.active = self.active, False
        if was:
            log.info(f"the {self.service} service answers again; carrying on")

    @contextmanager
    def watch(self) -> Iterator[None]:
        """Calls to this service in the block: an outage is warned about once, as this
        service's, and the first answer after it says it is over. The error goes on, marked,
        so that settle() leaves the message to come back without blaming the queue service."""
        try:
            yield
        except Exception as error:
            if self.warn_if_away(error):
                error.outage_of = self.service  # type: ignore[attr-defined]
            else:
                self.over()  # it answered (a 404 is an answer)
            raise
        self.over()


queue_service = Outage("queue")
blob_service = Outage("blob")
table_service = Outage("table")


def deleted(error: BaseException, name: str) -> bool:
    """True if `error` says queue `name` was deleted under its consumer, which makes it again."""
    if not isinstance(error, ResourceNotFoundError):
        return False
    log.warning(f"queue '{name}' was deleted; creating it again")
    try:
        connect.open_queue(name)
    except Exception as again:
        if not queue_service.warn_if_away(again):
            raise
    return True


class Excused:
    """Deliveries that an outage ended in this process, per message: each comes back, and is
    not counted as a failed attempt (not the message's doing). Shared by a consumer's threads.

    A receive whose answer was lost on the way (the service took the request, then went away)
    may have taken messages this consumer never saw: they come back a delivery higher. So any
    message that was already in the queue then is excused one delivery more (a minute's
    leeway between our clock and the service's)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._lost_at: datetime | None = None  # when a receive's answer was last lost

    def failed_receive(self, error: BaseException) -> bool:
        """After a receive that failed: True if the service is away (warned once per outage)."""
        if not queue_service.warn_if_away(error):
            return False
        # Sent, but the answer never came - or so it may have been: the client retries once, so
        # a lost answer followed by a refused retry surfaces as the refusal (seen under load).
        if isinstance(error, connect.UNREACHABLE):
            self._lost_at = datetime.now(timezone.utc) + timedelta(minutes=1)
        return True

    def add(self, message: QueueMessage) -> None:
        with self._lock:
            self._counts[message.id] = self._counts.get(message.id, 0) + 1
            if len(self._counts) > 10_000:  # ids of messages gone elsewhere: the oldest go
                del self._counts[next(iter(self._counts))]

    def count(self, message: QueueMessage) -> int:
        """Deliveries of `message` not to count."""
        lost, inserted = self._lost_at, message.inserted_on
        with self._lock:
            return self._counts.get(message.id, 0) + bool(lost and inserted and inserted <= lost)

    def forget(self, message: QueueMessage) -> None:
        """The message is gone (done or poisoned): nothing more to remember about it."""
        with self._lock:
            self._counts.pop(message.id, None)


# --- what a script says when it cannot go on --------------------------------------------------


def endpoint() -> str:
    """The queue service's address, fit to print: no SAS token, no password, no trailing /."""
    return settings.printable_url(connect.service().url)


def _is_local() -> bool:
    return urlsplit(connect.service().url).hostname in ("127.0.0.1", "localhost", "::1")


def unreachable_message(error: BaseException) -> str:
    """One line for a transport failure: nothing answers at all (refused, unknown host) or the
    endpoint takes the request but does not answer (hung, paused, a firewall that drops
    packets)."""
    where, port, local = endpoint(), urlsplit(connect.service().url).port, _is_local()
    if isinstance(error, ServiceResponseTimeoutError | ServiceRequestTimeoutError):
        waited = (
            retries.READ_TIMEOUT
            if isinstance(error, ServiceResponseTimeoutError)
            else retries.CONNECT_TIMEOUT
        )
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
    if isinstance(error, connect.UNREACHABLE):
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
        if answer is not None and "x-ms-request-id" not in answer.headers:  # see retries.py
            return not_a_queue_service(error.status_code, answer.headers.get("Server")), 2
        first = (error.message or "").splitlines()[0] if error.message else error.reason
        return f"the queue service refused the request: {first}", 1
    return None
