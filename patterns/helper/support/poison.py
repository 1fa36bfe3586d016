"""Poison records: what a message moved to `<queue>-poison` carries besides its body (the
reason, where it came from, how often it was delivered), and its body kept in a blob when the
record would not fit in a message. consume.Inbox.poison writes them; redrive and peek read them.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from azure.storage.queue import QueueMessage

from patterns.helper import Fatal, codec, connect
from patterns.helper.support import outage
from patterns.helper.support.lines import describe

CONTAINER = "poison-records"  # bodies too big for a record: <queue>-poison/<message id>
KEYS = {"reason", "source_queue", "dequeue_count", "poisoned_at", "message_id"}  # and a body
log = logging.getLogger("patterns")


def record(queue: str, message: QueueMessage, reason: str) -> str:
    """The text of a poison record for `message`, received from `queue`. If it would not fit
    in a message, its body goes to a blob and the record refers to it (body_blob); if the blob
    service cannot take it either, the text is the bare body (nothing lost; the reason is in
    the log)."""
    fields: dict[str, Any] = {
        "reason": reason,
        "source_queue": queue,
        "dequeue_count": message.dequeue_count,
        "poisoned_at": datetime.now(timezone.utc).isoformat(),
        "message_id": message.id,
        "body": message.content,
    }
    try:
        return codec.encode(fields)
    except codec.Unsendable:
        pass
    from patterns.helper.support import blobs  # only a record this big needs the blob service

    name = f"{queue}{connect.POISON_SUFFIX}/{message.id}"
    body = message.content or ""
    try:
        blobs.container(CONTAINER).upload_blob(name, body.encode("utf-8"), overwrite=True)
    except (Fatal, *connect.FAILED) as error:
        log.warning(
            f"could not store the body of {describe(message)} in a blob "
            f"({outage.in_short(error)}); its poison copy is the bare body"
        )
        return body
    del fields["body"]
    fields["body_blob"] = {"container": CONTAINER, "blob": name}
    return codec.encode(fields)
