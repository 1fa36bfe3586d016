"""The blobs the tutorial leaves, and which of them are orphans: the one place status.py and
cleanup.py read them from.

Two containers: claim-check payloads (`<queue>/<id>`) and the bodies of poison records too big
for a message (`<queue>-poison/<message id>`). A blob is an *orphan* when no message refers to
it any more: a producer crashed between its upload and its send, or a consumer between its
two deletes. Only a peek shows what messages refer to, and a peek sees at most 32 messages,
none of those held by a consumer or delayed. So a blob is called an orphan only when its queue
and that queue's poison queue were seen whole (every message in them visible, 32 at most) and
none of them refers to it, and it is older than `orphan_age` (a producer may be between its
upload and its send right now). Otherwise it is `unknown`: nothing is said that was not seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from patterns.helper import connect
from patterns.helper.support import encoding, poison

PAYLOADS_CONTAINER = "claim-check-payloads"  # the claim-check producer's default --container
CONTAINERS = (PAYLOADS_CONTAINER, poison.CONTAINER)
ORPHAN_AGE = 60  # seconds


@dataclass
class Blob:
    container: str
    name: str
    size: int
    age: float  # seconds since it was last written
    state: str  # "referenced", "orphan" or "unknown"

    @property
    def queue(self) -> str:
        """The queue whose messages may refer to it (the first part of its name)."""
        return self.name.split("/", 1)[0]

    @property
    def path(self) -> str:
        return f"{self.container}/{self.name}"


def references(body: Any) -> set[str]:
    """The blobs (`container/name`) a message body refers to: a claim check, a poison record's
    body kept in a blob, or either of them inside a poison record's body."""
    found: set[str] = set()
    if isinstance(body, str):
        body = encoding.json_of(body)  # Base64 too (Azure Functions mode)
    if not isinstance(body, dict):
        return found
    for where in (body, body.get("body_blob")):
        if isinstance(where, dict) and isinstance(where.get("blob"), str):
            found.add(f"{where.get('container')}/{where['blob']}")
    if isinstance(body.get("body"), str):
        found |= references(body["body"])
    return found


def _seen(queues: QueueServiceClient, name: str) -> tuple[set[str], bool]:
    """(blobs referred to by the visible messages of a queue, whether all of it was seen)."""
    queue = queues.get_queue_client(name)
    try:
        total = queue.get_queue_properties().approximate_message_count
        peeked = list(queue.peek_messages(max_messages=connect.MAX_BATCH))
    except ResourceNotFoundError:
        return set(), True  # no queue: no message refers to anything
    refs = set().union(*(references(m.content) for m in peeked))
    return refs, len(peeked) == total


def tutorial_blobs(
    blobs: BlobServiceClient, queues: QueueServiceClient, prefix: str = "", orphan_age: float = 0
) -> list[Blob]:
    """Every blob in the tutorial's containers whose name starts with `prefix`, with its state
    (orphan only if older than `orphan_age` seconds)."""
    now = datetime.now(timezone.utc)
    found: list[Blob] = []
    for container in CONTAINERS:
        try:
            listed = list(
                blobs.get_container_client(container).list_blobs(name_starts_with=prefix or None)
            )
        except ResourceNotFoundError:
            continue
        for item in listed:
            age = (now - item.last_modified).total_seconds() if item.last_modified else 0.0
            found.append(Blob(container, item.name, item.size or 0, age, "unknown"))
    seen: dict[str, tuple[set[str], bool]] = {}
    for blob in found:
        source = blob.queue.removesuffix(connect.POISON_SUFFIX)
        if source not in seen:
            refs, whole = _seen(queues, source)
            poison_refs, poison_whole = _seen(queues, source + connect.POISON_SUFFIX)
            seen[source] = (refs | poison_refs, whole and poison_whole)
        refs, whole = seen[source]
        if blob.path in refs:
            blob.state = "referenced"
        elif whole and blob.age >= orphan_age:
            blob.state = "orphan"
    return found
