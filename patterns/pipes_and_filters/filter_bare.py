"""Pipes and filters - the bare filter: forward, then delete, with nothing but the SDK.

    python patterns/pipes_and_filters/filter_bare.py     # queue-enrich -> queue-finalize

A filter's whole job, once: receive an order from the input pipe, do the step (here enrich.py's:
stamp `processed_at`), send the result down the output pipe, and only then delete the order
from the input. Dying between the send and the delete sends the order again later: a duplicate
downstream (finalize.py recognises it), never a lost order. Run it in enrich.py's place.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from datetime import datetime, timezone

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueServiceClient
from dotenv import load_dotenv

VISIBILITY_TIMEOUT = 30  # seconds an order stays hidden from other filters while it is worked on
MAX_ATTEMPTS = 5  # deliveries before an order that cannot be passed on goes to <input>-poison

# Left out on purpose (enrich.py has each, through patterns/helper/): an order that can never
# be passed on (not JSON) is retried MAX_ATTEMPTS times like any other, and its poison copy
# has no reason; a failed forward waits out the visibility timeout; Ctrl+C hands nothing back;
# an outage ends it with the SDK's error. Plain text only (no Base64 for Azure Functions).


def log(text: str) -> None:  # one line per event, `HH:MM:SS.mmm role[pid] text`, like the others
    print(f"{datetime.now():%H:%M:%S.%f}"[:12], f"filter-bare[{os.getpid()}]", text, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", default="queue-enrich", help="the pipe to read")
    parser.add_argument("--output", default="queue-finalize", help="where orders go next")
    args = parser.parse_args()
    load_dotenv()  # the connection string: the environment, then .env, then the local Azurite
    setting = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or "UseDevelopmentStorage=true"
    service = QueueServiceClient.from_connection_string(setting)
    pipe_in, pipe_out, poison = (
        service.get_queue_client(name) for name in (args.input, args.output, args.input + "-poison")
    )
    for pipe in (pipe_in, pipe_out, poison):
        with contextlib.suppress(ResourceExistsError):  # there already
            pipe.create_queue()

    log(f"passing orders from '{args.input}' to '{args.output}'")
    while True:
        pages = pipe_in.receive_messages(max_messages=1, visibility_timeout=VISIBILITY_TIMEOUT)
        orders = list(next(pages.by_page(), []))  # one request for at most one order
        if not orders:
            time.sleep(1)  # the pipe is empty: look again in a second
        for message in orders:
            if message.dequeue_count > MAX_ATTEMPTS:  # passing it on failed every time
                poison.send_message(message.content, time_to_live=-1)  # its copy, then ...
                pipe_in.delete_message(message.id, message.pop_receipt)  # ... the order
                log(f"moved message {message.id} to '{poison.queue_name}'")
                continue
            try:
                order = json.loads(message.content)
                order["processed_at"] = datetime.now(timezone.utc).isoformat()  # the step
                pipe_out.send_message(json.dumps(order))  # forward first ...
            except Exception as error:  # not passed on: not deleted, so it comes back
                log(f"could not pass on message {message.id}: {error!r}")
                continue
            pipe_in.delete_message(message.id, message.pop_receipt)  # ... then delete
            log(f"enriched {order.get('order_id')}, passed it to '{args.output}'")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl+C: an order in hand comes back after its visibility timeout
        log("stopped")
