"""Per-key order (patterns/ordered/): each order's events applied strictly in sequence by
competing consumers, shuffled as they may be; an early event put back until its turn, a
duplicate dropped, a gap that never fills poisoned after --gap-timeout. Against the session's
Azurite (queue and table services)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from support import (
    log_seconds,
    message_count,
    poison_reasons,
    requests_logged,
    run_script,
    send,
    wait_until,
)

PRODUCER = "patterns.ordered.producer"
CONSUMER = "patterns.ordered.consumer"
QUICK = ("--idle-max", "0.2", "--visibility-timeout", "5", "--retry-backoff", "1")


def plain(key: str) -> str:
    """An order's key without the producer's run id: order-7-1a2b3c4d -> order-7."""
    return re.sub(r"-[0-9a-f]{8}$", "", key)


def produce(env: dict[str, str], queue: str, *args: str) -> list[tuple[str, int]]:
    """Run the producer: (key, seq) of the events it sent, in the order it sent them (keys
    without the run id)."""
    result = run_script(PRODUCER, "--queue", queue, *args, env=env)
    assert result.returncode == 0, result.stderr
    sent = re.finditer(r"\] sent (\S+) #(\d+) ", result.stdout)
    return [(plain(m[1]), int(m[2])) for m in sent]


def applied_in_table(table_service: TableServiceClient, table: str) -> dict[str, list[int]]:
    """Per key, the seqs of its applied events (their records), in the order they were written
    (the service's Timestamp), and checked against the key's "next"."""
    records: dict[str, list[tuple[object, int]]] = {}
    following: dict[str, int] = {}
    for row in table_service.get_table_client(table).list_entities():
        if row["RowKey"] == "next":
            following[row["PartitionKey"]] = row["next"]
        else:
            records.setdefault(row["PartitionKey"], []).append(
                (row.metadata["timestamp"], row["seq"])
            )
    applied = {key: [seq for _, seq in sorted(rows)] for key, rows in records.items()}
    assert {key: seqs[-1] + 1 for key, seqs in applied.items()} == following
    return {plain(key): seqs for key, seqs in applied.items()}


def table_requests(azurite) -> int:
    path = Path(azurite.table_log_path)
    return len(path.read_text(errors="replace").splitlines()) if path.exists() else 0


def test_shuffled_events_under_three_consumers_are_applied_in_order_exactly_once(
    start, env, azurite, service, table_service, qname, tname, figures
):
    table_before = table_requests(azurite)
    sent = produce(env, qname, "--keys", "10", "--events", "4", "--shuffle")
    assert len(sent) == 40 and sent != sorted(sent, key=lambda e: e[1])  # really shuffled
    flags = ("--queue", qname, "--table", tname, "--batch-size", "4", *QUICK)
    consumers = [start(CONSUMER, *flags, label=f"consumer-{n}") for n in (1, 2, 3)]
    applied = lambda: [m for c in consumers for m in c.matches(r"\] applied (\S+) #(\d+) ")]  # noqa: E731
    wait_until(lambda: len(applied()) >= 40, 90, "40 events applied")
    assert [c.stop() for c in consumers] == [0, 0, 0]
    assert applied_in_table(table_service, tname) == {
        f"order-{k}": [1, 2, 3, 4] for k in range(1, 11)
    }
    assert set(Counter((m[1], m[2]) for m in applied()).values()) == {1}  # each once
    assert message_count(service, qname) == 0
    early = sum(len(c.matches(r"\] early ")) for c in consumers)
    queue_requests = len(requests_logged(azurite, qname))
    table = table_requests(azurite) - table_before
    assert "Traceback" not in "".join(c.text for c in consumers)
    figures(
        f"40 events of 10 keys, shuffled, 3 consumers: all in order, each once; {early} put "
        f"back early; {(queue_requests + table) / 40:.1f} requests per applied event "
        f"({queue_requests} queue incl. empty polls, {table} table)"
    )


def test_an_early_event_waits_for_its_turn_without_using_its_attempts(
    start, service, table_service, qname, tname
):
    """With --max-attempts 1, an event sent before its predecessor is put back (not counted as
    a failed attempt) until the predecessor comes, then both are applied, in order."""
    service.create_queue(qname)
    send(service, qname, {"key": "order-7", "seq": 2, "event": "paid"})
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, "--max-attempts", "1",
                     "--gap-timeout", "60", *QUICK)  # fmt: skip
    consumer.wait_for(r"early order-7 #2 \(waiting for #1\): next attempt in 1 s")
    consumer.wait_for(r"early order-7 #2 \(waiting for #1\): next attempt in 2 s")  # 2nd: > 1
    send(service, qname, {"key": "order-7", "seq": 1, "event": "created"})
    consumer.wait_for(r"applied order-7 #2 paid", timeout=20)
    assert consumer.stop() == 0
    assert applied_in_table(table_service, tname) == {"order-7": [1, 2]}
    assert not consumer.matches("moved message")  # put back twice, never poisoned


@pytest.mark.slow
def test_a_gap_that_never_fills_is_poisoned_after_its_bound_naming_the_missing_event(
    start, env, service, table_service, qname, tname, figures
):
    sent = produce(env, qname, "--keys", "2", "--events", "3", "--drop", "order-1:2")
    assert ("order-1", 2) not in sent and len(sent) == 5
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, "--gap-timeout", "3", *QUICK)
    moved_to_poison = rf"moved message \S+ \(id order-1-\S+:3\) to '{qname}-poison': (.*)$"
    [moved] = consumer.wait_for(moved_to_poison, timeout=30)
    assert re.fullmatch(r"order-1-\S+ #3 waited 3 s for #2, which never came \(--gap-timeout 3\)",
                        moved[1])  # fmt: skip
    assert consumer.stop() == 0
    assert applied_in_table(table_service, tname) == {"order-1": [1], "order-2": [1, 2, 3]}
    [record] = service.get_queue_client(f"{qname}-poison").peek_messages()
    assert json.loads(json.loads(record.content)["body"])["seq"] == 3  # the event, kept
    assert message_count(service, qname) == 0
    first = log_seconds(consumer.matches(r"\] early order-1-\S+ #3 ")[0].string)
    waited = log_seconds(consumer.matches(r"\] warning: moved message ")[0].string) - first
    assert waited >= 3  # the bound is a floor: never poisoned before it
    figures(f"a gap (order-1 #2 dropped): #3 put back twice, poisoned {waited:.1f} s after "
            "its first delivery (--gap-timeout 3)")  # fmt: skip


def test_a_duplicate_of_an_applied_event_is_dropped(start, service, table_service, qname, tname):
    service.create_queue(qname)
    for _ in range(2):
        send(service, qname, {"key": "order-1", "seq": 1, "event": "created"})
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, *QUICK)
    consumer.wait_for(r"duplicate order-1 #1 dropped \(already applied\)")
    wait_until(lambda: message_count(service, qname) == 0, 10, "both deleted")
    assert consumer.stop() == 0
    assert applied_in_table(table_service, tname) == {"order-1": [1]}


def test_bad_events_go_to_poison_with_the_reason_and_touch_no_row(
    start, service, table_service, qname, tname
):
    service.create_queue(qname)
    for body in (
        {"key": "order#1", "seq": 1, "event": "created"},
        {"key": "order-1", "seq": "1", "event": "created"},
        {"key": "order-1", "seq": 0, "event": "created"},
        {"key": "order-1", "seq": 1},
    ):
        send(service, qname, body)
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, *QUICK)
    consumer.wait_for(rf"moved message .* to '{qname}-poison'", count=4)
    assert consumer.stop() == 0
    assert poison_reasons(service, qname) == sorted([
        "key holds '#', which a table key may not hold",
        "seq must be a whole number from 1 to 999999",
        "seq must be a whole number from 1 to 999999",
        "event must be a name of 1 to 100 characters",
    ])  # fmt: skip
    assert not list(table_service.get_table_client(tname).list_entities())
