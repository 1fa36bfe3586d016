"""Run every pattern end to end against a private, in-memory Azurite, then print a summary.

    make demo                         # or: python -m patterns.demo

Each script runs as a real subprocess, exactly as in the walkthrough; every output line is
prefixed with the script's role. Exit 0 only if every pattern passed its check.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import itertools
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from azure.storage.queue import QueueServiceClient

from patterns.emulator import Azurite
from patterns.helper import Fatal, cli
from patterns.helper.support import settings, tracing
from patterns.runner import Proc, echo, log_seconds, queue_exists, stop_all
from patterns.tools import journey


@dataclass
class Row:
    pattern: str
    sent: int
    processed: int
    seconds: float
    ok: bool
    detail: str = ""


class Stage:
    """Starts the scripts of one scenario and stops every one of them, whatever happens."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[Proc] = []

    def start(self, module: str, *args: str, label: str) -> Proc:
        proc = Proc(module, *args, env=self.env, label=label, echo=echo)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """Ctrl+C to every script at once, then collect their exit codes (in start order)."""
        return stop_all(self.procs)


@contextlib.contextmanager
def stage(env: dict[str, str]) -> Iterator[Stage]:
    current = Stage(env)
    try:
        yield current
    finally:
        current.stop_all()


def competing_consumers(env: dict[str, str]) -> Row:
    """3 consumers share 20 tasks; every task is done once, by more than one consumer."""
    count, consumers, work_seconds = 20, 3, "0.5"
    with stage(env) as s:
        workers = [
            s.start(
                "patterns.competing_consumers.consumer",
                *("--work-seconds", work_seconds),
                label=f"consumer-{n}",
            )
            for n in range(1, consumers + 1)
        ]
        for worker in workers:
            worker.wait_for(r"waiting for tasks")
        started = time.perf_counter()
        producer = s.start(
            "patterns.competing_consumers.producer", "--count", str(count), label="producer"
        )
        producer_ok = producer.wait(60) == 0
        sent = {m.group(1) for m in producer.matches(r"sent (task-\S+)$")}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(len(w.matches(r"done (task-\S+)")) for w in workers) >= count:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:consumers]
    done = [m.group(1) for w in workers for m in w.matches(r"done (task-\S+)")]
    busy = sum(1 for w in workers if w.matches(r"done task-"))
    ok = (
        producer_ok
        and len(sent) == count
        and sorted(done) == sorted(sent)
        and busy > 1
        and exits == [0] * consumers
    )
    detail = f"{busy} of {consumers} consumers shared the work"
    return Row("competing consumers", len(sent), len(done), seconds, ok, detail)


def concurrency(env: dict[str, str]) -> Row:
    """One consumer with --concurrency 4 and 8 tasks of 1 s: 4 in work at once (never more),
    every task done once, in about 2 s instead of 8."""
    count, queue = 8, "tasks-at-once"
    with stage(env) as s:
        consumer = s.start(
            "patterns.competing_consumers.consumer",
            *("--queue", queue, "--concurrency", "4", "--work-seconds", "1"),
            *("--batch-size", "32", "--idle-max", "0.2"),
            label="consumer",
        )
        consumer.wait_for(r"waiting for tasks")
        producer = s.start(
            "patterns.competing_consumers.producer",
            *("--queue", queue, "--count", str(count)),
            label="producer",
        )
        producer_ok = producer.wait(60) == 0
        sent = {m.group(1) for m in producer.matches(r"sent (task-\S+)$")}
        consumer.wait_for(r"\] done task-", count=count, timeout=60)
        exits = s.stop_all()[:1]
    events = [
        (log_seconds(m.string), m.group(1)) for m in consumer.matches(r"\] (took|done) task-")
    ]
    in_work, most = 0, 0  # tasks between their took and done lines, at each line
    for _, what in events:
        in_work += 1 if what == "took" else -1
        most = max(most, in_work)
    done = [m.group(1) for m in consumer.matches(r"done (task-\S+)")]
    seconds = events[-1][0] - events[0][0] if events else 0.0
    ok = producer_ok and len(sent) == count and sorted(done) == sorted(sent)
    ok = ok and most == 4 and exits == [0]
    detail = f"{most} tasks in work at once; {count} x 1 s took {seconds:.1f} s, not {count}"
    return Row("concurrency", len(sent), len(done), seconds, ok, detail)


def fanout(env: dict[str, str]) -> Row:
    """2 subscribers; one published message reaches each of them exactly once."""
    with stage(env) as s:
        subscribers = [
            s.start(
                "patterns.fanout.consumer",
                *("--subscriber", name, "--work-seconds", "0.2"),
                label=f"subscriber-{name}",
            )
            for name in ("a", "b")
        ]
        for subscriber in subscribers:
            subscriber.wait_for(r"subscribed: waiting")
        started = time.perf_counter()
        producer = s.start("patterns.fanout.producer", label="producer")
        producer_ok = producer.wait(60) == 0
        published = [m.group(1) for m in producer.matches(r"published (\S+) to 2 subscriber")]
        if published:
            for subscriber in subscribers:
                subscriber.wait_for(rf"done {published[0]}", timeout=30)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[: len(subscribers)]
    received = [[m.group(1) for m in sub.matches(r"\] took (\S+):")] for sub in subscribers]
    ok = producer_ok and len(published) == 1 and received == [published] * 2 and exits == [0, 0]
    detail = "2 subscribers each received the message exactly once" if ok else f"got {received}"
    return Row("fan-out", len(published), sum(map(len, received)), seconds, ok, detail)


SENT = r"sent (task-\S+) to (\w+):"  # a priority producer's line


def priority(env: dict[str, str]) -> Row:
    """The original hands-on's 5 normal, 2 urgent, 5 normal sent to a running consumer. All 12
    are queued while the consumer is still busy with its first task (checked), so whatever that
    first task was, both urgent tasks must come next, before every normal task still waiting."""
    with stage(env) as s:
        consumer = s.start(
            "patterns.priority.consumer",
            *("--work-seconds", "1", "--idle-max", "0.1"),  # room to send all 12 meanwhile
            label="consumer",
        )
        consumer.wait_for(r"waiting for tasks")
        started = time.perf_counter()
        producer = s.start("patterns.priority.producer", label="producer")
        producer_ok = producer.wait(60) == 0
        sent = [(log_seconds(m.string), m.group(1), m.group(2)) for m in producer.matches(SENT)]
        consumer.wait_for(r"\] done task-", count=len(sent) or 1, timeout=60)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:1]
    order = [m.group(1) for m in consumer.matches(r"took (task-\S+) from")]
    first_done = [log_seconds(m.string) for m in consumer.matches(r"\] done task-")][:1]
    # Log times of one machine's clock (every script here logs with the same one).
    all_sent_while_busy = bool(sent and first_done) and sent[-1][0] < first_done[0]
    urgent = [task for _, task, level in sent if level == "high"]
    waiting = [task for task in order[1:] if task not in urgent]  # normal, not yet started
    ok = (
        producer_ok
        and len(sent) == 12
        and sorted(order) == sorted(task for _, task, _ in sent)
        and len(urgent) == 2
        and all_sent_while_busy
        and all(order.index(u) < order.index(n) for u in urgent for n in waiting)
        and exits == [0]
    )
    detail = f"both urgent tasks before all {len(waiting)} normal tasks still queued"
    return Row("priority queue", len(sent), len(order), seconds, ok, detail)


def _service(env: dict[str, str]) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(env[settings.CONNECTION_STRING_VAR])


def pipes_and_filters(env: dict[str, str]) -> Row:
    """10 orders and 1 invalid one through validate -> enrich -> finalize: the 10 come out at
    the end, enriched, each once; the invalid one waits in queue-rejected with its reasons.
    With the `trace` extra installed, the run is traced and the slowest journey is drawn."""
    count = 10
    with _traced(env) as (traced_env, traces):
        return _pipes_and_filters(traced_env, count, traces)


@contextlib.contextmanager
def _traced(env: dict[str, str]) -> Iterator[tuple[dict[str, str], Path | None]]:
    """The environment with tracing to a temporary file, if OpenTelemetry is installed and
    the caller did not choose an exporter of their own; else the environment as it was."""
    if tracing.exporter_name(env) or importlib.util.find_spec("opentelemetry.sdk") is None:
        yield env, None
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "traces.jsonl"
        yield {**env, tracing.EXPORTER_VAR: "jsonl", tracing.FILE_VAR: str(path)}, path


def _pipes_and_filters(env: dict[str, str], count: int, traces: Path | None) -> Row:
    with stage(env) as s:
        roles = ("validate", "enrich", "finalize")
        filters = [s.start(f"patterns.pipes_and_filters.{role}", label=role) for role in roles]
        for proc in filters:
            proc.wait_for(r"orders (from|on) ")
        started = time.perf_counter()
        producer = s.start(
            "patterns.pipes_and_filters.producer", "--count", str(count), "--invalid",
            label="producer",
        )  # fmt: skip
        producer_ok = producer.wait(60) == 0
        sent = [m.group(1) for m in producer.matches(r"sent (ORD-\S+) \(amount")]
        filters[2].wait_for(r"finished ORD-", count=count, timeout=60)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[: len(filters)]
    finished = [m.group(1) for m in filters[2].matches(r"finished (ORD-\S+) after")]
    rejected_queue = _service(env).get_queue_client("queue-rejected")
    rejected = [
        json.loads(message.content)["order"]["order_id"]
        for message in rejected_queue.peek_messages(max_messages=32)
    ]
    valid = [order_id for order_id in sent if not order_id.endswith("-bad")]
    ok = (
        producer_ok
        and len(valid) == count
        and sorted(finished) == sorted(valid)
        and rejected == [order_id for order_id in sent if order_id.endswith("-bad")]
        and exits == [0, 0, 0]
    )
    detail = f"{len(finished)} of {count} orders finished, {len(rejected)} in queue-rejected"
    if traces is not None and traces.is_file():  # the slowest order's journey, drawn
        found = journey.journeys(journey.read_spans(traces)[0])
        slowest = max(found, key=lambda j: j.total_ms, default=None)
        for line in [journey.LEGEND, *(journey.timeline(slowest).splitlines() if slowest else [])]:
            echo(f"[journey] {line}")
    return Row("pipes and filters", len(sent), len(finished) + len(rejected), seconds, ok, detail)


def request_reply(env: dict[str, str]) -> Row:
    """One requestor sends 10 requests at once: each reply is matched to its request by
    correlation id, and the requestor's reply queue is gone afterwards."""
    count = 10
    with stage(env) as s:
        replier = s.start("patterns.request_reply.replier", label="replier")
        replier.wait_for(r"waiting for requests")
        started = time.perf_counter()
        requestor = s.start(
            "patterns.request_reply.requestor", "--count", str(count), label="requestor"
        )
        requestor_ok = requestor.wait(60) == 0
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:1]
    matched = requestor.matches(r"reply to request (\d+): '([^']*)'")
    right = all(m.group(2) == f"HELLO WORLD {m.group(1)}" for m in matched)
    [reply_queue] = [m.group(1) for m in requestor.matches(r"on '(reply-[0-9a-f-]+)'")][:1] or [""]
    gone = bool(reply_queue) and not queue_exists(_service(env), reply_queue)
    ok = requestor_ok and len(matched) == count and right and gone and exits == [0]
    detail = f"{len(matched)} of {count} replies matched, reply queue " + (
        "deleted" if gone else "LEFT BEHIND"
    )
    return Row("request/reply", count, len(matched), seconds, ok, detail)


def load_leveling(env: dict[str, str]) -> Row:
    """Two bursts of 20 tasks: the autoscaler adds consumers, every task is done once, and
    after the cool-down it is back to one consumer; every consumer it started has exited."""
    count = 40
    with stage(env) as s:
        scaler = s.start(
            "patterns.load_leveling.autoscaler",
            *("--min", "1", "--max", "4", "--target", "5", "--interval", "0.5"),
            *("--cooldown", "3", "--work-seconds", "0.2"),
            label="autoscaler",
        )
        scaler.wait_for(r"consumer\[\d+\] waiting for tasks")
        started = time.perf_counter()
        producer = s.start(
            "patterns.load_leveling.producer",
            *("--bursts", "2", "--burst-size", str(count // 2), "--lull-seconds", "2"),
            label="producer",
        )
        producer_ok = producer.wait(60) == 0
        scaler.wait_for(r"consumer\[\d+\] done task-", timeout=60, count=count)
        seconds = time.perf_counter() - started
        scaler.wait_for(r"consumers [2-9] -> 1$", timeout=30)  # after the cool-down
        exits = s.stop_all()[:1]
    sent = [m.group(1) for m in producer.matches(r"sent (task-\S+)$")]
    done = [m.group(1) for m in scaler.matches(r"consumer\[\d+\] done (task-\S+)")]
    most = max(int(m.group(1)) for m in scaler.matches(r"consumers (\d+)"))
    pids = {m.group(1) for m in scaler.matches(r"started consumer pid (\d+)")}
    stopped = {m.group(1) for m in scaler.matches(r"stopped consumer pid (\d+) \(exit 0\)")}
    ok = (
        producer_ok
        and len(set(sent)) == count
        and sorted(done) == sorted(sent)
        and most > 1
        and pids == stopped
        and exits == [0]
    )
    detail = f"consumers 1 -> {most} -> 1, {len(stopped)} stopped cleanly"
    return Row("load levelling", len(sent), len(done), seconds, ok, detail)


def time_lesson(env: dict[str, str]) -> Row:
    """A task sent with --delay 2 is not received before 2 s and is done after; a failing
    task is retried after a backoff of 1 s, then 2 s, and poisoned at its 3rd attempt."""
    queue = "tasks-later"
    with stage(env) as s:
        consumer = s.start(
            "patterns.competing_consumers.consumer",
            *("--queue", queue, "--work-seconds", "0", "--max-attempts", "3"),
            *("--idle-max", "0.2"),
            label="consumer",
        )
        consumer.wait_for(r"waiting for tasks")
        started = time.perf_counter()
        producers = [
            s.start(
                "patterns.competing_consumers.producer",
                *("--queue", queue, "--count", "1", *extra),
                label=label,
            )
            for label, extra in (("producer-delayed", ("--delay", "2")),
                                 ("producer-failing", ("--failing", "1")))
        ]  # fmt: skip
        producers_ok = [p.wait(60) for p in producers] == [0, 0]
        consumer.wait_for(rf"moved message .* to '{queue}-poison'", timeout=30)
        consumer.wait_for(r"\] done task-", timeout=30)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:1]
    [delayed, failing] = [p.matches(r"\] sent (task-\S+)$")[:1] for p in producers]
    took = {}  # task id -> times of its "took" lines
    for m in consumer.matches(r"\] took (task-\S+) "):
        took.setdefault(m.group(1), []).append(log_seconds(m.string))
    waited = took[delayed[0].group(1)][0] - log_seconds(delayed[0].string) if delayed else 0.0
    tries = took.get(failing[0].group(1), []) if failing else []
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    said = [m.group(1) for m in consumer.matches(r"next attempt in (\d+) s")]
    records = [
        json.loads(m.content)
        for m in _service(env).get_queue_client(f"{queue}-poison").peek_messages(max_messages=32)
    ]
    ok = (
        producers_ok
        and waited >= 1.5  # its 2 s delay, give or take the clocks' milliseconds
        and len(gaps) == 2
        and gaps[0] >= 0.5
        and gaps[1] >= 1.5  # not before the 1 s, then 2 s backoff
        and said == ["1", "2"]
        and [(r["dequeue_count"], r["reason"][:14]) for r in records] == [(3, "failed 3 times")]
        and exits == [0]
    )
    shown = ", ".join(f"{gap:.1f}" for gap in gaps)
    detail = f"delayed task taken after {waited:.1f} s; retries {shown} s apart, then poisoned"
    return Row("delays, retry backoff", 2, 1 + len(records), seconds, ok, detail)


def claim_check(env: dict[str, str]) -> Row:
    """Six payloads, 2 KB and 200 KB in turn: the small ones travel inline, the big ones in a
    blob; every one is processed once and the blob container is empty at the end."""
    from azure.storage.blob import BlobServiceClient  # only this row needs blobs

    count = 6
    with stage(env) as s:
        consumer = s.start("patterns.claim_check.consumer", "--work-seconds", "0", label="consumer")
        consumer.wait_for("waiting for payloads")
        started = time.perf_counter()
        producer = s.start("patterns.claim_check.producer", "--count", str(count), label="producer")
        producer_ok = producer.wait(60) == 0
        consumer.wait_for(r"\] done claim-", timeout=60, count=count)
        consumer.wait_for(r"\] deleted blob ", timeout=30, count=count // 2)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:1]
    sent = [m.group(1) for m in producer.matches(r"sent (claim-\S+): ")]
    done = [m.group(1) for m in consumer.matches(r"\] done (claim-\S+)")]
    via_blob = len(consumer.matches(r"\] took claim-\S+ \(\d+ bytes from blob "))
    container = BlobServiceClient.from_connection_string(
        env[settings.CONNECTION_STRING_VAR]
    ).get_container_client("claim-check-payloads")
    left = len(list(container.list_blobs()))
    ok = producer_ok and len(set(sent)) == count and sorted(done) == sorted(sent)
    ok = ok and via_blob == count // 2 and left == 0 and exits == [0]
    detail = f"{count - via_blob} inline, {via_blob} via a blob, {left} blob(s) left"
    return Row("claim check", len(sent), len(done), seconds, ok, detail)


def functions_interop(env: dict[str, str]) -> Row:
    """The producer and a consumer in base64 mode (the text an Azure Functions queue trigger
    reads): 5 tasks done; one task sent by the producer without the setting (plain text) goes
    to tasks-queue-poison as it came, with the reason, and the consumer carries on."""
    count = 5
    base64_env = {**env, settings.MESSAGE_ENCODING_VAR: "base64"}
    with stage(base64_env) as s:
        consumer = s.start(
            "patterns.competing_consumers.consumer", "--work-seconds", "0.2", label="consumer"
        )
        consumer.wait_for(r"waiting for tasks")
        started = time.perf_counter()
        producer = s.start(
            "patterns.competing_consumers.producer", "--count", str(count), label="producer"
        )
        producer_ok = producer.wait(60) == 0
        plain = Proc(  # the same producer, without the setting: plain text
            "patterns.competing_consumers.producer", "--count", "1",
            env=env, label="producer-plain", echo=echo,
        )  # fmt: skip
        s.procs.append(plain)
        plain_ok = plain.wait(60) == 0
        consumer.wait_for(r"\] done task-", count=count, timeout=60)
        consumer.wait_for(r"to 'tasks-queue-poison': the text is plain, not Base64", timeout=30)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:1]
    sent = [m.group(1) for m in producer.matches(r"sent (task-\S+)$")]
    [stray] = [m.group(1) for m in plain.matches(r"sent (task-\S+)$")][:1] or [""]
    done = [m.group(1) for m in consumer.matches(r"\] done (task-\S+)")]
    poisoned = _service(env).get_queue_client("tasks-queue-poison").peek_messages(32)
    records = [json.loads(base64.b64decode(m.content)) for m in poisoned]  # Base64 records too
    kept = [r for r in records if stray and stray in r["body"] and "plain" in r["reason"]]
    ok = (
        producer_ok
        and plain_ok
        and len(sent) == count
        and sorted(done) == sorted(sent)
        and len(kept) == 1
        and exits == [0]
    )
    detail = f"{len(done)} Base64 tasks done; the plain one in tasks-queue-poison, with why"
    return Row("functions interop", count + 1, len(done) + len(kept), seconds, ok, detail)


def _table_rows(env: dict[str, str], table: str) -> list[dict]:
    from azure.data.tables import TableServiceClient  # only these rows need tables

    service = TableServiceClient.from_connection_string(env[settings.CONNECTION_STRING_VAR])
    return list(service.get_table_client(table).list_entities())


def exactly_once(env: dict[str, str]) -> Row:
    """The double charge, then none: a --naive consumer charges payments sent twice twice; then
    40 payments (8 sent twice) to two competing consumers, one killed by kill -9 mid-work and
    replaced: every balance is the sum of its account's unique payments."""
    payments, twice = 40, 8
    consumer = "patterns.exactly_once.consumer"
    with stage(env) as s:
        started = time.perf_counter()
        naive_args = ("--queue", "payments-naive", "--table", "paymentsnaive")
        naive = s.start(consumer, "--naive", *naive_args, label="naive")
        naive.wait_for("applying payments")
        naive_sent = s.start("patterns.exactly_once.producer", "--queue", "payments-naive",
                             "--count", "6", "--accounts", "2", "--duplicates", "3",
                             label="producer-naive")  # fmt: skip
        naive.wait_for(r"\] applied ", count=9, timeout=60)
        args = ("--work-seconds", "0.2", "--visibility-timeout", "2", "--idle-max", "0.2")
        first, second = (s.start(consumer, *args, label=f"consumer-{n}") for n in (1, 2))
        for each in (first, second):
            each.wait_for("applying payments")
        producer = s.start("patterns.exactly_once.producer", "--count", str(payments),
                           "--duplicates", str(twice), label="producer")  # fmt: skip
        producer_ok = producer.wait(60) == 0 and naive_sent.wait(60) == 0
        first.wait_for(r"\] took ", timeout=30)
        first.kill()  # kill -9, mid-work: its payment comes back to the others
        replacement = s.start(consumer, *args, label="replacement")
        everyone = [first, second, replacement]

        def settled() -> int:
            return sum(len(c.matches(r"\] (already )?applied ")) for c in everyone)

        deadline = time.monotonic() + 60
        while settled() < payments + twice and time.monotonic() < deadline:
            time.sleep(0.2)
        seconds = time.perf_counter() - started
        s.stop_all()
    # The outcome is read from the table, not the logs: the killed consumer may have applied
    # its payment (one transaction) a moment before kill -9, without the time to say so.
    rows = _table_rows(env, "payments")
    balances = {r["PartitionKey"]: r["balance"].value for r in rows if r["RowKey"] == "balance"}
    records = [r for r in rows if str(r["RowKey"]).startswith("payment-")]
    exact = balances == _owed(producer)
    naive_rows = _table_rows(env, "paymentsnaive")
    over = sum(r["balance"].value for r in naive_rows if r["RowKey"] == "balance")
    over -= sum(_owed(naive_sent).values())
    exits = [proc.popen.returncode for proc in (naive, second, replacement)]
    ok = producer_ok and exact and len(records) == payments and over > 0 and exits == [0, 0, 0]
    detail = (
        f"--naive: 3 of 6 payments sent twice, charged twice (+{over}); then {payments} "
        f"payments, {twice} sent twice, 1 consumer killed: {len(records)} applied, balances "
        f"{'exact' if exact else 'WRONG'}"
    )
    return Row("exactly-once effects", payments + twice, settled(), seconds, ok, detail)


def _owed(producer: Proc) -> dict[str, int]:
    """The balances a payments producer said the accounts must end at."""
    [line] = [m[1] for m in producer.matches(r"balances must end at: (.*)$")][:1] or [""]
    return {a: int(n) for a, n in (part.split() for part in line.split(", ") if part)}


def ordered(env: dict[str, str]) -> Row:
    """30 events of 10 orders, shuffled, order 2's second event dropped, 3 competing consumers:
    every other order's events applied in sequence, each once; order 2's third event poisoned
    after --gap-timeout."""
    with stage(env) as s:
        args = ("--gap-timeout", "3", "--idle-max", "0.2", "--batch-size", "4")
        consumers = [s.start("patterns.ordered.consumer", *args, label=f"consumer-{n}")
                     for n in (1, 2, 3)]  # fmt: skip
        for consumer in consumers:
            consumer.wait_for("applying events")
        started = time.perf_counter()
        producer = s.start("patterns.ordered.producer", "--shuffle", "--drop", "order-2:2",
                           label="producer")  # fmt: skip
        producer_ok = producer.wait(60) == 0

        def applied() -> list[str]:
            return [m[1] for c in consumers for m in c.matches(r"\] applied (\S+ #\d+) ")]

        deadline = time.monotonic() + 60
        while len(applied()) < 28 and time.monotonic() < deadline:
            time.sleep(0.2)
        poisoned = any(c.matches("moved message .* #3 waited") for c in consumers)
        while not poisoned and time.monotonic() < deadline:
            time.sleep(0.2)
            poisoned = any(c.matches("moved message .* #3 waited") for c in consumers)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:3]  # the consumers'
    written: dict[str, list[tuple[object, int]]] = {}
    for row in _table_rows(env, "ordered"):
        if row["RowKey"] != "next":
            written.setdefault(row["PartitionKey"], []).append(
                (row.metadata["timestamp"], row["seq"])
            )
    in_order = sorted(seqs for seqs in ([q for _, q in sorted(w)] for w in written.values()))
    early = sum(len(c.matches(r"\] early ")) for c in consumers)
    ok = producer_ok and poisoned and in_order == sorted([[1]] + [[1, 2, 3]] * 9)
    ok = ok and len(applied()) == len(set(applied())) == 28 and exits == [0, 0, 0]
    detail = (
        f"30 events of 10 orders, shuffled, 1 lost upstream, 3 consumers: 28 applied in order, "
        f"each once ({early} put back early); the lost one's successor poisoned after 3 s"
    )
    return Row("per-key order", 29, len(applied()) + poisoned, seconds, ok, detail)


# Later patterns add their scenario here, in the walkthrough's order.
SCENARIOS: dict[str, Callable[[dict[str, str]], Row]] = {
    "competing-consumers": competing_consumers,
    "concurrency": concurrency,
    "fan-out": fanout,
    "priority": priority,
    "pipes-and-filters": pipes_and_filters,
    "request-reply": request_reply,
    "load-leveling": load_leveling,
    "time": time_lesson,
    "claim-check": claim_check,
    "exactly-once": exactly_once,
    "ordered": ordered,
    "functions-interop": functions_interop,
}


def print_summary(rows: list[Row]) -> None:
    echo("")
    echo(f"{'pattern':<22} {'sent':>5} {'processed':>9} {'seconds':>8}  result")
    for row in rows:
        result = "ok" if row.ok else "FAILED"
        echo(
            f"{row.pattern:<22} {row.sent:>5} {row.processed:>9} {row.seconds:>8.1f}  {result}"
            + (f"  ({row.detail})" if row.detail else "")
        )


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run just these patterns"
    )
    args = parser.parse_args()
    chosen = [name for name in SCENARIOS if not args.only or name in args.only]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Azurite(log_path=Path(tmp) / "azurite.log") as az:
        echo(f"[demo] Azurite (in memory) on 127.0.0.1:{az.port}")
        env = {
            **os.environ,
            settings.CONNECTION_STRING_VAR: az.connection_string,
            settings.MESSAGE_ENCODING_VAR: "text",  # each row its own; functions-interop: base64
        }
        for name in chosen:
            echo(f"[demo] --- {name} ---")
            try:
                rows.append(SCENARIOS[name](env))
            except (TimeoutError, Fatal) as error:
                first = re.split(r"\n", str(error))[0]
                echo(f"[demo] {name} failed: {first}")
                rows.append(Row(name.replace("-", " "), 0, 0, 0.0, False, first))
    print_summary(rows)
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    cli.run(main)
