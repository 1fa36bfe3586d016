"""Pipes and filters - filter B, enrich: stamps each order with the time it was processed.

    python patterns/pipes_and_filters/enrich.py
    python -m patterns.pipes_and_filters.enrich --work-seconds 0.5

Reads queue-enrich, adds `processed_at` (UTC, ISO-8601, with its +00:00 offset) and passes the
order on to queue-finalize. Like every filter it forwards first and deletes after, so a crash
in between gives a duplicate downstream, never a lost order. Start several to share the load.
"""

from __future__ import annotations

from datetime import datetime, timezone

from patterns.helper import cli, codec, connect, consume


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--input", "queue-enrich", "the pipe to read")
    cli.add_queue_argument(parser, "--output", "queue-finalize", "where enriched orders go")
    cli.add_consumer_arguments(parser, work_seconds=0.0)
    args = parser.parse_args()
    log = cli.logger("enrich")
    stop = cli.Shutdown()
    output = connect.open_queue(args.output)
    enriched = 0

    with consume.Inbox(args.input, **cli.inbox_options(args)) as inbox:
        log.info(f"enriching orders from '{args.input}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # a failed forward: the order stays, comes back
                    order = codec.parse_json(message)
                    order_id = codec.app_id(order, "order_id")  # none or not a string: poison
                    log.info(f"took {order_id} (attempt {message.dequeue_count})")
                    stop.sleep(args.work_seconds)
                    order["processed_at"] = datetime.now(timezone.utc).isoformat()
                    connect.send_json(output, order)  # forward first ...
                    enriched += 1
                    log.info(f"enriched {order_id}, passed it to '{args.output}'")
                    inbox.delete(message)  # ... then delete: a crash between is a duplicate
    log.info(f"stopped: enriched {enriched} order(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
