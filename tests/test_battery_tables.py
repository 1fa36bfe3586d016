"""The fault battery for the two lessons on Table Storage: payments and ordered events under
kill -9 of a consumer mid-work, an emulator restart (queue, blob and table services stopped
and started again, data on disk) and duplicate sends, with competing consumers. What must hold
is in the table: every account's balance is the sum of its unique payments; every order's
events were applied in sequence, each once. The figures (requests per applied message, what
the faults did) are printed under "battery figures"."""

from __future__ import annotations

import re
import signal
import uuid
from collections import Counter
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueServiceClient
from support import env_for, message_count, queue_exists, requests_logged, run_script, wait_until
from test_battery import assert_rode_out_the_outage, outage

from patterns.emulator import Azurite
from patterns.runner import Proc, stop_all

pytestmark = pytest.mark.battery

PAYMENTS = "patterns.exactly_once.producer"
APPLY = "patterns.exactly_once.consumer"
EVENTS = "patterns.ordered.producer"
CONVOY = "patterns.ordered.consumer"
FLAGS = ("--work-seconds", "0.1", "--visibility-timeout", "3", "--batch-size", "4",
         "--idle-max", "0.2", "--retry-backoff", "1")  # fmt: skip


def lines_in(path: Path | None) -> int:
    return len(path.read_text(errors="replace").splitlines()) if path and path.exists() else 0


def kill_one_and_replace(procs: list[Proc], start, module: str, args: tuple[str, ...], env) -> Proc:
    """kill -9 the first consumer (it holds up to a batch of messages, some mid-work) and
    start another in its place (procs[0]); the one killed."""
    victim = procs[0]
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(5) == -signal.SIGKILL
    procs[0] = start(module, *args, env_=env, label="replacement")
    procs[0].wait_for(r"\] applying ")  # started: a script that starts in an outage stops
    return victim


def test_both_lessons_under_kill_9_a_restart_and_duplicates_apply_everything_once(
    disk_azurite: Azurite, start, figures
):
    """Both lessons at once, so that one restart serves both: 60 payments (12 sent twice) to 5
    accounts, and 60 events of 15 orders, shuffled; 3 consumers each; one of each killed by
    kill -9 mid-work (and replaced), then every service stopped and started again."""
    env = env_for(disk_azurite)
    queues = QueueServiceClient.from_connection_string(disk_azurite.connection_string)
    tables = TableServiceClient.from_connection_string(disk_azurite.connection_string)
    run = uuid.uuid4().hex[:8]
    pay_queue, pay_table, ord_queue, ord_table = (
        f"pay-{run}",
        f"pay{run}",
        f"ord-{run}",
        f"ord{run}",
    )
    result = run_script(PAYMENTS, "--queue", pay_queue, "--count", "60", "--accounts", "5",
                        "--duplicates", "12", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [owed_line] = re.findall(r"balances must end at: (.*)$", result.stdout, re.M)
    owed = {a: int(n) for a, n in (part.split() for part in owed_line.split(", "))}
    payments = set(re.findall(r"\] sent (pay-\S+):", result.stdout))
    result = run_script(EVENTS, "--queue", ord_queue, "--keys", "15", "--events", "4",
                        "--shuffle", env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert len(payments) == 60 and result.stdout.count("] sent order-") == 60

    pay_args = ("--queue", pay_queue, "--table", pay_table, *FLAGS)
    ord_args = ("--queue", ord_queue, "--table", ord_table, "--gap-timeout", "120", *FLAGS)
    appliers = [start(APPLY, *pay_args, env_=env, label=f"apply-{n}") for n in (1, 2, 3)]
    convoy = [start(CONVOY, *ord_args, env_=env, label=f"convoy-{n}") for n in (1, 2, 3)]
    everyone = [*appliers, *convoy]  # the ones killed too: what they applied counts

    def applied(pattern: str) -> Counter[str]:
        return Counter(m[1] for c in everyone for m in c.matches(rf"\] applied ({pattern}) "))

    paid, ordered = (lambda: applied(r"pay-\S+")), (lambda: applied(r"order-\S+ #\d+"))
    wait_until(lambda: paid().total() >= 12 and ordered().total() >= 15, 60, "work under way")
    for procs, module, args in ((appliers, APPLY, pay_args), (convoy, CONVOY, ord_args)):
        kill_one_and_replace(procs, start, module, args, env)
        everyone.append(procs[0])  # the replacement
    wait_until(lambda: paid().total() >= 30 and ordered().total() >= 30, 60, "half done")
    down = outage(disk_azurite)

    def rows(table: str) -> list[dict]:
        return list(tables.get_table_client(table).list_entities())

    def recorded(table: str, kind: str) -> int:
        return sum(r["RowKey"].startswith(kind) for r in rows(table))

    wait_until(
        lambda: recorded(pay_table, "payment-") == 60 and recorded(ord_table, "event-") == 60
        and message_count(queues, pay_queue) == 0 and message_count(queues, ord_queue) == 0,
        120, "everything applied and every message deleted",
    )  # fmt: skip
    for consumer in [*appliers[1:], *convoy[1:]]:
        assert_rode_out_the_outage(consumer)
    assert stop_all([*appliers, *convoy]) == [0] * 6

    # Payments: every balance the sum of its account's unique payments; each applied once.
    balances = {r["PartitionKey"]: r["balance"].value for r in rows(pay_table)
                if r["RowKey"] == "balance"}  # fmt: skip
    assert balances == owed  # 0 lost, 0 applied twice
    assert {r["RowKey"].removeprefix("payment-") for r in rows(pay_table)} - {"balance"} == payments
    assert max(paid().values()) == 1, "a payment applied twice"
    # Ordered: every order's events in sequence (by when their records were written), once each.
    by_key: dict[str, list[tuple[object, int]]] = {}
    for row in rows(ord_table):
        if row["RowKey"] != "next":
            by_key.setdefault(row["PartitionKey"], []).append(
                (row.metadata["timestamp"], row["seq"])
            )
    in_order = {key[:-9]: [seq for _, seq in sorted(found)] for key, found in by_key.items()}
    assert in_order == {f"order-{k}": [1, 2, 3, 4] for k in range(1, 16)}  # 0 out of order
    assert max(ordered().values()) == 1, "an event applied twice"
    for queue in (pay_queue, ord_queue):
        assert not queue_exists(queues, f"{queue}-poison")  # nothing poisoned

    repeats = sum(len(c.matches(r"\] already applied ")) for c in everyone)
    early = sum(len(c.matches(r"\] early ")) for c in everyone)
    table_requests = lines_in(disk_azurite.table_log_path)  # both tables: split by share below
    pay_requests = len(requests_logged(disk_azurite, pay_queue))
    ord_requests = len(requests_logged(disk_azurite, ord_queue))
    figures(
        f"60 payments (12 sent twice) to 5 accounts and 60 events of 15 orders (shuffled), 3 "
        f"consumers each, 1 of each killed by kill -9, all services down {down:.1f} s: "
        f"balances exact, every order in sequence; lost 0, applied twice 0, out of order 0; "
        f"{repeats} payment repeat(s) only deleted, {early} event(s) put back early; queue "
        f"requests per message {pay_requests / 60:.1f} (payments), {ord_requests / 60:.1f} "
        f"(events), table requests {table_requests / 120:.1f} per message (both)"
    )
