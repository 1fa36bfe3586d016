"""Redrive: move messages from a poison queue back to the queue they came from.

    python patterns/tools/redrive.py tasks-queue              # all of tasks-queue-poison
    python -m patterns.tools.redrive tasks-queue --count 2    # only the first 2

Fix the cause first (the bug, the bad data, AZURE_QUEUE_MESSAGE_ENCODING), then redrive: each
message goes back with its original body, plain or Base64 as its sender wrote it, whatever the
setting here - the poison record's reason and counters are dropped - as a new message, so
consumers get --max-attempts fresh tries. Each message is sent to QUEUE first and deleted from
the poison queue only then: stopped halfway (Ctrl+C, a crash), nothing is lost; at worst one
message is in both queues. A record whose body was too big for it keeps the body in a blob
(claim-check): the body is read back from there, and the blob deleted once the message moved.

A poison record is input like any message: a body blob is followed only inside poison-records,
under `<queue>-poison/`, and only when it could have been a message (64 KiB of text at most).
A record that cannot be moved stays in the poison queue, one line says why, the rest move on.
"""

from __future__ import annotations

import logging
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobClient
from azure.storage.queue import QueueMessage

from patterns.helper import BadMessage, cli, connect, consume
from patterns.helper.support import blobs, encoding, flags, limits, outage, poison
from patterns.helper.support.lines import id_in


def unwrap(text: str, poison_name: str) -> tuple[str, dict[str, Any] | None, BlobClient | None]:
    """(original body, poison record, the blob the body was read from) for a poison message
    written by consume.Inbox.poison; (text, None, None) for anything else - e.g. a body that
    could not be stored either, kept as it was. BadMessage: a record to leave where it is."""
    record = encoding.json_of(text)  # written in base64 mode: Base64 itself
    if not (isinstance(record, dict) and record.keys() >= poison.KEYS):
        return text, None, None
    if not (isinstance(record["source_queue"], str) and isinstance(record["reason"], str)):
        raise BadMessage("a poison record whose source_queue or reason is not text")
    if isinstance(record.get("body"), str):
        return record["body"], record, None
    if "body_blob" in record:
        blob = body_blob(record["body_blob"], poison_name)
        return read_body(blob), record, blob
    return text, None, None


def body_blob(where: Any, poison_name: str) -> BlobClient:
    """The blob a record keeps its body in. Trust: a poison record is input like any message,
    so only the poison-records container, only this poison queue's blobs; checked before any
    request (a forged record could otherwise copy any blob into the queue, then delete it)."""
    container, name = blobs.inside(where, poison.CONTAINER, f"{poison_name}/")
    return blobs.service().get_blob_client(container, name)


def read_body(blob: BlobClient) -> str:
    """A record's body from its blob: at most a queue message's size, UTF-8 text."""
    try:
        properties = blob.get_blob_properties()  # the size first: no download of a wrong one
        if properties.size > limits.MAX_MESSAGE_BYTES:
            raise BadMessage(
                f"its body blob is {properties.size} bytes, more than a queue message holds"
            )
        data = blob.download_blob(
            etag=properties.etag, match_condition=MatchConditions.IfNotModified
        ).readall()
    except ResourceNotFoundError:  # deleted by someone
        raise BadMessage("its body blob is gone") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("its body blob is not UTF-8 text") from None


def label(body: str, message: QueueMessage) -> str:
    """The application id of a body, if it has one (codec's rule), else the service's id."""
    found = id_in(encoding.json_of(body))
    return found[1][:80] if found else f"message {message.id}"


def delete_body_blob(blob: BlobClient, log: logging.Logger) -> None:
    """Delete a record's body blob once its message is back in its queue."""
    try:
        blob.delete_blob()
    except ResourceNotFoundError:
        pass  # already gone: what we wanted
    except connect.FAILED as error:
        log.warning(
            f"could not delete blob {blob.container_name}/{blob.blob_name} "
            f"({outage.in_short(error)}): an orphan now"
        )


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "queue", type=flags.consumed_queue, help="the queue to refill from QUEUE-poison"
    )
    parser.add_argument(
        "--count",
        type=cli.whole_number(least=1),
        default=None,
        metavar="N",
        help="move at most N messages (default: all that are in the poison queue now)",
    )
    args = parser.parse_args()
    log = cli.logger("redrive")
    poison_name = args.queue + connect.POISON_SUFFIX
    poisoned_queue = connect.service().get_queue_client(poison_name)
    try:
        waiting = poisoned_queue.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        log.info(f"nothing to redrive: there is no queue '{poison_name}'")
        return 0
    # Never more than were there at the start: a consumer that poisons them again at once
    # must not make this loop for ever.
    limit = min(args.count, waiting) if args.count is not None else waiting
    target = connect.open_queue(args.queue)
    stop = cli.Shutdown()
    moved = kept = 0

    # Leaving the Inbox hands back, at once, anything received but not moved (Ctrl+C, or a
    # record left where it is). max_attempts=None: a record we receive again and again (left
    # where it is) is never poisoned a second time.
    with consume.Inbox(poison_name, visibility_timeout=60, max_attempts=None) as poisoned:
        while moved < limit and moved + kept < waiting and not stop.requested:
            batch = poisoned.receive_batch(min(connect.MAX_BATCH, limit - moved))
            if not batch:
                break  # the rest is held by someone else, or gone
            for message in batch:
                if stop.requested:
                    break
                try:
                    body, record, blob = unwrap(message.content or "", poison_name)
                    target.send_message(body)  # first the copy ...
                except (BadMessage, *connect.FAILED) as error:
                    kept += 1  # one bad record must not hold up the ones behind it
                    why = str(error) if isinstance(error, BadMessage) else outage.in_short(error)
                    log.warning(f"left message {message.id} in '{poison_name}': {why}")
                    continue
                if record is not None and record["source_queue"] != args.queue:
                    log.warning(
                        f"message {message.id} came from '{record['source_queue']}', "
                        f"not '{args.queue}'; moving it to '{args.queue}' as asked"
                    )
                # ... then the original (and a body's blob): an interruption loses nothing
                if poisoned.delete(message) and blob is not None:
                    delete_body_blob(blob, log)
                moved += 1
                why = f" (it had failed: {record['reason']})" if record is not None else ""
                log.info(f"moved {label(body, message)} back to '{args.queue}'{why}")

    left = poisoned_queue.get_queue_properties().approximate_message_count
    log.info(
        f"moved {moved} message(s) from '{poison_name}' back to '{args.queue}'; "
        f"{left} left in '{poison_name}'" + (f" ({kept} could not be moved)" if kept else "")
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
