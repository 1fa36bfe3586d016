"""Codec: the one place a message body is written (`encode`) and read (`parse_json`, `app_id`): a
JSON object whose application id survives copies and hops (the service's id is per copy)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from azure.storage.queue import QueueMessage

from patterns.helper import BadMessage, Fatal
from patterns.helper.support import encoding, limits

ID_KEYS = ("id", "order_id", "correlation_id", "payment_id")  # where messages carry their app id


class Unsendable(Fatal, BadMessage):
    """A body the service would refuse (over 64 KiB): a producer stops with one line; a consumer
    whose forward it was poisons the message it came from (it could never succeed)."""


def encode(body: Mapping[str, Any]) -> str:
    """JSON text for a message, refusing what the service would refuse (> 64 KiB as sent)."""
    try:
        text = json.dumps(body, ensure_ascii=False)
    except RecursionError:
        raise Unsendable("message is nested too deeply to be written as JSON") from None
    text, cost = encoding.wrap(limits.xml_safe(text, body))  # Base64 for Azure Functions
    if (size := limits.size_as_sent(text)) > limits.MAX_MESSAGE_BYTES:
        raise Unsendable(
            f"message is {size} bytes as sent{cost}; a queue message can hold at most 64 KiB: "
            "store big payloads elsewhere (e.g. a blob) and send a reference"
        )
    return text


def parse_json(message: QueueMessage) -> dict[str, Any]:
    """The message body as a JSON object, or BadMessage (which sends it to poison)."""
    text = encoding.text_of(message.content or "")  # decoded, if it came as Base64
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
    """The application id of a message body (is_id), or BadMessage (which sends it to poison).
    A missing or null id is not an id - two messages without one are not duplicates - nor 7."""
    value = body.get(key)
    if value is None:
        raise BadMessage(f"{key} is missing")
    if not is_id(value):
        shown = json.dumps(value, ensure_ascii=False)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        raise BadMessage(f"{key} must be a non-empty string of printable characters, got {shown}")
    return value


def is_id(value: object) -> bool:
    """app_id's rule: a non-empty string of printable characters."""
    return isinstance(value, str) and value.strip() != "" and value.isprintable()
