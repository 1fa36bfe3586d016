"""Pipes and filters - the end of the pipe: receives fully processed orders.

    python patterns/pipes_and_filters/finalize.py
    python -m patterns.pipes_and_filters.finalize

Reads queue-finalize and prints each order with the time it took from the producer to here.
Forwarding is at-least-once, so the same order can arrive twice (a filter crashed between its
forward and its delete): this step recognises an order id it has already finished.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from patterns.helper import cli, codec, consume


def seconds_since(iso_time: object) -> str:
    """'0.42 s' since an ISO-8601 time (the producer's `sent_at`), or '?' if there is none."""
    try:
        took = datetime.now(timezone.utc) - datetime.fromisoformat(str(iso_time))
    except (ValueError, TypeError):  # missing, or a time without its UTC offset
        return "?"
    return f"{took.total_seconds():.2f} s"


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--input", "queue-finalize", "the pipe to read")
    cli.add_consumer_arguments(parser)
    args = parser.parse_args()
    log = cli.logger("finalize")
    stop = cli.Shutdown()
    finished: set[str] = set()  # order ids seen by this process: at-least-once means repeats

    with consume.Inbox(args.input, **cli.inbox_options(args)) as inbox:
        log.info(f"waiting for processed orders on '{args.input}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    order = codec.parse_json(message)
                    order_id = codec.app_id(order, "order_id")  # none or not a string: poison
                    if order_id in finished:
                        log.info(f"duplicate {order_id} ignored (already finished)")
                    else:
                        finished.add(order_id)
                        took = seconds_since(order.get("sent_at"))
                        log.info(f"finished {order_id} after {took}: {json.dumps(order)}")
                    inbox.delete(message)  # finished, or a copy of one that was: delete it
    log.info(f"stopped: finished {len(finished)} order(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
