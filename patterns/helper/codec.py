"""Message bodies: the one place a body is written (`encode`) and read (`parse_json`, `app_id`).

Our messages are JSON objects that carry an application id (`id`, `order_id` or
`correlation_id`); the service's message id changes with every copy and is not identity. A
different encoding (Base64 for Azure Functions) or a reference to a big body stored elsewhere
(claim-check) would change these functions and nothing else.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from azure.storage.queue import QueueMessage

from patterns.helper import BadMessage, Fatal

MAX_MESSAGE_BYTES = 64 * 1024  # the service's limit for one message request
XML_ENVELOPE_BYTES = 100  # <QueueMessage><MessageText>...</MessageText></QueueMessage> and header
# Characters XML 1.0 does not allow: a queue message holding one cannot be handed out again
# (Azurite answers 500 to every receive that would return it).
XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
ID_KEYS = ("id", "order_id", "correlation_id")  # where our messages carry their application id


class Unsendable(Fatal, BadMessage):
    """A body the service would refuse (over 64 KiB). A producer stops with one line (Fatal);
    a consumer whose forward it was poisons the message it came from (BadMessage): sending it
    again could never succeed."""


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


def app_id(body: Mapping[str, Any], key: str = "id") -> str:
    """The application id of a message body, or BadMessage (which sends it to poison): a
    non-empty string of printable characters. A missing or null id is not an id - two
    messages without one are not duplicates of each other - and 7 is not "7"."""
    value = body.get(key)
    if value is None:
        raise BadMessage(f"{key} is missing")
    if not _is_id(value):
        shown = _cut(json.dumps(value, ensure_ascii=False), 40)
        raise BadMessage(f"{key} must be a non-empty string of printable characters, got {shown}")
    return str(value)


def describe(message: QueueMessage) -> str:
    """'message <service id> (id task-001)' for log lines: the service's id, and beside it the
    application's id when the body has one."""
    try:
        body = json.loads(message.content or "")
    except (ValueError, RecursionError):
        body = None
    if isinstance(body, dict):
        for key in ID_KEYS:
            if _is_id(value := body.get(key)):
                return f"message {message.id} ({key} {_cut(value, 80)})"
    return f"message {message.id}"


def _is_id(value: object) -> bool:
    return isinstance(value, str) and value.strip() != "" and value.isprintable()


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
