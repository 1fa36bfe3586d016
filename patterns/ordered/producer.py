"""Per-key order - the producer: sends each order's events with a sequence number.

The events are numbered (created 1, paid 2, shipped 3, ...), the orders interleaved; --shuffle
mixes them as retries would.

    python patterns/ordered/producer.py                        # 10 orders x 3 events
    python -m patterns.ordered.producer --shuffle              # in any order
    python -m patterns.ordered.producer --drop order-3:2       # order 3's event 2 never sent

Queue Storage promises no order, and competing consumers reorder whatever it keeps: the
sequence number in each event is what lets the consumers put an order's events back in line.
Each run makes new orders (order-1-<run id>, ...): an order id is never used twice.
--drop leaves a gap, as an event lost upstream would: its order's later events wait for it,
then go to the poison queue, said why.
"""

from __future__ import annotations

import argparse
import random
import uuid

from patterns.helper import cli, connect
from patterns.helper.support import workers

EVENTS = ("created", "paid", "packed", "shipped", "delivered")  # then "updated"


def key_and_seq(text: str) -> tuple[str, int]:
    """`--drop order-3:2` -> ("order-3", 2): order 3 of this run, its event 2."""
    key, _, seq = text.rpartition(":")
    if not key or not seq.isascii() or not seq.isdigit() or int(seq) < 1:
        raise argparse.ArgumentTypeError(f"expected KEY:SEQ such as order-3:2, got {text!r}")
    return key, int(seq)


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "order-events", "queue to send to")
    parser.add_argument("--keys", type=cli.whole_number(least=1, most=10_000), default=10,
                        help="orders (keys): order-1, order-2, ...")  # fmt: skip
    parser.add_argument("--events", type=cli.whole_number(least=1, most=1000), default=3,
                        help="events per order, numbered 1, 2, 3...")  # fmt: skip
    parser.add_argument("--shuffle", action="store_true", help="send the events in any order")
    parser.add_argument(
        "--drop", type=key_and_seq, action="append", default=[], metavar="KEY:SEQ",
        help="do not send this event (a gap, as if lost upstream); may be repeated",
    )  # fmt: skip
    cli.add_concurrency_argument(parser)
    args = parser.parse_args()
    log = cli.logger("producer")
    queue = connect.open_queue(args.queue)

    run_id = uuid.uuid4().hex[:8]
    # Interleaved: every order's event 1, then every order's event 2, ...
    events = [
        {
            "id": f"order-{k}-{run_id}:{seq}",
            "key": f"order-{k}-{run_id}",
            "seq": seq,
            "event": EVENTS[seq - 1] if seq <= len(EVENTS) else "updated",
        }
        for seq in range(1, args.events + 1)
        for k in range(1, args.keys + 1)
    ]
    if args.shuffle:
        random.shuffle(events)
    dropped = [e for e in events if (e["key"].removesuffix(f"-{run_id}"), e["seq"]) in args.drop]
    for event in dropped:
        log.info(f"dropped {event['key']} #{event['seq']} {event['event']} (lost upstream)")

    def send(event: dict[str, object]) -> dict[str, object]:
        connect.send_json(queue, event)
        return event

    kept = [event for event in events if event not in dropped]
    for event in workers.concurrently(send, kept, args.concurrency):  # in order, as each ends
        log.info(f"sent {event['key']} #{event['seq']} {event['event']}")
    how = " (shuffled)" if args.shuffle else ""
    log.info(f"sent {len(kept)} events of {args.keys} orders to '{args.queue}'{how}")
    return 0


if __name__ == "__main__":
    cli.run(main)
