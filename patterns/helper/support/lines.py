"""Log lines: one event, one line, `HH:MM:SS.mmm role[pid] text`, flushed per line. A message's
text reaches the terminal with its control characters escaped, so that no message can clear
the screen, recolour it or add lines to it; a message is named by its ids (describe).
"""

from __future__ import annotations

import logging
import re
import sys

from azure.storage.queue import QueueMessage

from patterns.helper import codec
from patterns.helper.support import encoding

# Control characters (C0, DEL, C1) and the Unicode line separators: what a message could use
# to clear the screen, recolour it, or add lines to the output. And half surrogate pairs
# ("\ud800" in JSON), which no terminal can be sent.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with its control characters escaped as Python writes them (\\n, \\x1b,
    \\u2028): for anything from a message that reaches a terminal."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def logger(role: str) -> logging.Logger:
    """The process's log, "patterns": the script's lines and the helper's (a queue created, a
    message poisoned, an outage) alike. A second call (tests, in one process) replaces the first."""
    log = logging.getLogger("patterns")
    # A message can carry text stdout cannot encode (half a surrogate pair, sent as "\ud800"
    # in JSON): print it escaped rather than lose the line to a "Logging error" traceback.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(sys.stdout)  # StreamHandler flushes after every line
    handler.setFormatter(LineFormatter(role))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


class LineFormatter(logging.Formatter):
    """`HH:MM:SS.mmm role[pid] text`; a warning or error says so after the role."""

    def __init__(self, role: str) -> None:
        super().__init__(f"%(asctime)s.%(msecs)03d {role}[%(process)d] %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        # One event, one line: a line break inside a value (an id, a reason) is shown as \n,
        # an escape sequence as \x1b.
        text = printable(super().format(record))
        if record.levelno >= logging.WARNING:
            head, _, tail = text.partition("] ")
            return f"{head}] {record.levelname.lower()}: {tail}"
        return text


def id_in(body: object) -> tuple[str, str] | None:
    """(key, id) of the first application id a body carries (codec's rule), for log lines and
    traces; None if it has none."""
    if isinstance(body, dict):
        for key in codec.ID_KEYS:
            if codec.is_id(body.get(key)):
                return key, body[key]
    return None


def describe(message: QueueMessage) -> str:
    """'message <service id> (id task-001)': the service's id, and beside it the application's
    id when the body has one (plain or Base64)."""
    found = id_in(encoding.json_of(message.content or ""))
    if found is None:
        return f"message {message.id}"
    key, value = found
    return f"message {message.id} ({key} {value if len(value) <= 80 else value[:80] + '...'})"
