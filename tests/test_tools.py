"""The learner's tools (status, peek, cleanup, redrive) against the session Azurite.

Every test works under its own queue-name prefix and gives the tools that prefix, so nothing
here sees, counts or deletes the queues of tests running beside it."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import AccountSasPermissions, ResourceTypes, generate_account_sas
from support import learner_env, message_count, peek_bodies, run_script

from patterns.helper import connect
from patterns.helper.consume import Inbox
from patterns.helper.support.settings import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    CONNECTION_STRING_VAR,
    azurite_connection_string,
)
from patterns.tools.queues import LESSONS, table_prefix

STATUS = "patterns.tools.status"
PEEK = "patterns.tools.peek"
CLEANUP = "patterns.tools.cleanup"
REDRIVE = "patterns.tools.redrive"
CONSUMER = "patterns.competing_consumers.consumer"
PRODUCER = "patterns.competing_consumers.producer"


@pytest.fixture
def ns() -> str:
    """A prefix no other test uses; tutorial names go after it (`t1a2b3c4d-tasks-queue`)."""
    return f"t{uuid.uuid4().hex[:8]}-"


def make(service, name: str, *bodies: str) -> None:
    queue = service.get_queue_client(name)
    queue.create_queue()
    for body in bodies:
        queue.send_message(body)


def existing(service, prefix: str) -> set[str]:
    return {q.name for q in service.list_queues(name_starts_with=prefix)}


# --- status -----------------------------------------------------------------------------


def test_status_groups_queues_by_pattern_with_counts_and_poison_beside(env, service, ns):
    make(service, f"{ns}tasks-queue", "a", "b", "c")
    make(service, f"{ns}tasks-queue-poison", "x")
    make(service, f"{ns}fanout-queue-a", "1", "2")
    make(service, f"{ns}fanout-queue-b")
    make(service, f"{ns}tasks-normal-priority", "n")
    make(service, f"{ns}tasks-high-priority", "h1", "h2")
    make(service, f"{ns}queue-validate-poison", "bad")  # its source queue does not exist
    make(service, f"{ns}my-own-queue", "m")

    result = run_script(STATUS, "--prefix", ns, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["pattern", "queue", "messages", "visible", "poison"]
    by_queue = {re.sub(r"^" + ns, "", m.group(1)): m for m in _rows(result.stdout, ns)}
    assert list(by_queue) == [  # the tutorial's order; poison queues have no row of their own
        "tasks-queue",
        "fanout-queue-a",
        "fanout-queue-b",
        "tasks-high-priority",
        "tasks-normal-priority",
        "queue-validate",
        "my-own-queue",
    ]
    counts = {name: (m.group(2), m.group(3), m.group(4)) for name, m in by_queue.items()}
    assert counts["tasks-queue"] == ("3", "3", "1")
    assert counts["fanout-queue-a"] == ("2", "2", "-")
    assert counts["fanout-queue-b"] == ("0", "0", "-")
    assert counts["tasks-high-priority"] == ("2", "2", "-")
    assert counts["queue-validate"] == ("-", "-", "1")  # '-': no such queue, only its poison
    assert counts["my-own-queue"] == ("1", "1", "-")
    groups = [line[:20].strip() for line in lines[1:-1]]
    assert groups == [
        "competing consumers",
        "fan-out",
        "",
        "priority",
        "",
        "pipes and filters",
        "other",
    ]
    assert f"7 queue(s) starting with '{ns}'" in lines[-1]


def _rows(stdout: str, ns: str) -> list[re.Match[str]]:
    regex = re.compile(rf"\s({re.escape(ns)}\S+)\s+(\S+)\s+(\S+)\s+(\S+)$")
    return [m for m in map(regex.search, stdout.splitlines()) if m]


def test_status_counts_delayed_messages_that_a_peek_cannot_see(env, service, ns):
    """--delay: the tasks are in the count (`messages`) but not `visible`, and peek shows none."""
    queue = f"{ns}tasks-queue"
    producer = run_script(PRODUCER, "--queue", queue, "--count", "3", "--delay", "600", env=env)
    assert producer.returncode == 0, producer.stderr
    assert "they stay invisible for 600 s, until " in producer.stdout
    result = run_script(STATUS, "--prefix", ns, env=env)
    assert result.returncode == 0, result.stderr
    assert [m.groups()[1:] for m in _rows(result.stdout, ns)] == [("3", "0", "-")]
    peeked = run_script(PEEK, queue, env=env)
    assert peeked.returncode == 0, peeked.stderr
    assert f"0 message(s) shown of about 3 in '{queue}'" in peeked.stdout


def test_status_goes_on_when_a_peek_fails(env, service, ns):
    """A message Azurite cannot hand out (a raw \\x00) makes every peek of its queue fail
    (500): status still shows the count, with '?' for what is visible."""
    queue = f"{ns}tasks-queue"
    service.create_queue(queue)
    service.get_queue_client(queue).send_message('{"id": "raw-\x00"}')
    result = run_script(STATUS, "--prefix", ns, env=env)
    assert result.returncode == 0, result.stderr
    assert [m.groups()[1:] for m in _rows(result.stdout, ns)] == [("1", "?", "-")]
    assert "Traceback" not in result.stderr, result.stderr


def test_status_with_nothing_there_says_so(env, ns):
    result = run_script(STATUS, "--prefix", ns, env=env)
    assert result.returncode == 0
    assert f"no queues starting with '{ns}'" in result.stdout


def test_status_watch_redraws_until_ctrl_c_and_exits_0(start, service, ns):
    name = f"{ns}tasks-queue"
    make(service, name)
    watch = start(STATUS, "--watch", "--prefix", ns)
    watch.wait_for(rf"{name}\s+0\s+0\s+-$")
    make(service, f"{name}-poison", "p")
    service.get_queue_client(name).send_message("one")
    watch.wait_for(rf"{name}\s+1\s+1\s+1$", timeout=10)
    watch.send_signal(signal.SIGINT)
    assert watch.wait(10) == 0
    assert "Traceback" not in watch.text


def test_status_without_a_server_is_one_line_exit_2(env):
    from patterns.emulator import free_port

    dead = {**env, CONNECTION_STRING_VAR: azurite_connection_string(free_port())}
    result = run_script(STATUS, env=dead, timeout=30)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot reach the queue service" in result.stderr


def test_status_with_a_sas_token_shows_the_endpoint_without_it(azurite):
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    everything = ResourceTypes(service=True, container=True, object=True)
    sas = generate_account_sas(
        AZURITE_ACCOUNT,
        AZURITE_KEY,
        everything,
        AccountSasPermissions(read=True, list=True),
        expiry,
    )
    setting = f"QueueEndpoint={azurite.endpoint};SharedAccessSignature={sas}"
    env = {**learner_env(), CONNECTION_STRING_VAR: setting}
    result = run_script(STATUS, env=env)
    assert result.returncode == 0, result.stderr
    assert f"at {azurite.endpoint} " in result.stdout
    signature = parse_qs(sas)["sig"][0]
    assert signature not in result.stdout + result.stderr
    assert "sig=" not in result.stdout + result.stderr


# --- peek -------------------------------------------------------------------------------


def test_peek_shows_messages_and_does_not_change_the_queue(env, service, qname):
    make(service, qname, json.dumps({"id": "first", "n": 1}), "plain text", "third")
    before = message_count(service, qname)

    result = run_script(PEEK, qname, "-n", "2", env=env)
    assert result.returncode == 0, result.stderr
    assert '{\n  "id": "first",\n  "n": 1\n}' in result.stdout  # pretty-printed JSON
    assert "plain text" in result.stdout
    assert "third" not in result.stdout
    assert result.stdout.count("dequeue count 0") == 2
    assert "inserted 20" in result.stdout
    assert f"2 message(s) shown of about 3 in '{qname}'" in result.stdout

    assert message_count(service, qname) == before == 3
    received = service.get_queue_client(qname).receive_message()
    assert received.dequeue_count == 1  # the peek was not a delivery


def test_peek_of_a_missing_queue_is_one_line_and_creates_nothing(env, service, qname):
    result = run_script(PEEK, qname, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: queue '{qname}' does not exist"
    assert qname not in existing(service, qname)


def test_peek_unpacks_a_poison_record(env, service, qname):
    record = {
        "reason": "not JSON",
        "source_queue": qname,
        "dequeue_count": 1,
        "poisoned_at": "2026-11-25T00:00:00+00:00",
        "message_id": "m",
        "body": json.dumps({"id": "inner"}),
    }
    make(service, f"{qname}-poison", json.dumps(record))
    result = run_script(PEEK, f"{qname}-poison", env=env)
    assert '"body": {\n    "id": "inner"\n  }' in result.stdout


# --- cleanup ----------------------------------------------------------------------------

TUTORIAL = [
    "tasks-queue",
    "tasks-queue-poison",
    "fanout-queue-a",
    "fanout-queue-a-poison",
    "tasks-low-priority",
    "queue-rejected",
    "request-queue-poison",
    "reply-0123abcd",
]


def test_cleanup_dry_run_lists_and_removes_nothing(env, service, ns):
    for name in [*TUTORIAL, "my-own-queue"]:
        make(service, ns + name, "m")
    result = run_script(CLEANUP, "--prefix", ns, "--dry-run", env=env)
    assert result.returncode == 0, result.stderr
    listed = re.findall(r"would delete: (\S+)", result.stdout)
    assert sorted(listed) == sorted(ns + name for name in TUTORIAL)
    assert "1 other queue(s) left alone; nothing deleted" in result.stdout
    assert existing(service, ns) == {ns + name for name in [*TUTORIAL, "my-own-queue"]}


def test_cleanup_deletes_only_tutorial_queues(env, service, ns):
    for name in [*TUTORIAL, "my-own-queue", "fanout-queue"]:
        make(service, ns + name, "m")
    result = run_script(CLEANUP, "--prefix", ns, "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert f"deleted {len(TUTORIAL)} queue(s); 2 other queue(s) left alone" in result.stdout
    assert existing(service, ns) == {ns + "my-own-queue", ns + "fanout-queue"}


def test_cleanup_asks_and_no_or_no_answer_deletes_nothing(env, service, ns):
    make(service, ns + "tasks-queue")
    for stdin, code in (("n\n", 0), ("", 2)):
        result = run_script(CLEANUP, "--prefix", ns, env=env, input=stdin, timeout=30)
        assert result.returncode == code, result
        assert "Delete these 1 queue(s) and their messages? [y/N]" in result.stdout
    assert "add --yes" in result.stderr
    assert existing(service, ns) == {ns + "tasks-queue"}

    result = run_script(CLEANUP, "--prefix", ns, env=env, input="y\n", timeout=30)
    assert result.returncode == 0
    assert existing(service, ns) == set()


def test_cleanup_lesson_deletes_exactly_that_lessons_queues_and_blobs(env, service, blobs, ns):
    """A lesson's page starts with `cleanup --lesson NAME --yes`: its queues (and their
    poison queues and blobs) go, every other lesson's stay."""
    for name in [*TUTORIAL, "claim-check-queue", "my-own-queue"]:
        make(service, ns + name, "m")
    container = blobs.get_container_client("claim-check-payloads")
    with contextlib.suppress(ResourceExistsError):
        container.create_container()
    for name in ("claim-check-queue/c-1", "tasks-queue/c-2"):
        container.upload_blob(ns + name, b"x", overwrite=True)

    result = run_script(
        CLEANUP, "--prefix", ns, "--lesson", "competing-consumers", "--yes", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "deleted 2 queue(s) and 1 blob(s)\n" in result.stdout  # the others are no news
    assert existing(service, ns) == {
        ns + name for name in [*TUTORIAL[2:], "claim-check-queue", "my-own-queue"]
    }
    left = {blob.name for blob in container.list_blobs(name_starts_with=ns)}
    assert left == {ns + "claim-check-queue/c-1"}

    result = run_script(
        CLEANUP, "--prefix", ns, "--lesson", "competing-consumers", "--yes", env=env
    )
    assert "no tutorial queues starting with" in result.stdout
    assert "of lesson competing-consumers to delete" in result.stdout

    result = run_script(CLEANUP, "--prefix", ns, "--lesson", "claim-check", "--yes", env=env)
    assert existing(service, ns) == {ns + name for name in [*TUTORIAL[2:], "my-own-queue"]}
    assert not list(container.list_blobs(name_starts_with=ns))


def test_cleanup_lesson_names_come_from_the_queue_table():
    assert LESSONS == (
        "competing-consumers",
        "fanout",
        "priority",
        "pipes-and-filters",
        "request-reply",
        "load-leveling",
        "claim-check",
        "exactly-once",
        "ordered",
    )
    result = run_script(CLEANUP, "--lesson", "tracing", "--yes")
    assert result.returncode == 2 and "invalid choice: 'tracing'" in result.stderr


# --- redrive ----------------------------------------------------------------------------


def test_redrive_moves_n_back_with_original_bodies_and_a_consumer_processes_them(
    start, env, service, qname, monkeypatch
):
    tasks = [json.dumps({"id": f"redriven-{n}"}) for n in range(3)]
    make(service, qname, *tasks)
    # Poison them the way a consumer does (the helper writes the record) ...
    monkeypatch.setenv(CONNECTION_STRING_VAR, env[CONNECTION_STRING_VAR])
    monkeypatch.setattr(connect, "_service", None)
    inbox = Inbox(qname, visibility_timeout=30)
    for message in inbox.receive_batch(3):
        inbox.poison(message, "the bug we have fixed since")
    # ... plus one that is not a record: it goes back as it is.
    raw = json.dumps({"id": "redriven-raw"})
    service.get_queue_client(f"{qname}-poison").send_message(raw)
    assert message_count(service, qname) == 0
    assert message_count(service, f"{qname}-poison") == 4

    result = run_script(REDRIVE, qname, "--count", "3", env=env)
    assert result.returncode == 0, result.stderr
    assert f"moved 3 message(s) from '{qname}-poison' back to '{qname}'; 1 left" in result.stdout
    back = peek_bodies(service, qname)
    assert len(back) == 3
    assert set(back) <= {*tasks, raw}  # the original bodies, not the poison records

    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    consumer.wait_for(r"done redriven-", count=3)
    result = run_script(REDRIVE, qname, env=env)  # the rest
    assert "moved 1 message(s)" in result.stdout
    consumer.wait_for(r"done redriven-", count=4)
    assert consumer.stop() == 0
    done = sorted(m.group(1) for m in consumer.matches(r"done (\S+)"))
    assert done == ["redriven-0", "redriven-1", "redriven-2", "redriven-raw"]
    assert message_count(service, qname) == 0
    assert message_count(service, f"{qname}-poison") == 0


def test_redrive_with_no_poison_queue_moves_nothing(env, service, qname):
    result = run_script(REDRIVE, qname, env=env)
    assert result.returncode == 0
    assert f"nothing to redrive: there is no queue '{qname}-poison'" in result.stdout
    assert existing(service, qname) == set()


# --- what a consumer writes, or anyone injects --------------------------------------------------


def test_peek_and_redrive_take_the_records_consumers_write_for_bodies_python_cannot_hold(
    start, env, service, qname
):
    """A consumer poisons a 5,000-deep body (RecursionError in Python's json) and a 5,000-digit
    number (ValueError): the tools show and move such records like any other."""
    deep, digits = "[" * 5000 + "]" * 5000, '{"id": ' + "9" * 5000 + "}"
    make(service, qname, deep, digits)
    consumer = start(CONSUMER, "--queue", qname, "--idle-max", "0.2")
    consumer.wait_for(rf"moved message \S+ to '{qname}-poison'", count=2)
    assert consumer.stop() == 0

    peeked = run_script(PEEK, f"{qname}-poison", "-n", "5", env=env)
    assert peeked.returncode == 0, peeked.stderr
    assert f"2 message(s) shown of about 2 in '{qname}-poison'" in peeked.stdout
    assert '"reason": "JSON nested too deeply to read"' in peeked.stdout
    result = run_script(REDRIVE, qname, env=env)
    assert result.returncode == 0, result.stderr
    assert f"moved 2 message(s) from '{qname}-poison' back to '{qname}'; 0 left" in result.stdout
    assert sorted(peek_bodies(service, qname)) == sorted([deep, digits])


def test_control_characters_from_a_message_are_escaped_by_peek_and_redrive(env, service, qname):
    """C1 controls (\\x9b starts an escape sequence, as ESC [ does), DEL, NEL and the Unicode
    line separator: allowed in a queue message, shown escaped; so is a poison record's reason
    with ESC in it. An id with ESC in it is no application id (codec's rule): not shown."""
    make(service, qname, "plain \x9b2J text\nsecond line\x7f",
         json.dumps({"id": "c1", "note": "\x85\u2028"}, ensure_ascii=False))  # fmt: skip
    peeked = run_script(PEEK, qname, "-n", "2", env=env)
    assert peeked.returncode == 0, peeked.stderr
    assert not set("\x9b\x7f\x85\u2028") & set(peeked.stdout)
    assert "plain \\x9b2J text\\nsecond line\\x7f" in peeked.stdout
    assert '"note": "\\x85\\u2028"' in peeked.stdout

    body = json.dumps({"id": "\x1b[2J\nX"})
    record = {"reason": "\x1b[2J\nX", "source_queue": qname, "dequeue_count": 1,
              "message_id": "m", "poisoned_at": "2026-11-25T00:00", "body": body}  # fmt: skip
    make(service, f"{qname}-poison", json.dumps(record))
    result = run_script(REDRIVE, qname, env=env)
    assert result.returncode == 0, result.stderr
    assert re.search(
        rf"moved message \S+ back to '{qname}' \(it had failed: \\x1b\[2J\\nX\)", result.stdout
    )
    assert "\x1b" not in result.stdout


# --- the lessons' tables (exactly-once, per-key order) ----------------------------------------


@pytest.fixture
def lesson_tables(azurite, ns):
    """The two lessons' tables under this test's prefix (`t1a2b3c4dpayments`), with rows as
    their consumers write them, and a table of the learner's own; deleted afterwards."""
    from azure.data.tables import EdmType, EntityProperty, TableServiceClient

    svc = TableServiceClient.from_connection_string(azurite.connection_string)
    start = table_prefix(ns)
    payments = svc.create_table(f"{start}payments")
    for account, balance in (("acct-10", 300), ("acct-2", 1200)):
        payments.create_entity({"PartitionKey": account, "RowKey": "balance",
                                "balance": EntityProperty(balance, EdmType.INT64)})  # fmt: skip
        payments.create_entity({"PartitionKey": account, "RowKey": "payment-p1", "amount": 1})
    ordered = svc.create_table(f"{start}ordered")
    ordered.create_entity({"PartitionKey": "order-1", "RowKey": "next", "next": 3})
    for seq in (1, 2):
        ordered.create_entity({"PartitionKey": "order-1", "RowKey": f"event-{seq:06d}"})
    svc.create_table(f"{start}mine")
    yield svc, start
    for name in ("payments", "ordered", "mine"):
        svc.delete_table(f"{start}{name}")


def test_status_shows_each_lessons_table_beside_the_queues(env, lesson_tables, ns):
    _, start = lesson_tables
    result = run_script(STATUS, "--prefix", ns, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2:] == [
        f"table {start}payments (exactly-once effects): 4 row(s); 2 payment record(s); "
        "balances: acct-2 1200, acct-10 300",
        f"table {start}ordered (per-key order): 3 row(s); 1 order(s), 2 event(s) applied; "
        "next: order-1 #3",
    ]
    assert f"{start}mine" not in result.stdout  # not a lesson's


def test_status_table_rows_are_a_function_the_dashboard_can_call(
    azurite, lesson_tables, ns, monkeypatch
):
    from patterns.helper.support import tables
    from patterns.tools.status import TableRow, table_rows

    monkeypatch.setenv(CONNECTION_STRING_VAR, azurite.connection_string)
    monkeypatch.setattr(connect, "_service", None)
    monkeypatch.setattr(tables, "_service", None)
    _, start = lesson_tables
    assert [(r.lesson, r.table, r.rows) for r in table_rows(ns)] == [
        ("exactly-once effects", f"{start}payments", 4),
        ("per-key order", f"{start}ordered", 3),
    ]
    assert all(isinstance(row, TableRow) and row.summary for row in table_rows(ns))
    # ... and the dashboard does: the same rows and words on its page
    from patterns.tools.dashboard import tables_section

    section = tables_section(ns)
    assert [(t["lesson"], t["name"], t["rows"][0][0]) for t in section] == [
        ("exactly-once effects", f"{start}payments", "4"),
        ("per-key order", f"{start}ordered", "3"),
    ]
    assert [t["rows"][0][1] for t in section] == [row.summary for row in table_rows(ns)]


def test_cleanup_deletes_the_lessons_tables_with_their_queues_and_no_other(
    env, service, lesson_tables, ns
):
    svc, start = lesson_tables
    make(service, f"{ns}payments-queue", "m")
    dry = run_script(CLEANUP, "--prefix", ns, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert sorted(re.findall(r"would delete: table (\S+)", dry.stdout)) == [
        f"{start}ordered", f"{start}payments",
    ]  # fmt: skip
    assert "1 queue(s) and 2 table(s) would be deleted" in dry.stdout
    result = run_script(CLEANUP, "--prefix", ns, "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 queue(s) and 2 table(s)" in result.stdout
    left = {t.name for t in svc.list_tables()}
    assert f"{start}mine" in left and not {f"{start}payments", f"{start}ordered"} & left


def test_cleanup_of_one_lesson_deletes_its_table_and_leaves_the_other_lessons(
    env, service, lesson_tables, ns
):
    svc, start = lesson_tables
    make(service, f"{ns}payments-queue", "m")
    make(service, f"{ns}order-events", "m")
    result = run_script(CLEANUP, "--prefix", ns, "--lesson", "exactly-once", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 queue(s) and 1 table(s)" in result.stdout
    left = {t.name for t in svc.list_tables()}
    assert f"{start}ordered" in left and f"{start}payments" not in left
    assert existing(service, ns) == {f"{ns}order-events"}
