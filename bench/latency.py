"""Latency: one order through the pipeline (validate, enrich, finalize) and a request/reply
round trip, p50/p95, after idle and while busy, at the default --idle-max and a lower one.

"After idle" samples are sent after a random pause long enough for every script to have
backed off to its slowest poll; "while busy" samples while about 10 other messages a second
flow through the same queues.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import NamedTuple

from azure.storage.queue import QueueClient

from bench import report
from bench.idle import LOWER_IDLE_MAX, WARM_UP
from bench.setup import Endpoints, Setup
from patterns.helper import cli, consume
from patterns.runner import echo, stop_all

SAMPLES = 8  # after idle, per setting; while busy: 3x as many
COST_WINDOW = 4.0  # s: the idle cost counted before the samples
IDLE_MAXES = (f"{consume.IDLE_MAX:g}", LOWER_IDLE_MAX)


def percentiles(values: list[float]) -> tuple[float, float]:
    """p50 and p95, in milliseconds."""
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values) * 1000, cuts[18] * 1000


class Measured(NamedTuple):
    idle: list[float]  # seconds, after an idle pause
    busy: list[float]  # seconds, while other messages flow
    cost: float | None  # receives per second per queue while idle (None: no server log)


def measure(
    setup: Setup,
    watched: list[str],
    sample: Callable[[], float],
    load: Callable[[], object],
    samples: int,
    pause: float,
) -> Measured:
    """`samples` after an idle pause (pause to 1.5 x pause s), then 3 x as many while `load`
    sends about 10 other messages a second through the same queues. First, the idle cost:
    the scripts' receives per second and queue on the `watched` queues, at their slowest poll
    (counted at the server)."""
    cost = None
    if setup.azurite is not None:
        time.sleep(WARM_UP)
        before = setup.requests()
        time.sleep(COST_WINDOW)
        after = setup.requests()
        polls = sum(after[q, "receive"] - before[q, "receive"] for q in watched)
        cost = polls / COST_WINDOW / len(watched)
    idle = []
    for _ in range(samples):
        time.sleep(random.uniform(pause, 1.5 * pause))
        idle.append(sample())
    stop = threading.Event()

    def feed() -> None:
        while not stop.wait(0.1):
            load()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(1.5)  # every script polls at once by now
    busy = []
    try:
        for _ in range(3 * samples):
            busy.append(sample())
            time.sleep(0.1)
    finally:
        stop.set()
        feeder.join()
    return Measured(idle, busy, cost)


def order(tag: str) -> str:
    return json.dumps({
        "order_id": f"ORD-{tag}-{uuid.uuid4().hex[:8]}", "amount": 25000, "items": ["item-A"],
        "sent_at": datetime.now(timezone.utc).isoformat(),
    })  # fmt: skip


def pipeline(setup: Setup, idle_max: str, samples: int, pause: float) -> Measured:
    """End-to-end seconds of one order, as finalize.py reports it."""
    q = setup.name
    flags = ("--idle-max", idle_max)
    procs = [
        setup.start("patterns.pipes_and_filters.finalize", "--input", q("f"), *flags),
        setup.start("patterns.pipes_and_filters.enrich", "--input", q("e"), "--output", q("f"),
                    *flags),
        setup.start("patterns.pipes_and_filters.validate", "--input", q("v"), "--output", q("e"),
                    "--rejected", q("r"), *flags),
    ]  # fmt: skip
    final, inbox = procs[0], setup.service.get_queue_client(q("v"))

    def sample() -> float:
        body = order("sample")
        inbox.send_message(body)
        order_id = json.loads(body)["order_id"]
        line = final.wait_for(rf"finished {order_id} after (\S+) s", timeout=30)[0]
        return float(line.group(1))

    try:
        for proc in procs:
            proc.wait_for(r"orders (from|on) ")

        def load() -> None:
            inbox.send_message(order("load"))

        return measure(setup, [q("v"), q("e"), q("f")], sample, load, samples, pause)
    finally:
        stop_all(procs)


def round_trips(setup: Setup, idle_max: str, samples: int, pause: float) -> Measured:
    """Seconds from a request sent to its reply received, polling as requestor.py does."""
    requests: QueueClient = setup.queue(f"req-{idle_max.replace('.', '')}")
    replier = setup.start("patterns.request_reply.replier", "--queue", requests.queue_name,
                          "--idle-max", idle_max)  # fmt: skip
    # The replier answers only queues named reply-...: these two are not under the run's prefix.
    mine, others = (setup.service.create_queue(f"reply-{uuid.uuid4()}") for _ in range(2))
    never = cli.Shutdown()

    def ask(reply_to: QueueClient) -> str:
        correlation_id = str(uuid.uuid4())
        body = {"correlation_id": correlation_id, "reply_to": reply_to.queue_name, "payload": "hi"}
        requests.send_message(json.dumps(body), time_to_live=30)
        return correlation_id

    def sample() -> float:
        began = time.perf_counter()
        correlation_id = ask(mine)
        idle = consume.Backoff(initial=0.02, maximum=0.1)
        while True:
            for message in mine.receive_messages(max_messages=32):
                mine.delete_message(message)
                if json.loads(message.content).get("correlation_id") == correlation_id:
                    return time.perf_counter() - began
            idle.wait(never)

    try:
        replier.wait_for("waiting for requests")
        return measure(setup, [requests.queue_name], sample, lambda: ask(others), samples, pause)
    finally:
        stop_all([replier])
        for queue in (mine, others):
            queue.delete_queue()


def rows(endpoints: Endpoints) -> tuple[list[report.Row], list[str]]:
    found = []
    samples = endpoints.samples
    for idle_max in IDLE_MAXES:
        # After idle: long enough for the backoff (0.1 s, doubling) to reach --idle-max.
        pause = max(2.0, 3 * float(idle_max)) if idle_max == IDLE_MAXES[0] else 1.0
        setting = f"--idle-max {idle_max}" + (" (default)" if idle_max == IDLE_MAXES[0] else "")
        for what, measure_one in (("pipeline end to end", pipeline),
                                  ("request/reply round trip", round_trips)):  # fmt: skip
            with endpoints.open() as setup:
                measured = measure_one(setup, idle_max, samples, pause)
            for when, values in (("after idle", measured.idle), ("while busy", measured.busy)):
                p50, p95 = percentiles(values)
                note = f"p95 {p95:,.0f} ms; {len(values)} samples"
                if when == "after idle" and measured.cost is not None:
                    note += f"; idle cost {measured.cost:.2f} req/s per queue"
                row = report.Row(f"{what}, {when}, {setting}", p50, "ms p50", note=note)
                found.append(row)
                echo(f"bench: {row.what}: {row.cells()[1]}")
    return found, [
        f"Latency: after idle = a single message sent after {samples} random pauses of "
        "2-3 s (default --idle-max) or 1-1.5 s (the lower one), when every script polls at its "
        "slowest; while busy = 3x as many samples with about 10 other messages a second "
        "flowing through the same queues. The pipeline's figure is finalize.py's own "
        "(`finished ... after`, from the order's sent_at); the round trip is timed by the "
        "bench, polling its reply queue as requestor.py does (every 0.02-0.1 s). Idle cost: "
        f"the scripts' receives per second and queue in {COST_WINDOW:g} s before the samples, "
        "at their slowest poll (counted at the server; the idle rows count it over "
        "longer). Between sparse messages it is higher: after each message the backoff "
        "starts again at 0.1 s.",
    ]
