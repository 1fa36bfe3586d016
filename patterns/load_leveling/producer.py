"""Load levelling - a bursty producer: bursts of tasks with quiet lulls between them.

Run it while the autoscaler watches the queue:

    python patterns/load_leveling/producer.py
    python -m patterns.load_leveling.producer --bursts 3 --burst-size 40 --lull-seconds 10

The queue absorbs each burst; the consumers behind it work at their own pace.
"""

from __future__ import annotations

import time
import uuid

from patterns.helper import cli, connect
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "tasks-leveling", "queue to send to")
    parser.add_argument("--bursts", type=cli.whole_number(least=1), default=3, help="bursts")
    parser.add_argument(
        "--burst-size", type=cli.whole_number(least=1), default=40, metavar="N",
        help="tasks in each burst",
    )  # fmt: skip
    parser.add_argument(
        "--lull-seconds", type=cli.seconds(most=3600), default=10, metavar="SECONDS",
        help="quiet time between bursts",
    )  # fmt: skip
    cli.add_concurrency_argument(parser)
    args = parser.parse_args()
    log = cli.logger("producer")
    stop = cli.Shutdown()
    queue = connect.open_queue(args.queue)
    run_id = uuid.uuid4().hex[:8]  # our own ids, as in competing consumers

    def send(task: dict[str, object]) -> dict[str, object]:
        connect.send_json(queue, task)
        return task

    for burst in range(1, args.bursts + 1):
        tasks = [
            {"id": f"task-{burst}-{n:03d}-{run_id}", "n": n} for n in range(1, args.burst_size + 1)
        ]
        started = time.perf_counter()
        for task in workers.concurrently(send, tasks, args.concurrency):
            log.info(f"sent {task['id']}")
        seconds = time.perf_counter() - started
        log.info(f"burst {burst}: sent {len(tasks)} tasks to '{args.queue}' in {seconds:.2f} s")
        if burst < args.bursts:
            log.info(f"lull: quiet for {args.lull_seconds:g} s")
            if stop.wait(args.lull_seconds):  # Ctrl+C: no more bursts
                break
    return 0


if __name__ == "__main__":
    cli.run(main)
