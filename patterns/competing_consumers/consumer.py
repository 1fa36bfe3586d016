"""Competing consumers - one consumer: takes tasks from a queue that others also read.

Start several, each in its own terminal; each task goes to exactly one of them:

    python patterns/competing_consumers/consumer.py
    python -m patterns.competing_consumers.consumer --work-seconds 1

A received message is hidden from the others for --visibility-timeout seconds; the consumer
deletes it only when the work is done. If the consumer dies, the message reappears and another
consumer takes it. Ctrl+C hands the task in progress back at once.
"""

from __future__ import annotations

from patterns.helper import cli, codec, consume


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "tasks-queue", "queue to consume")
    cli.add_consumer_arguments(parser, work_seconds=2.0)
    args = parser.parse_args()
    log = cli.logger("consumer")
    stop = cli.Shutdown()
    processed = 0

    with consume.Inbox(args.queue, log, visibility_timeout=args.visibility_timeout,
                       max_attempts=args.max_attempts, batch_size=args.batch_size,
                       idle_max=args.idle_max, retry_backoff=args.retry_backoff,
                       retry_backoff_max=args.retry_backoff_max) as inbox:  # fmt: skip
        log.info(f"waiting for tasks on '{args.queue}'")
        while not stop.requested:
            for message in inbox.batch(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # delete on success; retry or poison on failure
                    task = codec.parse_json(message)
                    task_id = codec.app_id(task)  # no usable id: a bad message, to poison
                    log.info(f"took {task_id} (attempt {message.dequeue_count})")
                    if task.get("fail"):
                        raise RuntimeError("the task asked to fail")
                    stop.sleep(args.work_seconds)  # the work; Ctrl+C interrupts it
                    processed += 1
                    log.info(f"done {task_id}")
    log.info(f"stopped: processed {processed} task(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
