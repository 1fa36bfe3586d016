"""Exactly-once effects (patterns/exactly_once/): payments applied to balances in a table, each
once, whatever the queue delivers twice - duplicates sent, a consumer killed after its
transaction and before its delete, competing consumers - and the --naive consumer that charges
a duplicate twice. Against the session's Azurite (queue and table services)."""

from __future__ import annotations

import re
import signal
from collections import Counter

from azure.data.tables import TableServiceClient
from support import (
    assert_refused,
    env_for,
    message_count,
    poison_reasons,
    run_script,
    send,
    wait_until,
)

from patterns.helper.support.settings import CONNECTION_STRING_VAR

PRODUCER = "patterns.exactly_once.producer"
CONSUMER = "patterns.exactly_once.consumer"
QUICK = ("--idle-max", "0.2", "--visibility-timeout", "5")


def produce(env: dict[str, str], queue: str, *args: str) -> tuple[list[dict], dict[str, int]]:
    """Run the producer: the payments it sent (a copy sent again appears twice) and the
    balances it says the accounts must end with."""
    result = run_script(PRODUCER, "--queue", queue, *args, env=env)
    assert result.returncode == 0, result.stderr
    sent = [
        {"payment_id": m[2], "account": m[3], "amount": int(m[4]), "again": m[1] == "sent again"}
        for m in re.finditer(r"\] (sent|sent again) (\S+): (\S+) \+(\d+)$", result.stdout, re.M)
    ]
    [line] = re.findall(r"balances must end at: (.*)$", result.stdout, re.M)
    owed = {name: int(n) for name, n in (part.split() for part in line.split(", "))}
    return sent, owed


def rows(table_service: TableServiceClient, table: str) -> tuple[dict[str, int], Counter[str]]:
    """(balance per account, how often each payment's record is there) in the table."""
    balances: dict[str, int] = {}
    records: Counter[str] = Counter()
    for row in table_service.get_table_client(table).list_entities():
        if row["RowKey"] == "balance":
            balances[row["PartitionKey"]] = row["balance"].value
        else:
            records[row["RowKey"].removeprefix("payment-")] += 1
    return balances, records


def applied_ids(*consumers) -> Counter[str]:
    return Counter(m[1] for c in consumers for m in c.matches(r"\] applied (\S+) to "))


def test_duplicates_and_two_competing_consumers_apply_each_payment_once(
    start, env, service, table_service, qname, tname, figures
):
    sent, owed = produce(env, qname, "--count", "30", "--accounts", "3", "--duplicates", "6")
    assert len(sent) == 36 and sum(p["again"] for p in sent) == 6
    flags = ("--queue", qname, "--table", tname, "--batch-size", "4", *QUICK)
    consumers = [start(CONSUMER, *flags, label=f"consumer-{n}") for n in (1, 2)]
    wait_until(lambda: sum(len(c.matches(r"\] (applied|already applied) ")) for c in consumers)
               >= 36, 60, "36 deliveries settled")  # fmt: skip
    assert [c.stop() for c in consumers] == [0, 0]
    balances, records = rows(table_service, tname)
    assert balances == owed  # each unique payment counted once
    assert set(records) == {p["payment_id"] for p in sent} and set(records.values()) == {1}
    applied = applied_ids(*consumers)
    assert len(applied) == 30 and set(applied.values()) == {1}  # lost 0, applied twice 0
    repeats = sum(len(c.matches(r"\] already applied ")) for c in consumers)
    assert repeats == 6
    assert message_count(service, qname) == 0
    assert "Traceback" not in consumers[0].text + consumers[1].text
    figures("30 payments, 6 sent twice, 2 consumers: 30 applied once, 6 only deleted; lost 0")


def test_the_naive_consumer_charges_a_payment_sent_twice_twice(
    start, env, table_service, qname, tname, figures
):
    sent, owed = produce(env, qname, "--count", "4", "--accounts", "2", "--duplicates", "2")
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, "--naive", *QUICK)
    consumer.wait_for(r"\] applied ", count=6)
    assert consumer.stop() == 0
    balances, records = rows(table_service, tname)
    assert not records  # the naive consumer keeps no record ...
    twice = [p for p in sent if p["again"]]
    over = Counter[str]()
    for payment in twice:
        over[payment["account"]] += payment["amount"]
    # ... so each payment sent twice was charged twice: the balances are over by exactly those
    assert {a: balances[a] - owed[a] for a in owed} == {a: over[a] for a in owed}
    assert sorted(applied_ids(consumer).values()) == [1, 1, 2, 2]
    figures(f"--naive: 2 of 4 payments sent twice, charged twice: +{sum(over.values())} cents")


def test_killed_after_its_transaction_and_before_its_delete_the_payment_is_not_charged_again(
    start, env, azurite, service, table_service, qname, tname, monkeypatch
):
    """The state a kill -9 between the transaction and the delete leaves - the balance and the
    record written, the message still in the queue - made here with the consumer's own apply()
    (a kill cannot be timed into that gap of microseconds). The next delivery only deletes."""
    from patterns.exactly_once.consumer import apply
    from patterns.helper import connect
    from patterns.helper.support import tables

    monkeypatch.setenv(CONNECTION_STRING_VAR, azurite.connection_string)
    monkeypatch.setattr(connect, "_service", None)
    monkeypatch.setattr(tables, "_service", None)
    service.create_queue(qname)
    payment = {"payment_id": "pay-1", "account": "acct-1", "amount": 500}
    send(service, qname, payment)
    assert apply(tables.table(tname), "pay-1", "acct-1", 500, naive=False) == 500
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, *QUICK)
    consumer.wait_for(r"already applied pay-1: only deleting the message")
    wait_until(lambda: message_count(service, qname) == 0, 10, "the message deleted")
    assert consumer.stop() == 0
    assert rows(table_service, tname) == ({"acct-1": 500}, Counter({"pay-1": 1}))


def test_a_consumer_killed_mid_payment_leaves_it_to_another_which_applies_it_once(
    start, env, service, table_service, qname, tname
):
    _, owed = produce(env, qname, "--count", "3", "--accounts", "1")
    flags = ("--queue", qname, "--table", tname, "--idle-max", "0.2")
    first = start(CONSUMER, *flags, "--visibility-timeout", "2", "--work-seconds", "30")
    [took] = first.wait_for(r"\] took (\S+) \(attempt 1\)")
    first.send_signal(signal.SIGKILL)  # mid-work, before its transaction
    assert first.wait(5) == -signal.SIGKILL
    second = start(CONSUMER, *flags, "--visibility-timeout", "5", label="consumer-2")
    second.wait_for(rf"\] took {took[1]} \(attempt 2\)", timeout=20)  # back after 2 s
    wait_until(lambda: len(applied_ids(second)) == 3, 20, "3 payments applied")
    assert second.stop() == 0
    assert rows(table_service, tname)[0] == owed
    assert set(applied_ids(second).values()) == {1}


def test_bad_payments_go_to_poison_with_the_reason_and_touch_no_row(
    start, service, table_service, qname, tname
):
    service.create_queue(qname)
    bad = {
        "slash": {"payment_id": "p1", "account": "acct/../other", "amount": 100},
        "hash": {"payment_id": "p#2", "account": "acct-1", "amount": 100},
        "float": {"payment_id": "p3", "account": "acct-1", "amount": 1.5},
        "text": {"payment_id": "p4", "account": "acct-1", "amount": "100"},
        "missing": {"account": "acct-1", "amount": 100},
    }
    for body in bad.values():
        send(service, qname, body)
    consumer = start(CONSUMER, "--queue", qname, "--table", tname, *QUICK)
    consumer.wait_for(rf"moved message .* to '{qname}-poison'", count=5)
    assert consumer.stop() == 0
    assert poison_reasons(service, qname) == sorted([
        "account holds '/', which a table key may not hold",
        "payment_id holds '#', which a table key may not hold",
        "amount must be a whole number of cents from 1 to 100000000",
        "amount must be a whole number of cents from 1 to 100000000",
        "payment_id is missing",
    ])  # fmt: skip
    assert rows(table_service, tname) == ({}, Counter())
    assert "Traceback" not in consumer.text


def test_a_connection_string_without_a_table_endpoint_is_one_line_exit_2(env, qname):
    queue_only = env[CONNECTION_STRING_VAR].split("TableEndpoint=")[0]
    result = run_script(CONSUMER, "--queue", qname, env={**env, CONNECTION_STRING_VAR: queue_only})
    assert_refused(result, "names a QueueEndpoint but no TableEndpoint")


def test_env_for_points_at_the_table_service_too(azurite):
    assert f"TableEndpoint={azurite.table_endpoint};" in env_for(azurite)[CONNECTION_STRING_VAR]
