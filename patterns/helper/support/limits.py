"""The service's limits on message text: 64 KiB as sent, counted after XML escaping and with
the XML envelope around it; and the characters XML 1.0 forbids, which a message must not hold.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape as xml_escape

MAX_MESSAGE_BYTES = 64 * 1024  # the service's limit for one message request
XML_ENVELOPE_BYTES = 100  # <QueueMessage><MessageText>...</MessageText></QueueMessage> and header
# Characters XML 1.0 does not allow: a queue message holding one cannot be handed out again
# (Azurite answers 500 to every receive that would return it: see quirks.py).
XML_FORBIDDEN = re.compile(r"[^\t\n\r\x20-\uD7FF\uE000-\uFFFD\U00010000-\U0010FFFF]")


def size_as_sent(text: str) -> int:
    """Bytes a message takes in the request: XML-escaped UTF-8 plus the XML envelope."""
    return len(xml_escape(text).encode("utf-8")) + XML_ENVELOPE_BYTES


def xml_safe(text: str, body: Mapping[str, Any]) -> str:
    """`text`, the JSON of `body`; if it holds a character XML forbids (U+FFFF, half a surrogate
    pair), the same JSON in plain ASCII, every such character a \\uXXXX escape."""
    return json.dumps(body) if XML_FORBIDDEN.search(text) else text
