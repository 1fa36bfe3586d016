"""Pipes and filters - the producer: puts orders into the first pipe of the pipeline.

    python patterns/pipes_and_filters/producer.py                  # the original hands-on's order
    python -m patterns.pipes_and_filters.producer --count 20 --invalid

The pipeline: queue-validate -> validate.py -> queue-enrich -> enrich.py -> queue-finalize ->
finalize.py. Each order carries its own `order_id` through every step, and the time it was
sent (`sent_at`) so that finalize.py can tell how long the whole pipeline took.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from patterns.helper import cli, connect
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--output", "queue-validate", "first pipe of the pipeline")
    parser.add_argument("--count", type=cli.whole_number(least=1), default=1, help="orders to send")
    parser.add_argument(
        "--invalid", action="store_true", help="also send one order that fails validation"
    )
    cli.add_concurrency_argument(parser)
    args = parser.parse_args()
    log = cli.logger("producer")
    pipe = connect.open_queue(args.output)

    run_id = uuid.uuid4().hex[:8]  # order ids are unique across runs too

    def orders() -> Iterator[dict[str, Any]]:  # made one by one, as there is room to send
        for n in range(1, args.count + 1):
            order_id = f"ORD-{run_id}-{n:03d}"
            yield {"order_id": order_id, "amount": 25000, "items": ["item-A", "item-B"]}
        if args.invalid:  # amount 0: validate.py sends it to queue-rejected
            yield {"order_id": f"ORD-{run_id}-bad", "amount": 0, "items": ["item-A"]}

    def send(order: dict[str, Any]) -> dict[str, Any]:
        order["sent_at"] = datetime.now(timezone.utc).isoformat()
        connect.send_json(pipe, order)
        return order

    sent = 0
    for order in workers.concurrently(send, orders(), args.concurrency):
        sent += 1
        log.info(f"sent {order['order_id']} (amount {order['amount']}) to '{args.output}'")
    log.info(f"sent {sent} order(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
