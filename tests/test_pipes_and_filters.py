"""Pipes and filters, end to end: real Azurite, every filter a subprocess, unique queue names."""

from __future__ import annotations

import json
import signal
from collections import Counter
from datetime import datetime, timedelta
from typing import NamedTuple

from azure.storage.queue import QueueServiceClient
from support import (
    env_for,
    log_seconds,
    message_count,
    peek_bodies,
    queue_exists,
    run_script,
    send,
    wait_until,
)

PRODUCER = "patterns.pipes_and_filters.producer"
VALIDATE = "patterns.pipes_and_filters.validate"
ENRICH = "patterns.pipes_and_filters.enrich"
FINALIZE = "patterns.pipes_and_filters.finalize"
BARE = "patterns.pipes_and_filters.filter_bare"


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


def test_ids_must_be_non_empty_strings_and_are_never_duplicates_of_each_other(
    start, service, qname
):
    """At the end of the pipe, a missing or null order_id is not an id (no
    'duplicate None ignored'), and 7 is not "7"; validate turns such orders away."""
    q = pipes(qname)
    service.create_queue(q.finalize)
    for body in ({"amount": 1}, {"amount": 2}, {"order_id": None}, {"order_id": None}):
        send(service, q.finalize, json.dumps(body))
    send(service, q.finalize, json.dumps({"order_id": 7}))
    send(service, q.finalize, json.dumps({"order_id": "7"}))
    final = start(FINALIZE, "--input", q.finalize)
    final.wait_for("finished 7 after")
    final.wait_for(r"moved message .* to '.*-poison'", count=5)
    assert not final.matches("duplicate")
    reasons = sorted(json.loads(b)["reason"] for b in peek_bodies(service, f"{q.finalize}-poison"))
    assert reasons == [
        *["order_id is missing"] * 4,
        "order_id must be a non-empty string of printable characters, got 7",
    ]
    assert final.stop() == 0
    assert "finished 1 order(s)" in final.text

    validate = start_validate(start, q)
    validate.wait_for("validating orders")
    send(service, q.validate, json.dumps({"order_id": 7, "amount": 1, "items": ["a"]}))
    validate.wait_for("rejected 7: order_id must be a non-empty string")
    assert message_count(service, q.enrich) == 0


def test_poison_and_rejected_records_never_expire(start, env, service, qname):
    """A record nobody looked at for a week must still be there."""
    q = pipes(qname)
    validate = start_validate(start, q)
    validate.wait_for("validating orders")
    send(service, q.validate, "not an order")
    produce(env, q, "--count", "1", "--invalid")
    validate.wait_for("rejected ORD-")
    validate.wait_for(r"moved message .* to '.*-poison'")
    for name in (q.rejected, f"{q.validate}-poison"):
        [record] = service.get_queue_client(name).peek_messages()
        assert record.expires_on.year == 9999, f"{name}: expires {record.expires_on}"
    assert validate.stop() == 0


def test_a_forward_over_64_kib_is_poisoned_at_once(start, service, blobs, qname):
    """An order that fits but would not fit once enriched cannot be forwarded,
    however often it is retried: poisoned on its first delivery, with the reason."""
    q = pipes(qname)
    enrich = start_enrich(start, q, "--visibility-timeout", "1", "--max-attempts", "5")
    enrich.wait_for("enriching orders")
    order = {"order_id": "ORD-big", "amount": 1, "items": ["a"], "note": ""}
    room = 64 * 1024 - 100 - len(json.dumps(order, separators=(",", ":")))
    order["note"] = "x" * (room - 10)  # sent compactly it fits; re-encoded + processed_at not
    send(service, q.enrich, json.dumps(order, separators=(",", ":")))
    send(service, q.enrich, json.dumps({"order_id": "ORD-small", "amount": 1, "items": ["a"]}))
    enrich.wait_for(r"moved message \S+ \(order_id ORD-big\) to '.*-poison': message is \d+ bytes")
    enrich.wait_for("enriched ORD-small")
    # The poison record would not fit either: it keeps its reason, its body goes to a blob.
    [record] = map(json.loads, peek_bodies(service, f"{q.enrich}-poison"))
    assert record["reason"].startswith("message is ") and "body" not in record
    where = record["body_blob"]
    kept = blobs.get_blob_client(where["container"], where["blob"]).download_blob().readall()
    assert json.loads(kept) == order
    assert not enrich.matches("attempt 1 of 5 failed"), "poisoned on its first delivery"
    assert [json.loads(b)["order_id"] for b in peek_bodies(service, q.finalize)] == ["ORD-small"]
    assert enrich.stop() == 0


def test_an_amount_must_be_finite(start, service, qname):
    """1e999 reads as infinity and NaN is no number: both rejected."""
    q = pipes(qname)
    validate = start_validate(start, q)
    validate.wait_for("validating orders")
    send(service, q.validate, '{"order_id": "ORD-inf", "amount": 1e999, "items": ["a"]}')
    send(service, q.validate, '{"order_id": "ORD-nan", "amount": NaN, "items": ["a"]}')
    send(service, q.validate, '{"order_id": "ORD-ok", "amount": 1e3, "items": ["a"]}')
    validate.wait_for("rejected ", count=2)
    validate.wait_for("passed ORD-ok")
    reasons = {
        r["order"]["order_id"]: r["reasons"]
        for r in map(json.loads, peek_bodies(service, q.rejected))
    }
    assert reasons == {
        "ORD-inf": ["amount must be a finite number, got inf"],
        "ORD-nan": ["amount must be a positive number, got nan"],
    }
    assert [json.loads(b)["order_id"] for b in peek_bodies(service, q.enrich)] == ["ORD-ok"]
    assert validate.stop() == 0


def test_every_filter_logs_what_it_takes_and_what_it_forwards(start, env, qname):
    """'took' when a filter starts on an order (so a kill -9 can be timed
    while it holds one), then what it forwarded."""
    q = pipes(qname)
    validate = start_validate(start, q, "--work-seconds", "0.3")
    enrich = start_enrich(start, q, "--work-seconds", "0.3")
    for proc in (validate, enrich):
        proc.wait_for(r"orders from ")
    [order] = produce(env, q)
    enrich.wait_for(f"enriched {order}, passed it to '{q.finalize}'")
    for proc, forwarded in (
        (validate, f"passed {order} to '{q.enrich}'"),
        (enrich, f"enriched {order}, passed it to '{q.finalize}'"),
    ):
        lines = [line for line in proc.lines if order in line]
        assert [line.split("] ", 1)[1] for line in lines] == [
            f"took {order} (attempt 1)",
            forwarded,
        ]
        took, done = (log_seconds(line) for line in lines)
        assert done - took >= 0.25, "took is logged before the work, not after"


def test_the_pipeline_rides_out_an_emulator_restart_with_max_attempts_1(disk_azurite, start, qname):
    """The emulator stops mid-pipeline (a filter mid-forward) and starts again on the same
    port with its data: every order finishes, no filter exits, and nothing is poisoned - an
    outage is not a failed attempt, even with --max-attempts 1."""
    emulator, env = disk_azurite, env_for(disk_azurite)
    q = pipes(qname)
    tight = ("--max-attempts", "1", "--visibility-timeout", "3")
    procs = []
    for module, args in (
        (FINALIZE, ("--input", q.finalize)),
        (ENRICH, ("--input", q.enrich, "--output", q.finalize, "--work-seconds", "0.4")),
        (VALIDATE, ("--input", q.validate, "--output", q.enrich,
                    "--rejected", q.rejected, "--work-seconds", "0.1")),
    ):  # fmt: skip
        procs.append(start(module, *args, *tight, env_=env))
        procs[-1].wait_for(r"orders (from|on) ")
    final, enrich, _ = procs
    sent = produce(env, q, "--count", "12")
    final.wait_for("finished ORD-", count=2, timeout=30)
    enrich.wait_for("took ORD-", count=len(enrich.matches("enriched ORD-")) + 1)
    emulator.stop()  # enrich is at work on an order: its forward will fail
    for proc in procs:
        proc.wait_for("retrying with backoff", timeout=20)
    emulator.start()  # same port, same data folder
    wait_until(lambda: {o["order_id"] for o in finished(final)} == set(sent), 60)
    assert [proc.popen.poll() for proc in procs] == [None, None, None], "nobody exits"
    for proc in procs:
        proc.wait_for("the queue service answers again")
    client = QueueServiceClient.from_connection_string(emulator.connection_string)
    names = [n.name for n in client.list_queues(name_starts_with=qname)]
    assert not [n for n in names if n.endswith("-poison")], "an outage poisoned orders"
    assert sorted(names) == sorted(q) and message_count(client, q.rejected) == 0
    codes = [proc.stop() for proc in procs]
    assert codes == [0, 0, 0], [p.text[-3000:] for p, c in zip(procs, codes, strict=True) if c]
    assert all("Traceback" not in proc.text for proc in procs)


# --- the bare filter: the SDK alone -----------------------------------------------------------


def test_the_bare_filter_forwards_each_order_then_deletes_it(start, env, service, qname):
    q = pipes(qname)
    ids = produce(env, q, "--count", "3")
    bare = start(BARE, "--input", q.validate, "--output", q.enrich)
    bare.wait_for(r"\] enriched ORD-", count=3)
    assert bare.stop() == 0
    assert "Traceback" not in bare.text
    passed = [json.loads(body) for body in peek_bodies(service, q.enrich)]
    assert sorted(order["order_id"] for order in passed) == sorted(ids)
    assert all(datetime.fromisoformat(order["processed_at"]) for order in passed)
    assert message_count(service, q.validate) == 0  # each deleted once it was passed on


def test_the_bare_filter_keeps_an_order_it_could_not_forward(start, env, service, qname):
    """The forward fails (the output pipe is gone): the order is not deleted from the input."""
    q = pipes(qname)
    bare = start(BARE, "--input", q.validate, "--output", q.enrich)
    bare.wait_for("passing orders from")
    service.delete_queue(q.enrich)
    send(service, q.validate, {"order_id": "kept", "amount": 1, "items": ["a"]})
    bare.wait_for(r"could not pass on message \S+: .*QueueNotFound")
    assert bare.stop() == 0
    assert message_count(service, q.validate) == 1  # still there, hidden: it comes back
    assert not queue_exists(service, q.enrich)  # nothing was forwarded anywhere
