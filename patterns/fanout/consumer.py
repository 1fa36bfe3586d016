"""Fan-out - one subscriber: gets its own copy of every published message.

Start one per subscriber, each in its own terminal (one script, any number of subscribers):

    python patterns/fanout/consumer.py --subscriber a
    python -m patterns.fanout.consumer --subscriber b
    python patterns/fanout/consumer.py --subscriber c --unsubscribe   # queue deleted on exit

Subscribing means creating the queue fanout-queue-NAME; the producer finds it by its prefix.
The queue outlives the consumer (a durable subscription): what is published while the
subscriber is stopped waits there. A copy that arrives twice (the producer re-sent it) is
recognised by its application id and skipped: the idempotent receiver.
"""

from __future__ import annotations

from patterns.helper import Fatal, cli, codec, connect, consume


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subscriber", required=True, metavar="NAME", help="this subscriber's name, e.g. a"
    )
    parser.add_argument("--prefix", default="fanout-queue-", help="queue name prefix")
    parser.add_argument(
        "--unsubscribe", action="store_true", help="delete this subscriber's queue on exit"
    )
    parser.add_argument(
        "--remember", type=cli.whole_number(least=1), default=1000, metavar="N",
        help="processed ids kept for de-duplication",
    )  # fmt: skip
    cli.add_consumer_arguments(parser, work_seconds=1.0)
    args = parser.parse_args()
    queue = connect.queue_name(args.prefix + args.subscriber, consumed=True)
    if queue.endswith(connect.POISON_SUFFIX):
        raise Fatal(f"invalid subscriber name {args.subscriber!r}: '-poison' is reserved")
    log = cli.logger(f"subscriber-{args.subscriber}")
    stop = cli.Shutdown()
    seen: dict[str, None] = {}  # ids already processed, oldest first (bounded: --remember)
    processed = skipped = 0

    with consume.Inbox(queue, **cli.inbox_options(args)) as inbox:  # creating it subscribes us
        log.info(f"subscribed: waiting for messages on '{queue}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    body = codec.parse_json(message)
                    # No id, null, 7: a bad message (to poison), never a "duplicate" of another.
                    app_id = codec.app_id(body)
                    if app_id in seen:  # a second copy of something we already did
                        skipped += 1
                        log.info(f"skipped {app_id}: already processed (duplicate)")
                        inbox.delete(message)  # the copy is not worked on again: delete it
                        continue
                    log.info(f"took {app_id}: {body.get('text')}")
                    stop.sleep(args.work_seconds)  # the work; Ctrl+C interrupts it
                    seen[app_id] = None
                    if len(seen) > args.remember:
                        del seen[next(iter(seen))]  # forget the oldest id
                    processed += 1
                    log.info(f"done {app_id}")
                    inbox.delete(message)  # after the work, never before

    if args.unsubscribe:
        connect.service().delete_queue(queue)
        log.info(f"unsubscribed: deleted queue '{queue}'")
    log.info(f"stopped: processed {processed} message(s), skipped {skipped} duplicate(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
