"""The two lessons on Table Storage against the plain competing consumer, on the same endpoint:
messages per second and requests per message (queue and table, counted by the emulator).

Each run: a fresh emulator, the lesson's producer fills a queue, two consumers drain it
(--batch-size 32, no simulated work), their rate read from their own `applied` / `done` lines.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import report
from bench.setup import Endpoints, Setup
from bench.throughput import drained, raw_send
from patterns.runner import Proc, echo, log_seconds

CONSUMERS = 2
OPTIONS = ("--work-seconds", "0", "--batch-size", "32", "--idle-max", "0.5")
KEYS = 50  # accounts or orders: enough that two consumers seldom race for one partition
# Requests per message, its send included: the plain consumer's are send + receive(32)/32 +
# delete, 2.03. Each lesson adds a table read and a transaction: 4.03, about 2x. A consumer
# settles a message with one request (delete) in the plain case, three in turn here (read,
# transaction, delete), and a transaction (a multipart batch of two writes) costs the emulator
# more than a queue request: at least a quarter of the plain rate is what the design allows.
RATE = report.Target(at_least=True, limit=0.25)
REQUESTS = report.Target(at_least=False, limit=2.2)
# (name, consumer, its ready line, its per-message line, producer and its arguments)
RUNS = [
    ("plain", "patterns.competing_consumers.consumer", "waiting for tasks", r"\] done ", None),
    ("exactly_once/consumer.py", "patterns.exactly_once.consumer", "applying payments",
     r"\] applied ", ("patterns.exactly_once.producer", "--accounts", str(KEYS))),
    ("ordered/consumer.py, events in order", "patterns.ordered.consumer", "applying events",
     r"\] applied ", ("patterns.ordered.producer", "--keys", str(KEYS))),
    ("ordered/consumer.py, events shuffled", "patterns.ordered.consumer", "applying events",
     r"\] applied ", ("patterns.ordered.producer", "--keys", str(KEYS), "--shuffle")),
]  # fmt: skip


def lines(path: Path | None) -> int:
    return len(path.read_text(errors="replace").splitlines()) if path and path.exists() else 0


def drain(setup: Setup, run: tuple, count: int) -> tuple[float, float]:
    """(messages per second, requests per message) of one run."""
    _name, consumer, ready, each, producer = run
    queue = setup.queue("tables")
    procs = [setup.start(consumer, "--queue", queue.queue_name, *OPTIONS)
             for _ in range(CONSUMERS)]  # fmt: skip
    try:
        for proc in procs:
            proc.wait_for(ready, timeout=60)
        before = _requests(setup, queue.queue_name)
        if producer is None:
            raw_send(queue, count)
        else:
            module, *args = producer
            sizing = ("--count", str(count)) if "--accounts" in args else (
                "--events", str(count // KEYS))  # fmt: skip
            setup.start(module, "--queue", queue.queue_name, *args, *sizing).wait(180)
        drained(queue)
        deadline = time.monotonic() + 60
        while sum(len(p.matches(each)) for p in procs) < count and time.monotonic() < deadline:
            time.sleep(0.2)
        requests = _requests(setup, queue.queue_name) - before
    finally:
        for proc in procs:
            proc.stop()
    return _rate(procs, each), requests / count


def _requests(setup: Setup, queue: str) -> int:
    """Requests on the queue's messages and on the table service (its own log) so far."""
    counted = setup.requests()
    on_queue = counted[(queue, "receive")] + counted[(queue, "message")]
    assert setup.azurite is not None
    return on_queue + lines(setup.azurite.table_log_path)


def _rate(procs: list[Proc], each: str) -> float:
    """Messages per second from the consumers' lines: from the first message settled to the
    last (they were up before the producer started)."""
    times = sorted(log_seconds(m.string) for p in procs for m in p.matches(each))
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def rows(endpoints: Endpoints) -> tuple[list[report.Row], list[str]]:
    count = endpoints.count // 2 // KEYS * KEYS  # a whole number of events per order
    found: dict[str, list[tuple[float, float]]] = {}
    for _ in range(2):  # each twice, in turns: a slow spell of the machine hits all
        for run in RUNS:
            with endpoints.open() as setup:
                if setup.azurite is None:
                    return [], ["Tables: not measured against an account (its requests "
                                "cannot be counted here)."]  # fmt: skip
                rate, per = drain(setup, run, count)
            echo(f"bench: tables, {run[0]}: {rate:.0f} msg/s, {per:.2f} requests per message")
            found.setdefault(run[0], []).append((rate, per))
    plain_rate, plain_per = max(found["plain"])
    how = f"{CONSUMERS} consumers, --batch-size 32"
    out = [report.Row(f"tables, the reference: competing_consumers/consumer.py, {how}",
                      plain_rate, "msg/s", note=f"{plain_per:.2f} requests per message, "
                      "its send included")]  # fmt: skip
    for name, *_ in RUNS[1:]:
        rate, per = max(found[name])
        shuffled = name.endswith("shuffled")
        out.append(report.Row(f"tables: {name}, {how}: rate against the reference", rate,
                              "msg/s", plain_rate, None if shuffled else RATE))  # fmt: skip
        out.append(report.Row(f"tables: {name}: requests per message, its send included",
                              per, "req", plain_per, None if shuffled else REQUESTS))  # fmt: skip
    notes = [
        f"Table lessons: {count} messages per run ({KEYS} accounts or orders), {CONSUMERS} "
        "consumers at --batch-size 32 without simulated work, each lesson and the plain "
        "competing consumer in turns on fresh emulators, the best of 2 runs each. Requests are "
        "counted by the emulator (queue and table logs), the send included. Targets: a "
        "lesson adds a table read and a transaction to the plain send + receive + delete, "
        "about 2× the requests (≤ 2.2×). A consumer settles each message with three requests "
        "in turn (read, transaction, delete) where the plain one makes one (delete), and a "
        "transaction costs the emulator more than a queue request: ≥ 0.25× the plain rate. "
        "Shuffled events (no target: a worst case, every order's events in random order) also "
        "pay a read and an update_message per early delivery, and wait out the put-back delays."
    ]
    return out, notes
