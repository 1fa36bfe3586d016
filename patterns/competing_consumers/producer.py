"""Competing consumers - the producer: puts N independent tasks on one queue.

Run it after (or before) starting one or more consumers:

    python patterns/competing_consumers/producer.py              # 20 tasks to tasks-queue
    python -m patterns.competing_consumers.producer --count 100

Queue Storage has no batch send, so the tasks are sent concurrently (--concurrency).
--delay SECONDS schedules them: each stays invisible until then (up to 7 days).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

from patterns.helper import cli, connect
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "tasks-queue", "queue to send to")
    parser.add_argument("--count", type=cli.whole_number(least=1), default=20, help="tasks to send")
    cli.add_concurrency_argument(parser)
    parser.add_argument(
        "--failing", type=cli.whole_number(least=0), default=0, metavar="N",
        help="make the first N tasks fail, to watch retries and the poison queue",
    )  # fmt: skip
    parser.add_argument(
        "--delay", type=cli.delay, default=0, metavar="SECONDS",
        help="deliver the tasks only after SECONDS (scheduled work)",
    )  # fmt: skip
    args = parser.parse_args()
    log = cli.logger("producer")
    queue = connect.open_queue(args.queue)

    # Each task carries its own application id: the service's message id changes on every
    # copy or retry, ours does not, so consumers can report (and de-duplicate) by it.
    run_id = uuid.uuid4().hex[:8]

    def tasks() -> Iterator[dict[str, object]]:  # made one by one, as there is room to send
        for n in range(1, args.count + 1):
            task: dict[str, object] = {"id": f"task-{n:03d}-{run_id}", "n": n}
            if n <= args.failing:
                task["fail"] = True  # the consumer raises an error for these
            yield task

    def send(task: dict[str, object]) -> dict[str, object]:
        connect.send_json(queue, task, delay=args.delay)  # hidden from everyone until then
        return task

    started = time.perf_counter()
    for task in workers.concurrently(send, tasks(), args.concurrency):  # in order, as each ends
        log.info(f"sent {task['id']}")
    seconds = time.perf_counter() - started
    rate = args.count / seconds if seconds else 0.0
    log.info(f"sent {args.count} tasks to '{args.queue}' in {seconds:.2f} s ({rate:.0f}/s)")
    if args.delay:
        due = datetime.now() + timedelta(seconds=args.delay)
        log.info(f"they stay invisible for {args.delay} s, until {due:%Y-%m-%d %H:%M:%S}")
    return 0


if __name__ == "__main__":
    cli.run(main)
