"""Pipes and filters - filter A, validate: checks each order, passes good ones down the pipe.

    python patterns/pipes_and_filters/validate.py
    python -m patterns.pipes_and_filters.validate --work-seconds 0.5

Reads queue-validate. A valid order goes to queue-enrich; an invalid one goes to
queue-rejected with the reasons (never discarded); a message that is not JSON at all goes to
queue-validate-poison. The order is forwarded first and deleted from the input only after
that succeeded: a crash in between means a duplicate later, never a lost order.
Start several to share the load (competing consumers on one stage).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from patterns.helper import BadMessage, cli, codec, connect, consume
from patterns.helper.support import tracing


def problems(order: dict[str, Any]) -> list[str]:
    """Why an order is invalid; [] if it is fine."""
    found = []
    try:
        codec.app_id(order, "order_id")  # the same rule as every consumer's: a non-empty string
    except BadMessage as error:
        found.append(str(error))
    amount, items = order.get("amount"), order.get("items")
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount > 0:
        found.append(f"amount must be a positive number, got {amount!r}")  # also NaN
    elif not math.isfinite(amount):  # 1e999 reads as infinity
        found.append(f"amount must be a finite number, got {amount!r}")
    if not isinstance(items, list) or not items:
        found.append("items must be a non-empty list")
    return found


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--input", "queue-validate", "the pipe to read")
    cli.add_queue_argument(parser, "--output", "queue-enrich", "where valid orders go")
    invalid = "where invalid orders go, with the reasons"  # nobody consumes it: peek shows it
    cli.add_queue_argument(parser, "--rejected", "queue-rejected", invalid, consumed=False)
    cli.add_consumer_arguments(parser, work_seconds=0.0)
    args = parser.parse_args()
    log = cli.logger("validate")
    stop = cli.Shutdown()
    output = connect.open_queue(args.output)
    rejected = connect.open_queue(args.rejected)
    passed = failed = 0

    with consume.Inbox(args.input, **cli.inbox_options(args)) as inbox:
        log.info(f"validating orders from '{args.input}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                # Forward, then delete. If the forward fails, the order stays in the input
                # queue and comes back (settle retries it later, or poisons it).
                with inbox.settle(message):
                    order = codec.parse_json(message)  # not JSON: to the poison queue
                    log.info(f"took {order.get('order_id')} (attempt {message.dequeue_count})")
                    stop.sleep(args.work_seconds)
                    reasons = problems(order)
                    if reasons:
                        record = {
                            "reasons": reasons,
                            "source_queue": args.input,
                            "rejected_at": datetime.now(timezone.utc).isoformat(),
                            "order": order,
                        }
                        # Never expires: it waits in queue-rejected until someone looks at it.
                        connect.send_json(rejected, record, time_to_live=connect.NEVER_EXPIRE)
                        tracing.event("rejected", reason="; ".join(reasons))  # if tracing is on
                        failed += 1
                        log.info(f"rejected {order.get('order_id')}: {'; '.join(reasons)}")
                    else:
                        connect.send_json(output, order)
                        passed += 1
                        log.info(f"passed {order['order_id']} to '{args.output}'")
                    inbox.delete(message)  # forwarded (or rejected): only now delete it
    log.info(f"stopped: passed {passed}, rejected {failed}")
    return 0


if __name__ == "__main__":
    cli.run(main)
