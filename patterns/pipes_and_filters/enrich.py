"""Pipes and filters - filter B, enrich: stamps each order with the time it was processed.

    python patterns/pipes_and_filters/enrich.py
    python -m patterns.pipes_and_filters.enrich --work-seconds 0.5

Reads queue-enrich, adds `processed_at` (UTC, ISO-8601, with its +00:00 offset) and passes the
order on to queue-finalize. Like every filter it forwards first and deletes after, so a crash
in between gives a duplicate downstream, never a lost order. Start several to share the load.
"""

from __future__ import annotations

from datetime import datetime, timezone

from patterns import helper


def main() -> int:
    parser = helper.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--input", type=helper.consumed_queue, default="queue-enrich", help="default queue-enrich"
    )
    parser.add_argument(
        "--output",
        type=helper.consumed_queue,
        default="queue-finalize",
        help="default queue-finalize",
    )
    helper.add_consumer_arguments(parser, work_seconds=0.0)
    args = parser.parse_args()
    log = helper.logger("enrich")
    stop = helper.Shutdown()
    output = helper.open_queue(args.output, log)
    enriched = 0

    with helper.Inbox.from_args(args.input, log, args) as inbox:
        log.info(f"enriching orders from '{args.input}'")
        while not stop.requested:
            for message in inbox.batch(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # forward inside the block, delete after it
                    order = helper.parse_json(message)
                    order_id = helper.app_id(order, "order_id")  # none or not a string: poison
                    log.info(f"took {order_id} (attempt {message.dequeue_count})")
                    stop.sleep(args.work_seconds)
                    order["processed_at"] = datetime.now(timezone.utc).isoformat()
                    helper.send_json(output, order)
                    enriched += 1
                    log.info(f"enriched {order_id}, passed it to '{args.output}'")
    log.info(f"stopped: enriched {enriched} order(s)")
    return 0


if __name__ == "__main__":
    helper.run(main)
