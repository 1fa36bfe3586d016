"""Message bodies: the one place a body is written (`encode`) and read (`parse_json`, `app_id`).

Our messages are JSON objects that carry an application id (`id`, `order_id` or
`correlation_id`); the service's message id changes with every copy and is not identity. A
reference to a big body stored elsewhere (claim-check) would change these functions and
nothing else.

With AZURE_QUEUE_MESSAGE_ENCODING=base64 the JSON text travels Base64-encoded, as an Azure
Functions queue trigger expects by default (the SDK's TextBase64EncodePolicy does the same).
Reading decodes here, message by message, rather than with the SDK's TextBase64DecodePolicy:
that policy decodes a whole received batch at once, so one message in the other encoding would
fail the receive of every message with it. Here such a message fails alone, as a BadMessage
that names the mismatch, and goes to poison with its text exactly as it came.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from azure.storage.queue import QueueMessage

from patterns.helper import BadMessage, Fatal, settings

MAX_MESSAGE_BYTES = 64 * 1024  # the service's limit for one message request
XML_ENVELOPE_BYTES = 100  # <QueueMessage><MessageText>...</MessageText></QueueMessage> and header
# Characters XML 1.0 does not allow: a queue message holding one cannot be handed out again
# (Azurite answers 500 to every receive that would return it).
XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")
ID_KEYS = ("id", "order_id", "correlation_id")  # where our messages carry their application id
BASE64_WHITE_SPACE = re.compile(r"[ \t\r\n]")  # what .NET's Base64 decoder skips


class Unsendable(Fatal, BadMessage):
    """A body the service would refuse (over 64 KiB). A producer stops with one line (Fatal);
    a consumer whose forward it was poisons the message it came from (BadMessage): sending it
    again could never succeed."""


def size_as_sent(text: str) -> int:
    """Bytes a message takes in the request: XML-escaped UTF-8 plus the XML envelope."""
    return len(xml_escape(text).encode("utf-8")) + XML_ENVELOPE_BYTES


@functools.cache
def encoding() -> str:
    """The message encoding, "text" or "base64" (settings.message_encoding), read once."""
    return settings.message_encoding()


def encode(body: Mapping[str, Any]) -> str:
    """JSON text for a message (Base64-encoded in base64 mode), refusing what the service
    would refuse (> 64 KiB as sent)."""
    try:
        text = json.dumps(body, ensure_ascii=False)
    except RecursionError:
        raise Unsendable("message is nested too deeply to be written as JSON") from None
    if XML_FORBIDDEN.search(text):  # e.g. U+FFFF or half a surrogate pair: escape them all
        text = json.dumps(body)  # the same JSON, in plain ASCII (\uXXXX escapes)
    how = ""
    if encoding() == "base64":
        text = base64.b64encode(text.encode("utf-8")).decode("ascii")
        how = f" (Base64, as {settings.MESSAGE_ENCODING_VAR}=base64 asks: 4/3 of the JSON)"
    if size_as_sent(text) > MAX_MESSAGE_BYTES:
        raise Unsendable(
            f"message is {size_as_sent(text)} bytes as sent{how}; a queue message can hold at "
            "most 64 KiB: store big payloads elsewhere (e.g. a blob) and send a reference"
        )
    return text


def text_of(message: QueueMessage) -> str:
    """The message's text as its sender meant it: decoded from Base64 in base64 mode. A message
    in the other encoding is a BadMessage that says so (it goes to poison as it came)."""
    raw = message.content or ""
    if encoding() == "base64":
        data = _unbase64(raw)
        if data is None:
            raise BadMessage(
                "the text is plain, not Base64 (as from a client without TextBase64EncodePolicy); "
                f"unset {settings.MESSAGE_ENCODING_VAR} (or set it to text) to read such messages"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("the text is Base64, but not of UTF-8 text") from None
    if _base64_text(raw) is not None:
        raise BadMessage(
            "the text looks Base64-encoded (as from a Functions output binding or a client with "
            f"TextBase64EncodePolicy); set {settings.MESSAGE_ENCODING_VAR}=base64 to read such "
            "messages"
        )
    return raw


def readable(text: str) -> tuple[str, bool]:
    """(text, False), or (the decoded text, True) when it is Base64 of printable UTF-8 text:
    for tools and log lines, which show a message in either encoding."""
    decoded = _base64_text(text)
    return (text, False) if decoded is None else (decoded, True)


def _unbase64(text: str) -> bytes | None:
    """The bytes `text` is the Base64 of, or None. White space is ignored, as the .NET decoder
    of the Azure Functions host ignores it (Convert.FromBase64String), so line-wrapped Base64
    (76 columns, as MIME writes it) reads as Base64; any other stray character does not."""
    try:
        return base64.b64decode(BASE64_WHITE_SPACE.sub("", text), validate=True)
    except ValueError:
        return None


def _base64_text(text: str) -> str | None:
    """The text that `text` is the Base64 of, if it is valid Base64 of printable UTF-8 text;
    else None. Plain JSON never is ('{' is not in the Base64 alphabet), nor are most short words
    (they decode to bytes that are not UTF-8)."""
    data = _unbase64(text) if len(text) >= 4 else None
    try:
        decoded = data.decode("utf-8") if data else ""
    except UnicodeDecodeError:
        return None
    printable = all(c.isprintable() or c in "\t\n\r" for c in decoded)
    return decoded if decoded.strip() and printable else None


def parse_json(message: QueueMessage) -> dict[str, Any]:
    """The message body as a JSON object, or BadMessage (which sends it to poison)."""
    text = text_of(message)
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
        body = json.loads(readable(message.content or "")[0])
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
