"""Base64 message text, as an Azure Functions queue trigger expects it by default; and the one
reader of JSON from text that may be Base64 (tools, log lines, tracing, poison records).

With AZURE_QUEUE_MESSAGE_ENCODING=base64 the JSON text travels Base64-encoded (the SDK's
TextBase64EncodePolicy does the same). Reading decodes here, message by message, rather than
with the SDK's TextBase64DecodePolicy: that policy decodes a whole received batch at once, so
one message in the other encoding would fail the receive of every message with it. Here such
a message fails alone, as a BadMessage that names the mismatch, and goes to poison with its
text exactly as it came.
"""

from __future__ import annotations

import base64
import functools
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from patterns.helper import BadMessage, Fatal
from patterns.helper.support import settings

VAR = settings.MESSAGE_ENCODING_VAR
ENCODINGS = ("text", "base64")
BASE64_WHITE_SPACE = re.compile(r"[ \t\r\n]")  # what .NET's Base64 decoder skips


def setting(environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None) -> str:
    """How message text is written and read: "text" (the default: JSON as it is) or "base64".
    Any other value is a Fatal, said in one line."""
    found = settings.lookup(VAR, environ, dotenv_file)
    if found is None:
        return "text"
    value, where = found
    if value.lower() not in ENCODINGS:
        raise Fatal(
            f"{VAR} in {where} is {value[:30]!r}: use text (the default) or base64 (what an "
            "Azure Functions queue trigger expects)"
        )
    return value.lower()


@functools.cache
def current() -> str:
    """This process's encoding (setting()), read once."""
    return setting()


def say_which() -> None:
    """In base64 mode, say so at start: a learner must know why the text looks odd."""
    if current() == "base64":
        logging.getLogger("patterns").info(
            f"messages are sent and read as Base64 ({VAR}=base64), as an Azure Functions queue "
            "trigger expects"
        )


def wrap(text: str) -> tuple[str, str]:
    """(the text as sent, and in base64 mode a note for a size error: what it costs)."""
    if current() != "base64":
        return text, ""
    wrapped = base64.b64encode(text.encode("utf-8")).decode("ascii")
    return wrapped, f" (Base64, as {VAR}=base64 asks: 4/3 of the JSON)"


def text_of(raw: str) -> str:
    """A message's text as its sender meant it: decoded from Base64 in base64 mode. A message
    in the other encoding is a BadMessage that says so (it goes to poison as it came)."""
    if current() == "base64":
        data = _unbase64(raw)
        if data is None:
            raise BadMessage(
                "the text is plain, not Base64 (as from a client without TextBase64EncodePolicy); "
                f"unset {VAR} (or set it to text) to read such messages"
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("the text is Base64, but not of UTF-8 text") from None
    if _base64_text(raw) is not None:
        raise BadMessage(
            "the text looks Base64-encoded (as from a Functions output binding or a client with "
            f"TextBase64EncodePolicy); set {VAR}=base64 to read such messages"
        )
    return raw


def readable(text: str) -> tuple[str, bool]:
    """(text, False), or (the decoded text, True) when it is Base64 of printable UTF-8 text:
    for tools and log lines, which show a message in either encoding."""
    decoded = _base64_text(text)
    return (text, False) if decoded is None else (decoded, True)


def json_of(text: str) -> Any:
    """The JSON value in `text`, plain or Base64 (whatever this process's setting); None if it
    is neither. For what only looks at a message (a log line, a trace, a tool), never refuses."""
    try:
        return json.loads(readable(text)[0])
    except (ValueError, RecursionError):  # not JSON, or too deep or big a number for Python
        return None


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
