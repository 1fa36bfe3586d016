"""Fan-out - the producer: copies one message into the queue of every subscriber.

Queue Storage has no topics, so "publish" means "send a copy to each subscriber's queue".
The subscribers are found by name: every queue starting with --prefix (fanout-queue-).

    python patterns/fanout/producer.py                      # to every fanout-queue-* queue
    python patterns/fanout/producer.py --message "Order Confirmed: #12346"
    python -m patterns.fanout.producer --subscribers a,b    # the hands-on's fixed list instead
    python patterns/fanout/producer.py --id order-12345     # re-send: subscribers skip it

Exit 1 if no subscriber exists, or if some subscriber queues did not get the message even
after retries; they are named, and re-running with the same --id completes the fan-out.
"""

from __future__ import annotations

import shlex
import time
import uuid
from collections.abc import Callable
from logging import Logger

from azure.storage.queue import QueueClient

from patterns.helper import cli, connect

DEFAULT_PREFIX = "fanout-queue-"


def fan_out(
    queues: list[QueueClient], message: dict[str, str], send: Callable, retries: int, log: Logger
) -> list[str]:
    """The same message into every queue; failed sends get `retries` more rounds. The names
    of the queues that still miss it are returned (and logged, with how to complete the job)."""
    pending = queues
    for attempt in range(1 + retries):
        if attempt:
            names = ", ".join(queue.queue_name for queue in pending)
            log.info(f"retry {attempt} of {retries} for: {names}")
            time.sleep(attempt)  # give a struggling service a moment
        failed = []
        for queue in pending:
            try:
                send(queue, message)
                log.info(f"-> sent to '{queue.queue_name}'")
            except connect.FAILED as error:  # refused, or no answer: the next round tries again
                log.warning(f"-> could not send to '{queue.queue_name}': {type(error).__name__}")
                failed.append(queue)
        pending = failed
        if not pending:
            break
    missing = [queue.queue_name for queue in pending]
    if missing:  # a partial fan-out: say exactly who is missing the message, and how to fix it
        log.error(
            f"{message['id']} did NOT reach {len(missing)} of {len(queues)} subscriber(s): "
            f"{', '.join(missing)}. Re-run with --id {message['id']}: subscribers that already "
            "have it will skip it"
        )
    return missing


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--message", metavar="TEXT", default="Order Confirmed: #12345", help="text to publish"
    )
    parser.add_argument(
        "--id", help="the message's application id (default: a new one); reuse it to re-send"
    )
    parser.add_argument(
        "--prefix", default=DEFAULT_PREFIX, help="subscriber queues are named PREFIX + subscriber"
    )
    parser.add_argument(
        "--subscribers", metavar="A,B,...",
        help="send to these subscribers (creating their queues) instead of discovering them",
    )  # fmt: skip
    parser.add_argument(
        "--retries", type=cli.whole_number(least=0), default=3, metavar="N",
        help="extra rounds for queues whose send failed",
    )  # fmt: skip
    args = parser.parse_args()
    log = cli.logger("producer")
    service = connect.service()

    # 1. Who subscribes? Either the fixed list (the hands-on's way: the producer must know every
    #    consumer), or every queue whose name starts with the prefix (a new subscriber only has
    #    to create its queue). A subscriber's poison queue is not a subscriber.
    if args.subscribers:
        names = [args.prefix + n.strip() for n in args.subscribers.split(",")]
        queues = [connect.queue_name(name, consumed=True) for name in names]  # all, then create
        for name in queues:
            connect.open_queue(name)
        log.info(f"subscribers (fixed list): {', '.join(queues)}")
    else:
        found = service.list_queues(name_starts_with=args.prefix)
        queues = [q.name for q in found if not q.name.endswith(connect.POISON_SUFFIX)]
        if not queues:
            same_prefix = (
                f" --prefix {shlex.quote(args.prefix)}" if args.prefix != DEFAULT_PREFIX else ""
            )
            log.warning(
                f"no subscriber queues named '{args.prefix}*': nobody would receive this "
                "message, so it was not sent. Start a subscriber first: "
                f"python patterns/fanout/consumer.py{same_prefix} --subscriber a"
            )
            return 1
        log.info(f"subscribers (found by prefix '{args.prefix}'): {', '.join(queues)}")

    # 2. The fan-out (above). The service gives each copy its own message id; ours, the same in
    #    every copy, is what ties the copies together.
    message = {"id": args.id or f"msg-{uuid.uuid4().hex[:8]}", "text": args.message}
    log.info(f"publishing {message['id']}: {args.message}")
    subscribers = [service.get_queue_client(name) for name in queues]
    if fan_out(subscribers, message, connect.send_json, args.retries, log):
        return 1
    log.info(f"published {message['id']} to {len(queues)} subscriber(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
