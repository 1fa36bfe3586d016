"""Priority queue - the producer: sends each task to the queue of its priority level.

Queue Storage has no message priorities, so there is one queue per level:
tasks-high-priority, tasks-normal-priority and tasks-low-priority.

    python patterns/priority/producer.py          # as in the hands-on: 5 normal, 2 urgent, 5 normal
    python patterns/priority/producer.py --priority high --message "URGENT: disk full"
    python -m patterns.priority.producer --priority low --message "Rebuild index" --count 3

Tasks are sent one after the other, in order, so the urgent ones really are sent last.
"""

from __future__ import annotations

import itertools
import uuid

from patterns.helper import cli, connect

LEVELS = ("high", "normal", "low")


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--priority", choices=LEVELS, help="send --count tasks at this level")
    parser.add_argument(
        "--message", default="Task", metavar="TEXT", help="the task's text, with --priority"
    )
    parser.add_argument(
        "--count", type=cli.whole_number(least=1), default=1, help="tasks to send, with --priority"
    )
    parser.add_argument("--prefix", default="tasks", help="queues are PREFIX-LEVEL-priority")
    args = parser.parse_args()
    names = {level: f"{args.prefix}-{level}-priority" for level in LEVELS}
    for name in names.values():  # all three checked before the first is created
        connect.queue_name(name, consumed=True)
    log = cli.logger("producer")

    if args.priority:
        tasks = itertools.repeat((args.priority, args.message), args.count)  # one at a time
    else:  # the hands-on's scenario: normal work first, then two urgent tasks, then more normal
        tasks = [("normal", f"Normal task {n}") for n in range(1, 6)]
        tasks += [("high", "URGENT: System alert!"), ("high", "URGENT: High value customer order!")]
        tasks += [("normal", f"Normal task {n}") for n in range(6, 11)]

    queues = {level: connect.open_queue(name) for level, name in names.items()}
    run_id = uuid.uuid4().hex[:8]
    for n, (level, text) in enumerate(tasks, start=1):
        task = {"id": f"task-{n:02d}-{run_id}", "priority": level, "text": text}
        connect.send_json(queues[level], task)
        log.info(f"sent {task['id']} to {level}: {text}")
    log.info(f"sent {n} task(s)")  # there is always at least one
    return 0


if __name__ == "__main__":
    cli.run(main)
