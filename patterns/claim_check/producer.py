"""Claim-check - the producer: sends payloads of any size; a big one goes to a blob first.

    python patterns/claim_check/producer.py                 # 6 payloads: 2 KB and 200 KB in turn
    python -m patterns.claim_check.producer --count 3 --size 1000000

A queue message holds at most 64 KiB. A payload over --threshold is uploaded to a blob in
--container and the message carries only a reference to it (the claim check); a small one
travels inline. Upload first, then send: a crash in between leaves an orphan blob (status
shows it, cleanup removes it), never a message whose payload is missing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

from patterns.helper import Fatal, cli, codec, connect
from patterns.helper.support import blobs  # this lesson's concern

# Why 32 KiB and not 64: an inline payload travels base64-encoded (3 bytes become 4) inside
# JSON inside the request's XML, which escapes & < > too; 32 KiB of payload is ~43 KiB as
# sent (~58 KiB when the whole message is Base64 again, for Azure Functions). 45 KiB (~61 KB
# as sent in text mode) is the most the flag accepts.
THRESHOLD = 32 * 1024
SMALL, LARGE = 2_000, 200_000  # the default mix: one of each path in turn


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "claim-check-queue", "queue to send to")
    parser.add_argument(
        "--container",
        type=cli.blob_container,
        default="claim-check-payloads",
        help="blob container for big payloads",
    )
    parser.add_argument(
        "--count", type=cli.whole_number(least=1), default=6, help="payloads to send"
    )
    parser.add_argument(
        "--size", type=cli.whole_number(least=1, most=256 * 1024 * 1024), metavar="BYTES",
        help=f"every payload this big (default: {SMALL} and {LARGE} bytes in turn)",
    )  # fmt: skip
    parser.add_argument(
        "--threshold", type=cli.whole_number(least=0, most=45 * 1024), default=THRESHOLD,
        metavar="BYTES", help="payloads over this go to a blob",
    )  # fmt: skip
    parser.add_argument(
        "--crash-after-upload", action="store_true",
        help="stop (exit 1) after the first upload, before its message is sent: an orphan blob",
    )  # fmt: skip
    args = parser.parse_args()
    log = cli.logger("producer")
    container = blobs.container(args.container)
    queue = connect.open_queue(args.queue)
    run_id = uuid.uuid4().hex[:8]

    for n in range(1, args.count + 1):
        task_id = f"claim-{n:03d}-{run_id}"
        size = args.size or (SMALL if n % 2 else LARGE)
        payload = os.urandom(size)  # stands for a document, an image, a batch of records
        task = {"id": task_id, "size": size, "sha256": hashlib.sha256(payload).hexdigest()}
        if size > args.threshold:
            blob = f"{args.queue}/{task_id}"  # named after its queue: status finds its orphans
            container.upload_blob(blob, payload, overwrite=True)  # first the payload ...
            if args.crash_after_upload:
                log.info(f"crashing on purpose after uploading {blob}, before sending its message")
                os._exit(1)
            task |= {"container": args.container, "blob": blob}
            connect.send_json(queue, task)  # ... then the claim check that refers to it
            log.info(f"sent {task_id}: {size} bytes in blob {args.container}/{blob}")
        else:
            task["data"] = base64.b64encode(payload).decode("ascii")
            try:
                connect.send_json(queue, task)
            except codec.Unsendable as error:  # in Base64 mode: 16/9 of the payload as sent
                too_big = str(error).split(";")[0]  # "message is N bytes as sent (...)"
                raise Fatal(
                    f"{task_id} ({size} bytes) does not fit inline: {too_big}; lower --threshold "
                    f"(now {args.threshold}; the default {THRESHOLD} fits in either encoding) so "
                    "that payloads this big go to a blob"
                ) from None
            log.info(f"sent {task_id}: {size} bytes inline")
    log.info(f"sent {args.count} payload(s) to '{args.queue}'")
    return 0


if __name__ == "__main__":
    cli.run(main)
