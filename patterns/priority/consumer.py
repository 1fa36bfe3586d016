"""Priority queue - the consumer: always takes the most urgent task there is.

Before each task it looks at the highest level first and falls to a lower level only when
every higher one is empty; after any task it starts again from the top.

    python patterns/priority/consumer.py                       # levels high, normal, low
    python -m patterns.priority.consumer --levels high,normal  # the original hands-on's two levels
    python patterns/priority/consumer.py --starvation-guard 3  # normal gets a turn after 3 high
    python patterns/priority/consumer.py --age-after 30        # waited 30 s: one level up

Several consumers can run at once (they compete for the tasks of every level).
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from datetime import datetime, timezone

from azure.storage.queue import QueueMessage

from patterns.helper import cli, codec, connect, consume

LEVELS = ("high", "normal", "low")


def levels(text: str) -> list[str]:
    chosen = [level.strip() for level in text.split(",")]
    if not chosen or any(level not in LEVELS for level in chosen) or len(set(chosen)) < len(chosen):
        raise argparse.ArgumentTypeError(f"list some of {', '.join(LEVELS)}, got {text!r}")
    return chosen


def age(message: QueueMessage) -> float:
    """Seconds since the task was sent: now (our clock) less its inserted_on (the service's
    clock, whole seconds), so a clock that is off shifts it."""
    if message.inserted_on is None:
        return 0.0
    return (datetime.now(timezone.utc) - message.inserted_on).total_seconds()


def next_waited(inbox: consume.Inbox) -> float:
    """How long the next task of a queue has waited (0: none, or the service did not answer -
    the receive that follows says so). A peek: it takes nothing and counts no delivery."""
    try:
        head = next(iter(inbox.queue.peek_messages(max_messages=1)), None)
    except connect.FAILED:
        return 0.0
    return age(head) if head is not None else 0.0


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--levels", type=levels, default=list(LEVELS), metavar="A,B,...",
        help="levels to serve, highest first",
    )  # fmt: skip
    parser.add_argument("--prefix", default="tasks", help="queues are PREFIX-LEVEL-priority")
    parser.add_argument(
        "--starvation-guard", type=cli.whole_number(least=0), default=0, metavar="N",
        help="after N top-level tasks in a row, let the next level go first once (0: off)",
    )  # fmt: skip
    parser.add_argument(
        "--age-after", type=cli.whole_number(least=0, most=7 * 24 * 3600), default=0,
        metavar="SECONDS", help="a task that has waited longer is served as if one level "
        "higher (ageing; 0: off)",
    )  # fmt: skip
    cli.add_consumer_arguments(parser, work_seconds=1.0)
    args = parser.parse_args()
    for level in args.levels:  # every queue's name checked before the first is created
        connect.queue_name(f"{args.prefix}-{level}-priority", consumed=True)
    log = cli.logger("consumer")
    stop = cli.Shutdown()
    idle = consume.Backoff(maximum=args.idle_max)
    done: Counter[str] = Counter()
    streak = 0  # top-level tasks taken in a row

    with contextlib.ExitStack() as inboxes:  # leaving it releases any task still in hand
        inbox: dict[str, consume.Inbox] = {}
        for level in args.levels:
            name = f"{args.prefix}-{level}-priority"
            inbox[level] = inboxes.enter_context(consume.Inbox(name, **cli.inbox_options(args)))
        log.info(f"waiting for tasks; levels in order: {', '.join(args.levels)}")
        while not stop.requested:
            order = list(args.levels)
            if args.starvation_guard and streak >= args.starvation_guard and len(order) > 1:
                order = [order[1], order[0], *order[2:]]  # the next level gets one turn first

            if args.age_after:  # ageing: a task that has waited too long counts one level up
                pairs = zip(args.levels[:-1], args.levels[1:], strict=True)  # (upper, lower)
                for upper, lower in reversed(list(pairs)):  # bottom up: aged normal before aged low
                    if next_waited(inbox[lower]) > args.age_after:
                        order.insert(order.index(upper), lower)  # looked at before `upper`

            # The lesson: the highest level first; a lower one only if all above it are empty.
            for level in order:
                messages = inbox[level].receive_batch(args.batch_size)  # one call, no waiting
                if messages:
                    break
            else:
                idle.wait(stop)  # every level is empty: wait a little longer each time
                continue
            idle.reset()

            for message in messages:
                if stop.requested:
                    break
                with inbox[level].settle(message):  # fails: retried later or poisoned
                    task = codec.parse_json(message)
                    task_id = codec.app_id(task)  # no usable id: a bad message, to poison
                    waited = f" (waited {age(message):.0f} s)" if args.age_after else ""
                    log.info(f"took {task_id} from {level}: {task.get('text')}{waited}")
                    stop.sleep(args.work_seconds)  # the work; Ctrl+C interrupts it
                    done[level] += 1
                    log.info(f"done {task_id}")
                    inbox[level].delete(message)  # after the work, never before
            streak = streak + len(messages) if level == args.levels[0] else 0
            # ...and back to the top: the next task is again looked for at the highest level.

    counts = ", ".join(f"{level} {done[level]}" for level in args.levels)
    log.info(f"stopped: processed {sum(done.values())} task(s) ({counts})")
    return 0


if __name__ == "__main__":
    cli.run(main)
