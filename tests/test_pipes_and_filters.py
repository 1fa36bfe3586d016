"""Pipes and filters, end to end: real Azurite, every filter a subprocess, unique queue names."""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import NamedTuple

from conftest import message_count, peek_bodies, run_script

PRODUCER = "patterns.pipes_and_filters.producer"
VALIDATE = "patterns.pipes_and_filters.validate"
ENRICH = "patterns.pipes_and_filters.enrich"
FINALIZE = "patterns.pipes_and_filters.finalize"


class Pipes(NamedTuple):
    validate: str
    enrich: str
    finalize: str
    rejected: str


def pipes(qname: str) -> Pipes:
    return Pipes(f"{qname}-v", f"{qname}-e", f"{qname}-f", f"{qname}-r")


def start_validate(start, q: Pipes, *extra: str):
    args = ("--input", q.validate, "--output", q.enrich, "--rejected", q.rejected, *extra)
    return start(VALIDATE, *args)


def start_enrich(start, q: Pipes, *extra: str):
    return start(ENRICH, "--input", q.enrich, "--output", q.finalize, *extra)


def produce(env, q: Pipes, *args: str) -> list[str]:
    """Run the producer to completion; the order ids it sent."""
    result = run_script(PRODUCER, "--output", q.validate, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [
        line.split("] sent ")[1].split()[0]
        for line in result.stdout.splitlines()
        if "(amount" in line
    ]


def wait_until(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def finished(proc) -> list[dict]:
    return [
        json.loads(m.group(1)) for m in proc.matches(r"finished ORD-\S+ after \S+ s: (\{.*\})$")
    ]


def test_twenty_orders_arrive_enriched_each_once_in_any_start_order(start, env, service, qname):
    q = pipes(qname)
    sent = produce(env, q, "--count", "20")  # before any filter exists: nothing is lost
    assert len(set(sent)) == 20
    final = start(FINALIZE, "--input", q.finalize)  # then the pipeline, back to front
    enrich = start_enrich(start, q)
    validate = start_validate(start, q)
    final.wait_for(r"finished ORD-", count=20, timeout=30)
    exits = [p.stop() for p in (validate, enrich, final)]

    orders = finished(final)
    counts = Counter(o["order_id"] for o in orders)
    assert sorted(counts) == sorted(sent)
    assert max(counts.values()) == 1
    assert not final.matches("duplicate")
    for order in orders:
        assert order["amount"] == 25000 and order["items"] == ["item-A", "item-B"]
        processed = datetime.fromisoformat(order["processed_at"])
        assert processed.utcoffset() == timedelta(0), "processed_at must be aware UTC"
        assert processed >= datetime.fromisoformat(order["sent_at"])
    assert exits == [0, 0, 0]
    assert [message_count(service, name) for name in q] == [0, 0, 0, 0]
    assert "Traceback" not in validate.text + enrich.text + final.text


def test_invalid_orders_go_to_rejected_with_their_reasons(start, env, service, qname):
    q = pipes(qname)
    validate = start_validate(start, q)
    validate.wait_for("validating orders")
    sent = produce(env, q, "--count", "1", "--invalid")
    service.get_queue_client(q.validate).send_message(json.dumps({"amount": -5, "items": []}))
    validate.wait_for("rejected ", count=2)
    validate.wait_for("passed ")
    assert validate.stop() == 0

    rejected = {
        json.dumps(r["order"].get("order_id")): r
        for r in map(json.loads, peek_bodies(service, q.rejected))
    }
    bad = rejected[json.dumps(sent[1])]
    assert sent[1].endswith("-bad")
    assert bad["reasons"] == ["amount must be a positive number, got 0"]
    assert bad["source_queue"] == q.validate
    assert bad["order"]["amount"] == 0
    assert rejected["null"]["reasons"] == [
        "order_id is missing",
        "amount must be a positive number, got -5",
        "items must be a non-empty list",
    ]
    passed = [json.loads(b)["order_id"] for b in peek_bodies(service, q.enrich)]
    assert passed == [sent[0]]
    assert message_count(service, q.validate) == 0


def test_non_json_goes_to_the_poison_queue(start, env, service, qname):
    q = pipes(qname)
    validate = start_validate(start, q)
    validate.wait_for("validating orders")
    service.get_queue_client(q.validate).send_message("this is not an order")
    sent = produce(env, q)
    validate.wait_for(r"moved message .* to '.*-poison'")
    validate.wait_for("passed ")
    assert validate.stop() == 0

    [poisoned] = [json.loads(b) for b in peek_bodies(service, f"{q.validate}-poison")]
    assert poisoned["body"] == "this is not an order"
    assert poisoned["reason"].startswith("not JSON")
    assert [json.loads(b)["order_id"] for b in peek_bodies(service, q.enrich)] == sent
    assert message_count(service, q.rejected) == 0
    assert message_count(service, q.validate) == 0


def test_two_validate_instances_share_the_load(start, env, service, qname):
    q = pipes(qname)
    validators = [start_validate(start, q, "--work-seconds", "0.1") for _ in range(2)]
    for validator in validators:
        validator.wait_for("validating orders")
    sent = produce(env, q, "--count", "20")
    wait_until(lambda: sum(len(v.matches("passed ORD-")) for v in validators) >= 20)
    exits = [v.stop() for v in validators]

    passed = Counter(m.group(1) for v in validators for m in v.matches(r"passed (ORD-\S+) to"))
    assert sorted(passed) == sorted(sent) and max(passed.values()) == 1
    assert all(v.matches("passed ORD-") for v in validators), "one instance did all the work"
    assert message_count(service, q.enrich) == 20
    assert exits == [0, 0]


def test_killing_enrich_mid_run_loses_no_order(start, env, service, qname):
    q = pipes(qname)
    final = start(FINALIZE, "--input", q.finalize)
    validate = start_validate(start, q)
    doomed = start_enrich(start, q, "--work-seconds", "0.3", "--visibility-timeout", "2")
    for proc in (final, validate, doomed):
        proc.wait_for(r"orders (from|on) ")
    sent = produce(env, q, "--count", "20")
    doomed.wait_for("enriched ", count=3, timeout=20)
    doomed.send_signal(signal.SIGKILL)  # no goodbye: its order in hand is still leased
    assert doomed.wait(5) == -signal.SIGKILL
    assert len(doomed.matches("enriched ORD-")) < 20

    start_enrich(start, q, "--visibility-timeout", "2")
    final.wait_for(r"finished ORD-", count=20, timeout=30)
    assert sorted(o["order_id"] for o in finished(final)) == sorted(sent)
    assert all("processed_at" in o for o in finished(final))
