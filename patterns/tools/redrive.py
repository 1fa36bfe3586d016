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
"""

from __future__ import annotations

import json
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueMessage

from patterns.helper import cli, codec, connect, consume

RECORD_KEYS = {"reason", "source_queue", "dequeue_count", "poisoned_at", "message_id"}


def unwrap(text: str) -> tuple[str, dict[str, Any] | None]:
    """(original body, poison record) for a poison message written by consume.Inbox.poison,
    its body read from a blob if it was too big for the record; (text, None) for anything
    else - e.g. a body that could not be stored either, kept as it was."""
    try:
        record = json.loads(codec.readable(text)[0])  # written in base64 mode: Base64 itself
    except json.JSONDecodeError:
        return text, None
    if not (isinstance(record, dict) and record.keys() >= RECORD_KEYS):
        return text, None
    if isinstance(record.get("body"), str):
        return record["body"], record
    if isinstance(where := record.get("body_blob"), dict):
        blob = connect.blob_service().get_blob_client(where["container"], where["blob"])
        return blob.download_blob().readall().decode("utf-8"), record
    return text, None


def label(body: str, message: QueueMessage) -> str:
    """The application id of a body, if it has one, else the service's message id."""
    try:
        data = json.loads(codec.readable(body)[0])
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        for key in ("id", "order_id", "correlation_id"):
            if isinstance(data.get(key), str | int):
                return str(data[key])
    return f"message {message.id}"


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "queue", type=cli.consumed_queue, help="the queue to refill from QUEUE-poison"
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
    poison = connect.service(log).get_queue_client(poison_name)
    try:
        waiting = poison.get_queue_properties().approximate_message_count
    except ResourceNotFoundError:
        log.info(f"nothing to redrive: there is no queue '{poison_name}'")
        return 0
    # Never more than were there at the start: a consumer that poisons them again at once
    # must not make this loop for ever.
    limit = min(args.count, waiting) if args.count is not None else waiting
    target = connect.open_queue(args.queue, log)
    stop = cli.Shutdown()
    moved = 0

    # Leaving the Inbox hands back, at once, anything received but not moved (Ctrl+C).
    # max_attempts=None: a record we receive again and again (left where it is) is never
    # poisoned a second time.
    with consume.Inbox(poison_name, log, visibility_timeout=60, max_attempts=None) as poisoned:
        while moved < limit and not stop.requested:
            batch = poisoned.receive(min(connect.MAX_BATCH, limit - moved))
            if not batch:
                break  # the rest is held by someone else, or gone
            for message in batch:
                if stop.requested:
                    break
                try:
                    body, record = unwrap(message.content or "")
                except ResourceNotFoundError:  # its body's blob was deleted by someone
                    log.warning(f"message {message.id}: its body's blob is gone; left as it is")
                    continue
                if record is not None and record["source_queue"] != args.queue:
                    log.warning(
                        f"message {message.id} came from '{record['source_queue']}', "
                        f"not '{args.queue}'; moving it to '{args.queue}' as asked"
                    )
                target.send_message(body)  # first the copy ...
                # ... then the original (and a body's blob): an interruption loses nothing
                if poisoned.delete(message) and record is not None and "body_blob" in record:
                    where = record["body_blob"]
                    blob = connect.blob_service().get_blob_client(where["container"], where["blob"])
                    blob.delete_blob()
                moved += 1
                why = f" (it had failed: {record['reason']})" if record is not None else ""
                log.info(f"moved {label(body, message)} back to '{args.queue}'{why}")

    left = poison.get_queue_properties().approximate_message_count
    log.info(
        f"moved {moved} message(s) from '{poison_name}' back to '{args.queue}'; "
        f"{left} left in '{poison_name}'"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
