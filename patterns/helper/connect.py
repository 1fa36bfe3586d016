"""Connect: the one queue client per process, queue names, opening a queue, sending a message."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from azure.core import exceptions as sdk
from azure.storage.queue import QueueClient, QueueMessage, QueueServiceClient

from patterns.helper import Fatal, codec
from patterns.helper.support import encoding, retries, settings, tracing

POISON_SUFFIX = "-poison"  # the poison queue of X is X-poison (the Azure Functions convention)
MAX_BATCH = 32  # the service hands out (and lets us peek at) at most 32 messages per call
NEVER_EXPIRE = -1  # time_to_live for poison and rejected records: someone must look at them
TIME_TO_LIVE = 7 * 24 * 3600  # the service's default: a message lives 7 days
UNREACHABLE = (sdk.ServiceRequestError, sdk.ServiceResponseError)  # no answer: down, hung...
FAILED = (sdk.HttpResponseError, *UNREACHABLE)  # a request refused, or never answered
NAME = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]$")
log = logging.getLogger("patterns")


def queue_name(text: str, *, consumed: bool = False, kind: str = "queue") -> str:
    """`text` if it is a valid queue (or blob container) name: 3-63 chars, a-z 0-9, single
    hyphens; else Fatal. A queue that is `consumed` needs room for `<name>-poison`: at most 56
    characters (producers check their queues so too: nothing is sent where no one consumes)."""
    if not (3 <= len(text) <= 63 and NAME.match(text)):
        raise Fatal(
            f"invalid {kind} name {text!r}: use 3-63 lowercase letters, digits and single "
            "hyphens, starting and ending with a letter or digit"
        )
    if consumed and len(text) > (most := 63 - len(POISON_SUFFIX)):
        raise Fatal(
            f"queue name {text!r} is {len(text)} characters: a queue that is consumed may have "
            f"at most {most}, so that its poison queue '<name>{POISON_SUFFIX}' fits in 63"
        )
    return text


_service: QueueServiceClient | None = None


def service() -> QueueServiceClient:
    """The one queue service client of this process, made on first use from the settings (see
    support/settings.py), giving up on a dead endpoint within seconds (support/retries.py)."""
    global _service
    if _service is None:
        encoding.current()  # a bad setting stops the script here, before any request
        tracing.start()  # so do tracing settings that cannot work; says where spans go
        _service = settings.client(QueueServiceClient, retries.options(retries.FirstRequestProbe))
        encoding.say_which()
    return _service


def open_queue(name: str) -> QueueClient:
    """A client for queue `name`, created if it does not exist: scripts start in any order."""
    queue = service().get_queue_client(queue_name(name))
    for _ in range(12):  # x 5 s: a deleted queue's name is reusable after 30 s or more
        try:
            queue.create_queue()
            log.info(f"created queue '{name}'")
            return queue
        except sdk.ResourceExistsError as error:
            if error.error_code != "QueueBeingDeleted":
                return queue  # already there: exactly what we wanted
            log.info(f"queue '{name}' is still being deleted by the service; waiting")
            time.sleep(5)
    raise Fatal(f"queue '{name}' is still being deleted; try again in a minute")


def send_json(
    queue: QueueClient, body: Mapping[str, Any], time_to_live: int | None = None, delay: int = 0
) -> QueueMessage:
    """Send one JSON message, which expires after `time_to_live` seconds unless taken; `delay`
    (seconds) keeps it invisible until then: it lives its delay plus the usual 7 days."""
    if delay and time_to_live is None:
        time_to_live = delay + TIME_TO_LIVE  # a time to live runs from the send, delay and all
    if delay and time_to_live != NEVER_EXPIRE and delay >= time_to_live:
        raise Fatal(
            f"a delay of {delay} s must be shorter than the message's time to live "
            f"({time_to_live} s): it would expire before anyone could see it"
        )
    with tracing.sending(queue.queue_name, body) as body:  # tracing: the journey goes on
        return queue.send_message(
            codec.encode(body), time_to_live=time_to_live, visibility_timeout=delay or None
        )
