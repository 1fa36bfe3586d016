"""Load levelling - the autoscaler: starts and stops consumers as the queue's backlog grows.

Start it, then run the bursty producer in another terminal:

    python patterns/load_leveling/autoscaler.py
    python -m patterns.load_leveling.autoscaler --min 1 --max 5 --target 5 --cooldown 30

Every --interval seconds it reads the queue's length and wants ceil(length / --target)
consumers, between --min and --max: the rule of KEDA's Azure Queue scaler. It adds consumers at
once, but removes them only after --cooldown seconds of lower demand, so a short lull does not
make it flap. It stops a consumer with Ctrl+C, newest first: the consumer hands its task back
to the queue, so nothing is lost. Its own Ctrl+C stops every consumer it started.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import deque

from patterns.helper import cli, connect
from patterns.runner import Proc

CONSUMER = "patterns.competing_consumers.consumer"
SPARKS = "▁▂▃▄▅▆▇█"


def desired(queue_length: int, target: int, least: int, most: int) -> int:
    """KEDA's rule: one consumer per `target` messages waiting, rounded up, within limits."""
    return max(least, min(most, math.ceil(queue_length / target)))


def sparkline(values: deque[int]) -> str:
    """The backlog over the last ticks, each scaled to the highest: ▁ is empty, █ the peak."""
    peak = max(values, default=0) or 1
    text = "".join(SPARKS[math.ceil(v / peak * (len(SPARKS) - 1))] for v in values)
    return text.rjust(values.maxlen or 0)


def echo(line: str) -> None:
    sys.stdout.write(f"  {line}\n")  # one write, so it never splits one of our own lines
    sys.stdout.flush()


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "tasks-leveling", "queue to watch and consume")
    parser.add_argument("--min", type=cli.whole_number(least=0), default=1, help="fewest consumers")
    parser.add_argument("--max", type=cli.whole_number(least=1), default=5, help="most consumers")
    parser.add_argument(
        "--target", type=cli.whole_number(least=1), default=5, metavar="N",
        help="messages waiting per consumer (KEDA's queueLength)",
    )  # fmt: skip
    parser.add_argument(
        "--interval", type=cli.seconds(above=0, most=300), default=2, metavar="SECONDS",
        help="time between looks at the queue",
    )  # fmt: skip
    parser.add_argument(
        "--cooldown", type=cli.seconds(most=3600), default=30, metavar="SECONDS",
        help="lower demand this long before a consumer is stopped",
    )  # fmt: skip
    parser.add_argument(
        "--work-seconds", type=cli.seconds(most=3600), default=1, metavar="SECONDS",
        help="each consumer's simulated work per task",
    )  # fmt: skip
    args = parser.parse_args()
    if args.min > args.max:
        parser.error(f"argument --min: expected at most --max ({args.max}), got {args.min}")
    log = cli.logger("autoscaler")
    stop = cli.Shutdown()
    queue = connect.open_queue(args.queue, log)
    consumer_args = ["--queue", args.queue, "--work-seconds", f"{args.work_seconds:g}"]
    consumers: list[Proc] = []  # oldest first
    backlog: deque[int] = deque(maxlen=20)
    lower_since: float | None = None  # since when fewer consumers would do

    def start_consumer() -> None:
        # A process group of its own: the terminal's Ctrl+C reaches only us; we stop it.
        consumer = Proc(CONSUMER, *consumer_args, env=dict(os.environ), echo=echo, own_group=True)
        consumers.append(consumer)
        log.info(f"started consumer pid {consumer.pid}")

    def stop_newest(count: int) -> None:
        leaving = [consumers.pop() for _ in range(count)]  # newest first
        for consumer in leaving:
            consumer.send_signal()  # Ctrl+C: it hands back its task and exits
        for consumer in leaving:
            log.info(f"stopped consumer pid {consumer.pid} (exit {consumer.stop()})")

    try:
        log.info(f"watching '{args.queue}': {args.min}-{args.max} consumers, {args.target} each")
        while not stop.requested:
            for gone in [c for c in consumers if c.popen.poll() is not None]:
                consumers.remove(gone)
                log.warning(f"consumer pid {gone.pid} exited by itself ({gone.wait()})")
            # Approximate, and it counts invisible messages too: those in a consumer's hands.
            length = queue.get_queue_properties().approximate_message_count
            backlog.append(length)
            want = desired(length, args.target, args.min, args.max)
            running, now = len(consumers), time.monotonic()
            if want >= running:
                lower_since = None
            elif lower_since is None:
                lower_since = now
            waited = 0.0 if lower_since is None else now - lower_since
            cooling = lower_since is not None and waited < args.cooldown
            if want == running:
                change = ""
            elif cooling:
                change = f" (wants {want}; cool-down {args.cooldown - waited:.0f} s)"
            else:
                change = f" -> {want}"
            log.info(f"queue {length:>4} {sparkline(backlog)} consumers {running}{change}")
            if want > running:  # scale up at once: the backlog is waiting
                for _ in range(want - running):
                    start_consumer()
            elif want < running and not cooling:
                stop_newest(running - want)
                lower_since = None
            stop.wait(args.interval)
    finally:  # also on an error: never leave a consumer behind
        if consumers:
            stop_newest(len(consumers))
    log.info("stopped")
    return 0


if __name__ == "__main__":
    cli.run(main)
