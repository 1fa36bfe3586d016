"""Claim-check - the consumer: fetches each payload, does the work, deletes message then blob.

It fetches each payload (from its blob, or inline), does the work, and deletes the blob only
after the message.

    python patterns/claim_check/consumer.py
    python -m patterns.claim_check.consumer --work-seconds 1

The message is deleted first, its blob after. If the consumer dies after the work, the message
comes back and finds its blob still there. If it dies between the two deletes, the blob is an
orphan (status shows it, cleanup removes it): nothing lost. A reference to a blob that is gone
cannot ever be processed: it goes to the poison queue with that reason.

A message is input from anyone who can write to the queue: a reference is followed only into
--container, under `<queue>/` (where the producer puts them), and only to a blob of the size
the message declares, at most --max-bytes. Anything else goes to poison before any request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from argparse import Namespace
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

from patterns.helper import BadMessage, cli, codec, connect, consume
from patterns.helper.support import blobs, outage  # this lesson's concern: blobs, and their outages

# The biggest payload the producer sends (its --size limit). Memory is not what it guards (a
# payload is read 4 MiB at a time and never held whole): it stops a forged claim check from
# making the consumer download gigabytes, again on every delivery.
MAX_BYTES = 256 * 1024 * 1024


def declared_size(task: dict[str, Any]) -> int:
    """The payload's size as the message declares it: a JSON whole number (not "1000")."""
    size = task.get("size")
    if type(size) is not int or size < 0:  # bool is an int too: not a size
        raise BadMessage(f"size must be a whole number of bytes, got {json.dumps(size)[:40]}")
    return size


def fetch(task: dict[str, Any], args: Namespace) -> tuple[int, str, str]:
    """(size, sha256, where from) of the payload: the blob the message refers to, read in
    chunks (never held whole), or the data inline in the message."""
    size = declared_size(task)
    if "blob" not in task:
        try:
            data = base64.b64decode(task.get("data", ""), validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise BadMessage("data is not base64") from None
        return len(data), hashlib.sha256(data).hexdigest(), "inline"
    # Trust: only the producer's container, only this queue's blobs; checked before any request.
    container, name = blobs.inside(task, args.container, f"{args.queue}/")
    where = f"{container}/{name}"
    if size > args.max_bytes:
        raise BadMessage(f"the message says {size} bytes, over --max-bytes {args.max_bytes}")
    blob = blobs.service().get_blob_client(container, name)
    digest, read = hashlib.sha256(), 0
    with outage.blob_service.watch():  # the blob service away: the message comes back
        try:
            real = blob.get_blob_properties()  # the size first: no download of a wrong one
            if real.size != size:
                raise BadMessage(f"its payload blob is {real.size} bytes, the message says {size}")
            if size:  # exactly the declared bytes of exactly that version of the blob
                download = blob.download_blob(
                    offset=0, length=size, etag=real.etag,
                    match_condition=MatchConditions.IfNotModified,
                )  # fmt: skip
                for chunk in download.chunks():
                    digest.update(chunk)  # the work can go on chunk by chunk too
                    read += len(chunk)
        except ResourceNotFoundError:  # deleted by someone: no retry can bring it back
            raise BadMessage(f"its payload blob {where} is missing") from None
        except ResourceModifiedError:
            raise BadMessage(f"its payload blob {where} changed while it was read") from None
    return read, digest.hexdigest(), f"from blob {where}"


def check(task: dict[str, Any], size: int, sha256: str) -> None:
    """The work: here, make sure the payload is the one the producer sent."""
    if size != task["size"]:
        raise BadMessage(f"payload is {size} bytes, the message says {task['size']}")
    if sha256 != task.get("sha256"):
        raise BadMessage("payload does not match its sha256")


def delete_blob(task: dict[str, Any], log: logging.Logger) -> None:
    """Delete a payload's blob once its message is gone for good. If that fails, the blob is
    an orphan: nothing is lost, and status shows it, cleanup removes it."""
    where = f"{task['container']}/{task['blob']}"
    try:
        with outage.blob_service.watch():
            blobs.service().get_blob_client(task["container"], task["blob"]).delete_blob()
        log.info(f"deleted blob {where}")
    except ResourceNotFoundError:
        log.info(f"blob {where} was already gone")
    except connect.FAILED as error:
        log.warning(f"could not delete blob {where} ({outage.in_short(error)}): an orphan now")


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "claim-check-queue", "queue to consume")
    parser.add_argument(
        "--container", type=cli.blob_container, default="claim-check-payloads",  # the producer's
        help="the blob container the producer writes to: the only one this consumer reads",
    )  # fmt: skip
    parser.add_argument(
        "--max-bytes", type=cli.whole_number(least=0), default=MAX_BYTES, metavar="BYTES",
        help="the biggest payload it downloads",
    )  # fmt: skip
    cli.add_consumer_arguments(parser, work_seconds=0.5)
    args = parser.parse_args()
    log = cli.logger("consumer")
    blobs.service()  # settings without a blob service stop it here, not per message
    stop = cli.Shutdown()
    processed = 0

    with consume.Inbox(args.queue, **cli.inbox_options(args)) as inbox:
        log.info(f"waiting for payloads on '{args.queue}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    task = codec.parse_json(message)
                    task_id = codec.app_id(task)
                    size, sha256, where = fetch(task, args)
                    log.info(f"took {task_id} ({size} bytes {where})")
                    check(task, size, sha256)
                    stop.sleep(args.work_seconds)  # the rest of the work; Ctrl+C interrupts it
                    processed += 1
                    log.info(f"done {task_id} (size and sha256 as sent)")
                    # The message first, then its blob: only once the message is gone will no
                    # retry of it need the blob (a crash between the two leaves an orphan).
                    if inbox.delete(message) and "blob" in task:
                        delete_blob(task, log)
    log.info(f"stopped: processed {processed} payload(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
