"""Load levelling - the autoscaler: starts and stops consumers as the queue's backlog grows.

Start it, then run the bursty producer in another terminal:

    python patterns/load_leveling/autoscaler.py
    python -m patterns.load_leveling.autoscaler --min 1 --max 5 --target 5 --cooldown 30

Every --interval seconds it reads the queue's length and wants ceil(length / --target)
consumers, between --min and --max: the rule of KEDA's Azure Queue scaler. It adds consumers at
once, but removes them only after --cooldown seconds of lower demand, so a short lull does not
make it flap. It stops a consumer with Ctrl+C, newest first: the consumer hands its task back
to the queue, so nothing is lost. Its own Ctrl+C stops every consumer it started.

Starting and stopping processes is this lesson too: each consumer is a `subprocess.Popen` in a
session of its own (the terminal's Ctrl+C reaches only the autoscaler, which decides), writing
its lines to the same terminal; it is stopped with SIGINT, and killed if it does not stop.
"""

from __future__ import annotations

import ctypes
import logging
import math
import signal
import subprocess
import sys
import time
from collections import deque

from patterns.helper import cli, connect
from patterns.helper.support import outage  # riding out an outage is part of this lesson

CONSUMER = "patterns.competing_consumers.consumer"
STOP_TIMEOUT = 15  # seconds a consumer has to hand back its task and exit before it is killed
SPARKS = "▁▂▃▄▅▆▇█"
PR_SET_PDEATHSIG = 1  # Linux prctl(2): the signal a process gets when its parent dies


def desired(queue_length: int, target: int, least: int, most: int) -> int:
    """KEDA's rule: one consumer per `target` messages waiting, rounded up, within limits."""
    return max(least, min(most, math.ceil(queue_length / target)))


def sparkline(values: deque[int]) -> str:
    """The backlog over the last ticks, each scaled to the highest: ▁ is empty, █ the peak."""
    peak = max(values, default=0) or 1
    text = "".join(SPARKS[math.ceil(v / peak * (len(SPARKS) - 1))] for v in values)
    return text.rjust(values.maxlen or 0)


def stopped_when_we_die() -> None:
    """Run in a new consumer just before it starts (Linux): when the autoscaler dies, even by
    kill -9, the kernel sends the consumer SIGTERM, which it takes as Ctrl+C. Linux sends it
    when the consumer's parent *thread* ends, and the threads of a dying process end one by
    one, handing the consumer on each time: a parent with five threads sent up to four. So we
    start no thread (the consumers write to the terminal themselves, no pipe to read), and a
    consumer takes a second SIGTERM as the same stop anyway."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_consumer(args: list[str]) -> subprocess.Popen[bytes]:
    """A consumer process: our terminal for its output (each of its lines is one write, so
    lines never mix), a session of its own (the terminal's Ctrl+C reaches only us)."""
    return subprocess.Popen(
        [sys.executable, "-m", CONSUMER, *args],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=stopped_when_we_die if sys.platform == "linux" else None,
    )


def stop_consumers(leaving: list[subprocess.Popen[bytes]], log: logging.Logger) -> None:
    """Ctrl+C (SIGINT) to each at once, so that they stop side by side: each hands back the
    task it holds and exits. One that has not exited after STOP_TIMEOUT is killed; its task
    comes back after its visibility timeout."""
    for consumer in leaving:
        consumer.send_signal(signal.SIGINT)
    for consumer in leaving:
        try:
            code = consumer.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            consumer.kill()
            code = consumer.wait()
        log.info(f"stopped consumer pid {consumer.pid} (exit {code})")


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
    queue = connect.open_queue(args.queue)
    consumer_args = ["--queue", args.queue, "--work-seconds", f"{args.work_seconds:g}"]
    consumers: list[subprocess.Popen[bytes]] = []  # oldest first
    backlog: deque[int] = deque(maxlen=20)
    lower_since: float | None = None  # since when fewer consumers would do

    try:
        log.info(f"watching '{args.queue}': {args.min}-{args.max} consumers, {args.target} each")
        while not stop.requested:
            for gone in [c for c in consumers if c.poll() is not None]:
                consumers.remove(gone)
                log.warning(f"consumer pid {gone.pid} exited by itself ({gone.returncode})")
            try:
                with cli.interruptible():  # Ctrl+C: no need to wait for the answer
                    # Approximate, and it counts invisible messages: those in a consumer's hands.
                    length = queue.get_queue_properties().approximate_message_count
            except cli.Interrupted:
                break
            except Exception as error:  # an outage: warned once; the pool goes on as it is
                if not outage.queue_service.warn_if_away(error):
                    raise
                stop.wait(args.interval)
                continue
            outage.queue_service.over()
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
                    consumers.append(start_consumer(consumer_args))
                    log.info(f"started consumer pid {consumers[-1].pid}")
            elif want < running and not cooling:
                leaving = [consumers.pop() for _ in range(running - want)]  # newest first
                stop_consumers(leaving, log)
                lower_since = None
            stop.wait(args.interval)
    finally:  # also on an error: never leave a consumer behind
        stop_consumers(consumers[::-1], log)  # newest first
    log.info("stopped")
    return 0


if __name__ == "__main__":
    cli.run(main)
