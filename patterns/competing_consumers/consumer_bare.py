"""Competing consumers - the bare consumer: the mechanics once, with nothing but the SDK.

    python patterns/competing_consumers/consumer_bare.py     # tasks-queue, like consumer.py

Receive (the service hides the message for VISIBILITY_TIMEOUT seconds), work, then delete it
with its pop receipt. A task that fails is not deleted: it comes back, its dequeue count one
higher, and after MAX_ATTEMPTS deliveries it is copied to <queue>-poison, then deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from datetime import datetime

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient
from dotenv import load_dotenv

VISIBILITY_TIMEOUT = 30  # seconds a received message stays hidden from the other consumers
MAX_ATTEMPTS = 5  # deliveries before a message that keeps failing goes to <queue>-poison
BATCH = 1  # messages per receive (up to 32); all must be done within the visibility timeout
WORK_SECONDS = 2.0  # the simulated work per task

# Left out on purpose (consumer.py has each; docs/helper.md says where in patterns/helper/):
# Ctrl+C hands no task back (it returns after its visibility timeout); long work is not kept
# hidden; a message that can never succeed (not JSON, no id) is retried like any other, and its
# poison copy carries no reason; the idle wait is a flat second; an outage, a bad queue name or
# a missing emulator ends it with the SDK's error, after the SDK's own slow retries. It reads
# plain text only: AZURE_QUEUE_MESSAGE_ENCODING=base64 (Base64, for Azure Functions) is codec's.


def say(text: str) -> None:  # one line per event, `HH:MM:SS.mmm role[pid] text`, like the others
    print(f"{datetime.now():%H:%M:%S.%f}"[:12], f"consumer-bare[{os.getpid()}]", text, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queue", default="tasks-queue", help="queue to consume")
    args = parser.parse_args()
    load_dotenv()  # the connection string: the environment, then .env, then the local Azurite
    connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or "UseDevelopmentStorage=true"
    queue = QueueClient.from_connection_string(connection, args.queue)
    poison = QueueClient.from_connection_string(connection, args.queue + "-poison")
    for each in (queue, poison):
        with contextlib.suppress(ResourceExistsError):  # already there: fine
            each.create_queue()

    say(f"waiting for tasks on '{args.queue}'")
    try:
        while True:
            pager = queue.receive_messages(
                max_messages=BATCH, messages_per_page=BATCH, visibility_timeout=VISIBILITY_TIMEOUT
            )
            messages = list(next(pager.by_page(), []))  # one request; a pager is always truthy
            if not messages:
                time.sleep(1)  # an empty queue: ask again in a second, never at once
            for message in messages:
                if message.dequeue_count > MAX_ATTEMPTS:  # it failed every time: set it aside
                    poison.send_message(message.content, time_to_live=-1)  # the copy first ...
                    queue.delete_message(message.id, message.pop_receipt)  # ... then the original
                    say(f"moved message {message.id} to '{args.queue}-poison'")
                    continue
                try:
                    task = json.loads(message.content)
                    say(f"took {task['id']} (attempt {message.dequeue_count})")
                    if task.get("fail"):
                        raise RuntimeError("the task asked to fail")
                    time.sleep(WORK_SECONDS)  # the work
                except Exception as error:  # not deleted: it comes back after its timeout
                    say(f"attempt {message.dequeue_count} failed: {error!r}")
                    continue
                queue.delete_message(message.id, message.pop_receipt)  # after the work, not before
                say(f"done {task['id']}")
    except KeyboardInterrupt:  # Ctrl+C; a task in hand comes back after its visibility timeout
        say("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
