"""Claim-check - the consumer: fetches each payload (from its blob, or inline), does the work,
and deletes the blob only after the message.

    python patterns/claim_check/consumer.py
    python -m patterns.claim_check.consumer --work-seconds 1

The message is deleted first, its blob after. If the consumer dies after the work, the message
comes back and finds its blob still there. If it dies between the two deletes, the blob is an
orphan (status shows it, cleanup removes it): nothing lost. A reference to a blob that is gone
cannot ever be processed: it goes to the poison queue with that reason.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from patterns.helper import BadMessage, cli, codec, connect, consume


def fetch(task: dict[str, Any], log: logging.Logger) -> tuple[bytes, str]:
    """The payload, and where it came from: the blob the message refers to, or the message."""
    if "blob" not in task:
        try:
            return base64.b64decode(task.get("data", ""), validate=True), "inline"
        except (binascii.Error, TypeError):
            raise BadMessage("data is not base64") from None
    container, blob = task.get("container"), task["blob"]
    if not (isinstance(container, str) and isinstance(blob, str)):
        raise BadMessage("container and blob must be strings")
    try:
        payload = connect.blob_service(log).get_blob_client(container, blob).download_blob()
        return payload.readall(), f"from blob {container}/{blob}"
    except ResourceNotFoundError:  # deleted by someone: no retry can bring it back
        raise BadMessage(f"its payload blob {container}/{blob} is missing") from None


def check(task: dict[str, Any], payload: bytes) -> None:
    """The work: here, make sure the payload is the one the producer sent."""
    if len(payload) != task.get("size"):
        raise BadMessage(f"payload is {len(payload)} bytes, the message says {task.get('size')}")
    if hashlib.sha256(payload).hexdigest() != task.get("sha256"):
        raise BadMessage("payload does not match its sha256")


def delete_blob(task: dict[str, Any], log: logging.Logger) -> None:
    """Delete a payload's blob once its message is gone for good. If that fails, the blob is
    an orphan: nothing is lost, and status shows it, cleanup removes it."""
    where = f"{task['container']}/{task['blob']}"
    try:
        connect.blob_service().get_blob_client(task["container"], task["blob"]).delete_blob()
        log.info(f"deleted blob {where}")
    except (HttpResponseError, *connect.UNREACHABLE) as error:
        log.warning(f"could not delete blob {where} ({connect.in_short(error)}): an orphan now")


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "claim-check-queue", "queue to consume")
    cli.add_consumer_arguments(parser, work_seconds=0.5)
    args = parser.parse_args()
    log = cli.logger("consumer")
    stop = cli.Shutdown()
    processed = 0

    with consume.Inbox(args.queue, log, visibility_timeout=args.visibility_timeout,
                       max_attempts=args.max_attempts, batch_size=args.batch_size,
                       idle_max=args.idle_max, retry_backoff=args.retry_backoff,
                       retry_backoff_max=args.retry_backoff_max) as inbox:  # fmt: skip
        log.info(f"waiting for payloads on '{args.queue}'")
        while not stop.requested:
            for message in inbox.batch(stop):  # one receive call; backs off when empty
                task: dict[str, Any] = {}
                with inbox.settle(message) as settled:  # delete on success; retry or poison
                    task = codec.parse_json(message)
                    task_id = codec.app_id(task)
                    payload, where = fetch(task, log)
                    log.info(f"took {task_id} ({len(payload)} bytes {where})")
                    check(task, payload)
                    stop.sleep(args.work_seconds)  # the rest of the work; Ctrl+C interrupts it
                    processed += 1
                    log.info(f"done {task_id} (size and sha256 as sent)")
                if settled.deleted and "blob" in task:
                    delete_blob(task, log)  # only now: no retry of the message will need it
    log.info(f"stopped: processed {processed} payload(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
