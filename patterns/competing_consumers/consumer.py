"""Competing consumers - one consumer: takes tasks from a queue that others also read.

Start several, each in its own terminal; each task goes to exactly one of them:

    python patterns/competing_consumers/consumer.py
    python -m patterns.competing_consumers.consumer --work-seconds 1
    python -m patterns.competing_consumers.consumer --concurrency 4

A received message is hidden from the others for --visibility-timeout seconds; the consumer
deletes it only when the work is done. If the consumer dies, the message reappears and another
consumer takes it. Ctrl+C hands the tasks in progress back at once. With --concurrency N, one
consumer works on up to N tasks at once, each on a thread and settled on its own.
"""

from __future__ import annotations

from azure.storage.queue import QueueMessage

from patterns.helper import cli, codec, consume
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "tasks-queue", "queue to consume")
    cli.add_consumer_arguments(parser, work_seconds=2.0)
    cli.add_concurrency_argument(parser, default=1, help="tasks in work at once (threads)")
    args = parser.parse_args()
    log = cli.logger("consumer")
    stop = cli.Shutdown()
    done: list[str] = []  # appended to by every worker (list.append is thread-safe)

    with consume.Inbox(args.queue, **cli.inbox_options(args)) as inbox:

        def work_on(message: QueueMessage) -> None:  # on a worker thread when --concurrency > 1
            with inbox.settle(message):  # fails: retried later or poisoned; Ctrl+C: released
                task = codec.parse_json(message)
                task_id = codec.app_id(task)  # no usable id: a bad message, to poison
                log.info(f"took {task_id} (attempt {message.dequeue_count})")
                if task.get("fail"):
                    raise RuntimeError("the task asked to fail")
                stop.sleep(args.work_seconds)  # the work; Ctrl+C interrupts it
                done.append(task_id)
                log.info(f"done {task_id}")
                inbox.delete(message)  # after the work, never before

        at_once = f", {args.concurrency} at a time" if args.concurrency > 1 else ""
        log.info(f"waiting for tasks on '{args.queue}'{at_once}")
        with workers.Workers(args.concurrency) as pool:  # leaving waits for work in progress
            while not stop.requested:
                # One receive call for no more messages than there are free workers (waits
                # for one if all are busy); backs off when the queue is empty.
                for message in inbox.receive(stop, most=pool.free()):
                    pool.submit(work_on, message)
    log.info(f"stopped: processed {len(done)} task(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
