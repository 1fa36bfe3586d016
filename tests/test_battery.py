"""The fault battery: load, emulator outages, kill -9 and bad inputs, against real Azurite.

Every script runs as a subprocess, as in the other tests. Marked `battery`: `make test` runs
it; `pytest -m battery` runs only it, `pytest -m "not battery"` skips it. What the battery
measures (times, duplicates, messages in flight, where each bad input ended up) is printed at
the end of the run, under "battery figures"; what it asserts is that nothing is lost and no
consuming script exits.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from support import env_for, ids_logged, message_count, run_script, wait_until

from patterns.emulator import Azurite
from patterns.helper.support.limits import MAX_MESSAGE_BYTES, size_as_sent
from patterns.runner import Proc, stop_all

pytestmark = pytest.mark.battery

CONSUMER = "patterns.competing_consumers.consumer"
PRODUCER = "patterns.competing_consumers.producer"
SUBSCRIBER = "patterns.fanout.consumer"
PRIORITY = "patterns.priority.consumer"
PIPELINE_PRODUCER = "patterns.pipes_and_filters.producer"
VALIDATE = "patterns.pipes_and_filters.validate"
ENRICH = "patterns.pipes_and_filters.enrich"
FINALIZE = "patterns.pipes_and_filters.finalize"
REPLIER = "patterns.request_reply.replier"
REQUESTOR = "patterns.request_reply.requestor"

OUTAGE_SECONDS = 5.0
WARNING = re.compile(r"\] warning: ")
RECOVERED = "answers again"


# --- shared pieces -----------------------------------------------------------------------


def count(service: QueueServiceClient, name: str) -> int:
    """Messages in a queue, invisible ones included; 0 for a queue that does not exist."""
    try:
        return message_count(service, name)
    except ResourceNotFoundError:
        return 0


def drain(service: QueueServiceClient, name: str) -> list[str]:
    """Take every message out of a queue (one at a time, so a message the service cannot
    deliver - it answers 500 - hides only itself); their bodies."""
    queue = service.get_queue_client(name)
    bodies: list[str] = []
    empty = 0
    while empty < 2:
        try:
            pages = queue.receive_messages(
                max_messages=1, messages_per_page=1, visibility_timeout=300
            ).by_page()
            messages = list(next(pages, []))
        except ResourceNotFoundError:
            return bodies
        except HttpResponseError:
            continue  # that message stays hidden for 300 s; the next call gets another
        if not messages:
            empty += 1
            continue
        for message in messages:
            bodies.append(message.content)
            queue.delete_message(message)
    return bodies


def outage(emulator: Azurite, seconds: float = OUTAGE_SECONDS) -> float:
    """Stop the emulator by its PID, keep it down, start it again on the same port with the
    same data folder; how long the service was away."""
    emulator.stop()
    began = time.monotonic()
    time.sleep(seconds)  # the outage itself: its length is the point, not a synchronisation
    emulator.start()
    return time.monotonic() - began


def assert_rode_out_the_outage(proc: Proc) -> None:
    """Still running, said the service went away (a warning) and that it came back."""
    assert proc.popen.poll() is None, f"{proc.label} exited ({proc.popen.returncode}):\n{proc.text}"
    lines = proc.lines[:]
    warned = [n for n, line in enumerate(lines) if WARNING.search(line)]
    back = [n for n, line in enumerate(lines) if RECOVERED in line]
    assert warned, f"{proc.label} logged no warning during the outage:\n{proc.text}"
    assert back and back[-1] > warned[0], f"{proc.label} never said the service is back"
    assert "Traceback" not in proc.text


# --- load ----------------------------------------------------------------------------------


def test_load_2000_tasks_4_consumers_every_id_done_none_lost(tmp_path, start, figures):
    """Zero work, so the queue service is the bottleneck. Batch size 32 (the service's
    maximum): with zero work a consumer's time goes into round trips, and a batch of 32 is
    settled in well under a second, far inside the 30 s visibility timeout, so a bigger batch
    does not by itself cause redeliveries. A separate in-memory emulator, so that 2,000 tasks
    neither slow the session's emulator nor fill its access log."""
    tasks, consumers_n = 2000, 4
    with Azurite(log_path=tmp_path / "azurite.log") as emulator:
        env = env_for(emulator)
        service = QueueServiceClient.from_connection_string(emulator.connection_string)
        name = f"load-{uuid.uuid4().hex[:8]}"
        args = ("--queue", name, "--work-seconds", "0", "--batch-size", "32")
        consumers = [start(CONSUMER, *args, env_=env) for _ in range(consumers_n)]
        for consumer in consumers:
            consumer.wait_for("waiting for tasks")

        began = time.monotonic()
        producer = start(PRODUCER, "--queue", name, "--count", str(tasks), "--concurrency", "16",
                         env_=env)  # fmt: skip
        deepest = 0

        def all_done() -> bool:
            nonlocal deepest
            deepest = max(deepest, count(service, name))
            return len(done_ids(consumers)) >= tasks

        wait_until(all_done, 180, f"{tasks} tasks done")
        drained = time.monotonic() - began
        assert producer.wait(30) == 0, producer.text
        sent = [m.group(1) for m in producer.matches(r"\] sent (task-\S+)$")]
        sending = producer.matches(r"sent \d+ tasks to .* in ([\d.]+) s")[0].group(1)
        exits = stop_all(consumers)
        left = count(service, name), count(service, name + "-poison")

    done = Counter(task for c in consumers for task in ids_logged(c, "done"))
    duplicates = sum(done.values()) - len(done)
    lost = set(sent) - set(done)
    figures(
        f"{tasks} tasks x {consumers_n} consumers (zero work, batch 32): sent in {sending} s, "
        f"all done {drained:.1f} s after the producer started; deepest queue {deepest}; "
        f"per consumer {[len(ids_logged(c, 'done')) for c in consumers]}; "
        f"duplicates {duplicates}; lost {len(lost)}; left in queue/poison {left}"
    )
    assert len(set(sent)) == tasks
    assert not lost
    assert set(done) == set(sent)
    assert all(ids_logged(c, "done") for c in consumers), "a consumer did no work"
    assert exits == [0] * consumers_n
    assert left == (0, 0)


def done_ids(procs: list[Proc]) -> set[str]:
    return {task for proc in procs for task in ids_logged(proc, "done")}


# --- outages -------------------------------------------------------------------------------


@pytest.mark.parametrize(("concurrency", "work"), [("1", "0.1"), ("4", "0.5")])
def test_outage_under_competing_consumers_loses_nothing(
    disk_azurite, start, figures, concurrency, work
):
    env, service = env_for(disk_azurite), service_of(disk_azurite)
    name = f"out-cc-{uuid.uuid4().hex[:8]}"
    args = ("--queue", name, "--work-seconds", work, "--visibility-timeout", "3",
            "--concurrency", concurrency)  # fmt: skip
    consumers = [start(CONSUMER, *args, env_=env) for _ in range(2)]
    for consumer in consumers:
        consumer.wait_for("waiting for tasks")
    result = run_script(PRODUCER, "--queue", name, "--count", "60", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    sent = re.findall(r"\] sent (task-\S+)\n", result.stdout)
    assert len(set(sent)) == 60

    wait_until(lambda: len(done_ids(consumers)) >= 10, 30, "10 tasks done before the outage")
    in_flight = len(sent) - len(done_ids(consumers))
    assert in_flight > 0, "all work was done before the outage: it tested nothing"
    down = outage(disk_azurite)
    wait_until(
        lambda: done_ids(consumers) >= set(sent) and count(service, name) == 0,
        60,
        "every task done and deleted after the outage",
    )
    for consumer in consumers:
        assert_rode_out_the_outage(consumer)
    exits = stop_all(consumers)

    done = Counter(task for c in consumers for task in ids_logged(c, "done"))
    figures(
        f"competing consumers: {len(sent)} tasks, 2 consumers x --concurrency {concurrency}, "
        f"service down {down:.1f} s with "
        f"{in_flight} tasks not yet done; duplicates {sum(done.values()) - len(done)}; "
        f"lost {len(set(sent) - set(done))}"
    )
    assert exits == [0, 0]
    assert (count(service, name), count(service, name + "-poison")) == (0, 0)


def service_of(emulator: Azurite) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(emulator.connection_string)


@pytest.mark.parametrize("max_attempts", ["5", "1"])
def test_outage_under_the_pipeline_every_order_finishes(disk_azurite, start, figures, max_attempts):
    env, service = env_for(disk_azurite), service_of(disk_azurite)
    q = f"out-pf-{uuid.uuid4().hex[:8]}"
    v, e, f, r = f"{q}-v", f"{q}-e", f"{q}-f", f"{q}-r"
    common = ("--max-attempts", max_attempts, "--visibility-timeout", "3")
    filters = [
        start(VALIDATE, "--input", v, "--output", e, "--rejected", r, "--work-seconds", "0.1",
              *common, env_=env),
        start(ENRICH, "--input", e, "--output", f, "--work-seconds", "0.1", *common, env_=env),
        start(FINALIZE, "--input", f, *common, env_=env),
    ]  # fmt: skip
    final = filters[2]
    for proc in filters:
        proc.wait_for(r"orders (from|on) ")
    result = run_script(PIPELINE_PRODUCER, "--output", v, "--count", "30", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    sent = re.findall(r"\] sent (ORD-\S+) ", result.stdout)
    assert len(set(sent)) == 30

    def finished() -> list[str]:
        return [m.group(1) for m in final.matches(r"\] finished (ORD-\S+) ")]

    wait_until(lambda: len(finished()) >= 5, 30, "5 orders finished before the outage")
    in_flight = len(sent) - len(set(finished()))
    assert in_flight > 0, "all work was done before the outage: it tested nothing"
    down = outage(disk_azurite)
    wait_until(
        lambda: set(finished()) >= set(sent) and not any(count(service, n) for n in (v, e, f)),
        60,
        "every order finished, and every pipe empty, after the outage",
    )
    for proc in filters:
        assert_rode_out_the_outage(proc)
    exits = stop_all(filters)

    done = Counter(finished())
    figures(
        f"pipeline (--max-attempts {max_attempts}): {len(sent)} orders, service down "
        f"{down:.1f} s with {in_flight} orders not yet finished; "
        f"arrived twice at finalize {sum(done.values()) - len(done)}; "
        f"lost {len(set(sent) - set(done))}"
    )
    assert exits == [0, 0, 0], "\n".join(p.text for p in filters)
    leftovers = {name: count(service, name) for name in (v, e, f, r)}
    leftovers.update({f"{n}-poison": count(service, f"{n}-poison") for n in (v, e, f)})
    assert leftovers == dict.fromkeys(leftovers, 0)


@pytest.mark.parametrize("max_attempts", ["5", "1"])
def test_outage_under_request_reply_every_reply_arrives(disk_azurite, start, figures, max_attempts):
    env, service = env_for(disk_azurite), service_of(disk_azurite)
    name = f"out-rr-{uuid.uuid4().hex[:8]}"
    replier = start(REPLIER, "--queue", name, "--max-attempts", max_attempts,
                    "--visibility-timeout", "3", env_=env)  # fmt: skip
    replier.wait_for("waiting for requests")
    requests = 200
    requestor = start(REQUESTOR, "--queue", name, "--count", str(requests), "--timeout", "90",
                      "--payload", "ping", env_=env)  # fmt: skip
    requestor.wait_for("waiting up to")

    def answered() -> int:
        return len(replier.matches(r"\] answered "))

    wait_until(lambda: answered() >= 20, 30, "20 requests answered before the outage")
    in_flight = requests - answered()
    assert in_flight > 0, "all work was done before the outage: it tested nothing"
    down = outage(disk_azurite)
    assert requestor.wait(90) == 0, requestor.text
    assert f"all {requests} reply(ies) received" in requestor.text
    replies = dict(re.findall(r"reply to request (\d+): '([^']*)'", requestor.text))
    assert replies == {str(n): f"PING {n}" for n in range(1, requests + 1)}
    assert_rode_out_the_outage(replier)
    lines = requestor.lines[:]
    assert any(WARNING.search(line) for line in lines), "the requestor did not warn"
    assert any(RECOVERED in line for line in lines), "the requestor never said it is back"
    strays = len(requestor.matches("ignored a stray reply"))
    wait_until(lambda: count(service, name) == 0, 30, "every request deleted")
    assert replier.stop() == 0

    figures(
        f"request/reply (--max-attempts {max_attempts}): {requests} requests, service down "
        f"{down:.1f} s with {in_flight} not yet answered; duplicate replies {strays}; lost 0"
    )
    assert (count(service, name), count(service, name + "-poison")) == (0, 0)


# --- kill -9 -------------------------------------------------------------------------------


def test_kill_9_of_validate_mid_work_loses_no_order(start, env, service, qname, figures):
    v, e, r = f"{qname}-v", f"{qname}-e", f"{qname}-r"
    args = ("--input", v, "--output", e, "--rejected", r, "--visibility-timeout", "2")
    doomed = start(VALIDATE, *args, "--work-seconds", "0.3")
    doomed.wait_for("validating orders")
    result = run_script(PIPELINE_PRODUCER, "--output", v, "--count", "20", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    sent = set(re.findall(r"\] sent (ORD-\S+) ", result.stdout))
    doomed.wait_for(r"passed ORD-", count=3, timeout=20)
    doomed.send_signal(signal.SIGKILL)  # no goodbye: the order in hand is still hidden
    assert doomed.wait(5) == -signal.SIGKILL
    before = len(doomed.matches(r"passed ORD-"))
    assert before < len(sent)

    heir = start(VALIDATE, *args)
    forwarded: Counter[str] = Counter()

    def all_forwarded() -> bool:
        forwarded.update(json.loads(body)["order_id"] for body in drain(service, e))
        return set(forwarded) >= sent

    wait_until(
        lambda: all_forwarded() and count(service, v) == 0,
        30,
        "every order forwarded and deleted from the input",
    )
    assert heir.stop() == 0
    figures(
        f"kill -9 validate after {before} of {len(sent)} orders: the second instance forwarded "
        f"the rest; forwarded twice {sum(forwarded.values()) - len(forwarded)}; lost 0"
    )
    assert set(forwarded) == sent
    assert count(service, v) == 0 and count(service, v + "-poison") == 0


def test_kill_9_of_a_subscriber_mid_work_loses_no_message(start, service, figures):
    prefix = f"fo-{uuid.uuid4().hex[:10]}-"
    args = ("--subscriber", "a", "--prefix", prefix, "--visibility-timeout", "2")
    doomed = start(SUBSCRIBER, *args, "--work-seconds", "0.3")
    doomed.wait_for("subscribed: waiting for messages")
    inbox = service.get_queue_client(prefix + "a")
    sent = [f"msg-{n:02d}" for n in range(12)]
    for message_id in sent:
        inbox.send_message(json.dumps({"id": message_id, "text": f"copy of {message_id}"}))
    doomed.wait_for(r"\] done msg-", count=3, timeout=20)
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait(5) == -signal.SIGKILL
    before = ids_logged(doomed, "done")
    assert len(before) < len(sent)

    heir = start(SUBSCRIBER, *args, "--work-seconds", "0")
    wait_until(
        lambda: done_ids([doomed, heir]) >= set(sent) and count(service, prefix + "a") == 0,
        30,
        "every message done and deleted",
    )
    assert heir.stop() == 0
    twice = set(before) & set(ids_logged(heir, "done"))
    figures(
        f"kill -9 subscriber after {len(before)} of {len(sent)} messages: the restarted one "
        f"did the rest; done twice {len(twice)}; lost 0"
    )
    assert count(service, prefix + "a") == 0 and count(service, prefix + "a-poison") == 0


def test_kill_9_of_the_replier_mid_work_every_request_answered(start, service, qname, figures):
    args = ("--queue", qname, "--visibility-timeout", "2")
    doomed = start(REPLIER, *args, "--batch-size", "16")
    doomed.wait_for("waiting for requests")
    requests = 100
    requestor = start(REQUESTOR, "--queue", qname, "--count", str(requests), "--timeout", "60",
                      "--payload", "ping")  # fmt: skip
    doomed.wait_for(r"\] answered ", count=10, timeout=20)
    doomed.send_signal(signal.SIGKILL)  # with up to 16 requests in hand
    assert doomed.wait(5) == -signal.SIGKILL
    before = len(doomed.matches(r"\] answered "))
    assert before < requests

    heir = start(REPLIER, *args)
    assert requestor.wait(60) == 0, requestor.text
    replies = dict(re.findall(r"reply to request (\d+): '([^']*)'", requestor.text))
    assert replies == {str(n): f"PING {n}" for n in range(1, requests + 1)}
    wait_until(lambda: count(service, qname) == 0, 30, "every request deleted")
    assert heir.stop() == 0
    strays = len(requestor.matches("ignored a stray reply"))
    figures(
        f"kill -9 replier (batch 16) after {before} of {requests} answers: the second one "
        f"answered the rest; duplicate replies {strays}; lost 0"
    )
    assert count(service, qname) == 0 and count(service, qname + "-poison") == 0


# --- bad inputs ----------------------------------------------------------------------------
#
# About fifty kinds of message, sent with a raw SDK client to one running instance of each
# consuming script. Each message must end up somewhere a person can find it - processed,
# rejected (the pipeline's queue-rejected) or in <queue>-poison with a reason - and the script
# must keep running. Outcomes:
#   done      processed (logged as done/finished, forwarded, or answered)
#   dup       recognised as a repeat of an id already processed, and logged
#   rejected  in the pipeline's rejected queue, with the reasons
#   poison    in <queue>-poison, with a reason
#   error     the replier answered with an error reply
#   dropped   the replier's reply queue does not exist: logged, reply dropped
#   left      still in the input queue (the service itself cannot deliver it)


@dataclass(frozen=True)
class Target:
    """One consuming script, and how to read where a message ended up."""

    script: str
    module: str
    id_field: str

    def queues(self, q: str) -> dict[str, str]:
        """input (where bad inputs go), and output/rejected where the script has them."""
        return {
            "consumer": {"input": q},
            "subscriber": {"input": f"{q}-a"},
            "priority": {"input": f"{q}-high-priority"},
            "validate": {"input": f"{q}-v", "output": f"{q}-e", "rejected": f"{q}-r"},
            "enrich": {"input": f"{q}-e", "output": f"{q}-f"},
            "finalize": {"input": f"{q}-f"},
            "replier": {"input": f"{q}-q"},
        }[self.script]

    def args(self, q: str) -> list[str]:
        quick = ["--visibility-timeout", "2", "--max-attempts", "3", "--idle-max", "0.2"]
        return (
            quick
            + {
                "consumer": ["--queue", q, "--work-seconds", "0"],
                "subscriber": ["--subscriber", "a", "--prefix", f"{q}-", "--work-seconds", "0"],
                "priority": ["--prefix", q, "--work-seconds", "0"],
                "validate": ["--input", f"{q}-v", "--output", f"{q}-e", "--rejected", f"{q}-r"],
                "enrich": ["--input", f"{q}-e", "--output", f"{q}-f"],
                "finalize": ["--input", f"{q}-f"],
                "replier": ["--queue", f"{q}-q"],
            }[self.script]
        )

    def valid(self, tag: str, reply_to: str) -> dict[str, Any]:
        """A message this script processes without complaint, identified by `tag`."""
        if self.script == "replier":
            return {"correlation_id": tag, "reply_to": reply_to, "payload": f"{tag} payload"}
        if self.id_field == "order_id":
            return {"order_id": tag, "amount": 25, "items": ["item-A"], "tag": tag}
        return {"id": tag, "text": f"{tag} text", "tag": tag}


TARGETS = [
    Target("consumer", CONSUMER, "id"),
    Target("subscriber", SUBSCRIBER, "id"),
    Target("priority", PRIORITY, "id"),
    Target("validate", VALIDATE, "order_id"),
    Target("enrich", ENRICH, "order_id"),
    Target("finalize", FINALIZE, "order_id"),
    Target("replier", REPLIER, "correlation_id"),
]

FORWARDS = {"validate", "enrich", "replier"}  # scripts that send what they read onwards

BAD_ID = {"poison", "rejected", "error"}  # rejected: pipeline only; error: replier only


@dataclass(frozen=True)
class Kind:
    name: str
    body: Callable[[dict[str, Any], Target], str]  # (a valid message, target) -> text sent
    expect: Callable[[Target], set[str]]


def dumps(message: dict[str, Any]) -> str:
    return json.dumps(message)


def replaced(**fields: Any) -> Callable[[dict[str, Any], Target], str]:
    return lambda m, t: dumps({**m, **fields})


def with_id(value: Any) -> Callable[[dict[str, Any], Target], str]:
    return lambda m, t: dumps({**m, t.id_field: value})


def without(field: str) -> Callable[[dict[str, Any], Target], str]:
    return lambda m, t: dumps({k: v for k, v in m.items() if k != (field or t.id_field)})


def always(*outcomes: str) -> Callable[[Target], set[str]]:
    return lambda t: set(outcomes)


def for_(scripts: set[str], there: set[str], elsewhere: set[str]) -> Callable[[Target], set[str]]:
    return lambda t: there if t.script in scripts else elsewhere


def deep(m: dict[str, Any], t: Target) -> str:
    """30,000 nested lists inside a valid message: json.loads raises RecursionError."""
    return dumps({**m, "deep": None}).replace("null", "[" * 30000 + "]" * 30000)


def huge(m: dict[str, Any], t: Target) -> str:
    """Near 64 KiB, yet small enough that what the script forwards still fits."""
    field = "payload" if t.script == "replier" else "text"
    probe = {**m, "processed_at": "2026-01-01T00:00:00.000000+00:00"}
    room = MAX_MESSAGE_BYTES - size_as_sent(json.dumps(probe, ensure_ascii=False)) - 200
    return dumps({**m, field: f"{m.get(field, '')} {'x' * room}"})


def too_big_to_forward(m: dict[str, Any], t: Target) -> str:
    """Fits as sent (compact JSON), but what a filter forwards (spaced JSON, or the replier's
    upper-cased answer: 'ŉ' becomes 'ʼN', 2 bytes become 3) is over 64 KiB."""
    if t.script == "replier":
        return json.dumps({**m, "payload": f"{m['payload']} " + "ŉ" * 30000}, ensure_ascii=False)
    text = json.dumps({**m, "items": ["i"] * 14500}, separators=(",", ":"))
    assert len(text.encode()) < MAX_MESSAGE_BYTES < len(json.dumps(json.loads(text)).encode())
    return text


def text(value: str) -> Callable[[dict[str, Any], Target], str]:
    """`value` where the script reads text: the replier's payload (which it answers
    upper-cased), every other script's text field."""

    def body(m: dict[str, Any], t: Target) -> str:
        if t.script == "replier":
            return dumps({**m, "payload": f"{m['payload']} {value}"})
        return dumps({**m, "text": value})

    return body


def nan_amount(literal: str) -> Callable[[dict[str, Any], Target], str]:
    return lambda m, t: dumps({**m, "amount": 1}).replace('"amount": 1', f'"amount": {literal}')


AMOUNT = for_({"validate"}, {"rejected"}, {"done"})
NON_FINITE = for_({"validate"}, {"rejected", "poison"}, {"done", "poison"})

KINDS = [
    Kind("empty body", lambda m, t: "", always("poison")),
    Kind("whitespace only", lambda m, t: " \t\r\n ", always("poison")),
    Kind("not JSON", lambda m, t: "hello, queue", always("poison")),
    Kind("JSON array", lambda m, t: dumps([m]), always("poison")),
    Kind("JSON number", lambda m, t: "42", always("poison")),
    Kind("JSON string", lambda m, t: '"an order"', always("poison")),
    Kind("JSON null", lambda m, t: "null", always("poison")),
    Kind("JSON true", lambda m, t: "true", always("poison")),
    Kind("truncated JSON", lambda m, t: dumps(m)[: len(dumps(m)) // 2], always("poison")),
    Kind("byte order mark", lambda m, t: "\ufeff" + dumps(m), always("poison", "done")),
    Kind("trailing garbage", lambda m, t: dumps(m) + " and more", always("poison")),
    Kind("two objects", lambda m, t: dumps(m) + dumps(m), always("poison")),
    Kind("Python repr", lambda m, t: repr(m), always("poison")),
    Kind(
        "base64 of JSON",
        lambda m, t: base64.b64encode(dumps(m).encode()).decode(),
        always("poison"),
    ),
    Kind("nested 30,000 deep", deep, always("poison")),
    Kind("missing id", without(""), always(*BAD_ID)),
    Kind("null id", with_id(None), always(*BAD_ID)),
    Kind("id 7 (a number)", with_id(7), always(*BAD_ID)),
    Kind('id "7" (a string)', with_id("7"), always("done")),
    Kind("id 7.5", with_id(7.5), always(*BAD_ID)),
    Kind("id true", with_id(True), always(*BAD_ID)),
    Kind("id a list", with_id(["a"]), always(*BAD_ID)),
    Kind("id an object", with_id({"a": 1}), always(*BAD_ID)),
    Kind("id empty string", with_id(""), always(*BAD_ID)),
    Kind("id once", with_id("same-id"), always("done")),
    Kind(
        "id again (a repeat)",
        with_id("same-id"),
        for_({"subscriber", "finalize"}, {"dup"}, {"done"}),
    ),
    Kind("amount 1e999", nan_amount("1e999"), NON_FINITE),
    Kind("amount NaN", nan_amount("NaN"), NON_FINITE),
    Kind("amount -Infinity", nan_amount("-Infinity"), NON_FINITE),
    Kind("amount negative", replaced(amount=-5), AMOUNT),
    Kind("amount zero", replaced(amount=0), AMOUNT),
    Kind("amount true", replaced(amount=True), AMOUNT),
    Kind("amount a string", replaced(amount="25"), AMOUNT),
    Kind("items not a list", replaced(items="item-A"), AMOUNT),
    Kind("items empty", replaced(items=[]), AMOUNT),
    Kind("unicode and emoji id", with_id("注文-ünï-😀"), always("done")),
    Kind("XML-special id", with_id("x<&>]]>"), always("done")),
    Kind("XML-special text", text("<order>&amp; ]]> </order>"), always("done")),
    Kind("control characters escaped", text("bell\u0007 esc\u001b[31m nul\u0000"), always("done")),
    Kind("non-characters escaped", text("\ufffe\uffff"), always("done")),
    Kind("lone surrogate escaped", text("\ud800"), always("done", "poison")),
    Kind(
        "raw NUL in the text",
        lambda m, t: dumps(m)[:-1] + ', "x": "a\x00b"}',
        always("left", "poison"),
    ),
    Kind("base64 text", text(base64.b64encode(b"\x00\xff" * 30).decode()), always("done")),
    Kind("near 64 KiB", huge, always("done")),
    Kind("forward over 64 KiB", too_big_to_forward, for_(FORWARDS, {"poison"}, {"done"})),
    Kind("id of 5,000 characters", with_id("L" * 5000), always("done")),
    Kind(
        "duplicate keys",
        lambda m, t: dumps(m)[:-1] + f', "{t.id_field}": "dup-key"}}',
        always("done"),
    ),
    Kind("unknown fields", replaced(extra={"nested": [1, {"a": None}]}, more=True), always("done")),
    Kind("sent_at not a time", replaced(sent_at="yesterday"), always("done")),
    Kind("reply_to missing", without("reply_to"), for_({"replier"}, {"poison"}, {"done"})),
    Kind(
        "reply_to not a queue name",
        replaced(reply_to="Reply_To!"),
        for_({"replier"}, {"poison"}, {"done"}),
    ),
    Kind(
        "reply_to not a reply queue",
        replaced(reply_to="queue-enrich"),
        for_({"replier"}, {"poison"}, {"done"}),
    ),
    Kind(
        "reply_to a queue that is gone",
        replaced(reply_to=f"reply-{uuid.uuid4()}"),
        for_({"replier"}, {"dropped"}, {"done"}),
    ),
    Kind("payload not a string", replaced(payload=["a"]), for_({"replier"}, {"error"}, {"done"})),
]


@dataclass
class Sent:
    kind: Kind
    tag: str
    ident: Any  # the id as sent (may be missing: None)
    text: str
    outcome: str = "lost"
    record: Any = None  # what it became: poison record, forwarded body, log line...


def poison_records(
    service: QueueServiceClient, name: str, blobs: BlobServiceClient
) -> list[dict[str, Any]]:
    """The poison records in a queue, taken out of it; a body kept in a blob (a record that
    would not fit in one message) is read back and the blob deleted."""
    records = []
    for text in drain(service, name):
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            record = None
        if isinstance(record, dict) and isinstance(where := record.get("body_blob"), dict):
            blob = blobs.get_blob_client(where["container"], where["blob"])
            record["body"] = blob.download_blob().readall().decode("utf-8")
            blob.delete_blob()
        if not isinstance(record, dict) or "body" not in record:
            record = {"body": text, "reason": ""}  # the poison copy carries no reason
        records.append(record)
    return records


def take(records: list[Any], match: Callable[[Any], bool]) -> list[Any]:
    """Remove the first record that matches: [it], or [] if none does."""
    for n, record in enumerate(records):
        if match(record):
            return [records.pop(n)]
    return []


def records(service: QueueServiceClient, name: str | None) -> list[dict[str, Any]]:
    """The JSON bodies in a queue, taken out of it ({"unreadable": text} if not JSON)."""
    bodies = drain(service, name) if name else []
    return [b if isinstance(b := loads(t), dict) else {"unreadable": t} for t in bodies]


def tag_of(body: Any) -> Any:
    return body.get("tag") if isinstance(body, dict) else None


def loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.script)
def test_bad_inputs_are_processed_rejected_or_poisoned_never_lost(
    target, start, service, blobs, figures
):
    q = f"bi-{target.script}-{uuid.uuid4().hex[:8]}"  # short: priority adds -normal-priority-poison
    queues = target.queues(q)
    reply_queue = f"reply-{uuid.uuid4()}"  # the replier's answers, as a requestor's queue
    service.create_queue(reply_queue)
    proc = start(target.module, *target.args(q))
    proc.wait_for(r"waiting for|subscribed|validating|enriching")
    inbox = service.get_queue_client(queues["input"])
    sent = []
    for n, kind in enumerate(KINDS):
        tag = f"bi{n:02d}"
        message = target.valid(tag, reply_queue)
        text = kind.body(message, target)
        body = loads(text)
        ident = body.get(target.id_field) if isinstance(body, dict) else None
        inbox.send_message(text)
        sent.append(Sent(kind, tag, ident, text))
    stuck = sum(1 for s in sent if "left" in s.kind.expect(target))

    # Settled: everything but what the service cannot deliver has left the input queue.
    settled = True
    try:
        wait_until(lambda: count(service, queues["input"]) <= stuck, 30, "input queue settled")
    except AssertionError:
        settled = False
    alive = proc.popen.poll() is None
    exit_code = proc.stop()

    # Where did each message go? Each record found is matched to one message sent.
    poison = poison_records(service, queues["input"] + "-poison", blobs)
    rejected = records(service, queues.get("rejected"))
    output = records(service, queues.get("output"))
    replies = records(service, reply_queue)
    service.delete_queue(reply_queue)
    finished = proc.matches(r"\] (?:done|finished) (.*?)(?: after [^:]*: (\{.*\}))?$")
    done = [(m.group(1), loads(m.group(2)) if m.group(2) else None) for m in finished]
    repeats = [m.group(1) for m in proc.matches(r"\] (?:skipped|duplicate) (.+?)(?::| ignored)")]
    dropped = [m.group(1) for m in proc.matches(r"reply to (\S+) dropped")]
    rules: list[tuple[str, list[Any], Callable[[Any, Sent], bool]]] = [
        ("poison", poison, lambda r, s: r.get("body") == s.text),
        ("rejected", rejected, lambda r, s: tag_of(r.get("order")) == s.tag),
        ("done", output, lambda b, s: tag_of(b) == s.tag),
        ("done", replies, lambda b, s: str(b.get("result")).startswith(f"{s.tag.upper()} ")),
        ("error", replies, lambda b, s: "error" in b and b.get("correlation_id") == s.ident),
        ("dropped", dropped, lambda i, s: i == str(s.ident)),
        ("done", done, lambda d, s: tag_of(d[1]) == s.tag if d[1] else d[0] == str(s.ident)),
        ("dup", repeats, lambda i, s: i == str(s.ident)),
    ]
    for s in sent:
        for fate, found, match in rules:
            taken = take(found, lambda r, s=s, match=match: match(r, s))
            if taken:
                s.outcome, s.record = fate, taken[0]
                break
    left = count(service, queues["input"])
    for s in sent:  # not found anywhere: still in the input queue, or lost
        if s.outcome == "lost" and left > 0 and "left" in s.kind.expect(target):
            s.outcome, left = "left", left - 1
    for s in sent:
        if s.outcome == "lost" and left > 0:
            s.outcome, left = "left", left - 1

    fates = Counter(s.outcome for s in sent)
    figures(
        f"bad inputs x {target.script}: {len(sent)} messages of {len(KINDS)} kinds -> "
        + ", ".join(f"{fate} {n}" for fate, n in sorted(fates.items()))
    )
    wrong = {
        s.kind.name: f"{s.outcome} (expected {' or '.join(sorted(s.kind.expect(target)))})"
        for s in sent
        if s.outcome not in s.kind.expect(target)
    }
    problems = [f"{name}: {fate}" for name, fate in wrong.items()]
    if not alive:
        problems.append(f"the script exited before it was stopped (code {exit_code})")
    if exit_code != 0:
        problems.append(f"exit code {exit_code} after Ctrl+C")
    if "Traceback" in proc.text:
        raised = proc.matches(r"^(\w+(?:Error|Exception): .*)")
        problems.append(f"a traceback in the output ({raised[0].group(1) if raised else '?'})")
    server_errors = proc.matches(r"\] warning: .*\b5\d\d\b")  # the raw NUL: warn once
    if len(server_errors) != 1:
        problems.append(f"{len(server_errors)} warnings about the 5xx answers, not one")
    if not settled:
        problems.append(f"input queue not settled: {count(service, queues['input'])} left")
    for s in sent:
        if s.outcome == "poison" and not s.record.get("reason"):
            # Every record keeps its reason: one that would not fit in a message has its
            # body in a blob (claim-check), read back by poison_records.
            problems.append(f"{s.kind.name}: its poison record carries no reason")
        if s.outcome == "poison" and s.record.get("dequeue_count", 1) != 1:
            problems.append(
                f"{s.kind.name}: poisoned only after {s.record['dequeue_count']} deliveries "
                f"({s.record.get('reason')})"
            )
    leftovers = [*poison, *rejected, *output, *replies]
    if leftovers:
        problems.append(f"{len(leftovers)} record(s) that match no message sent")
    output_tail = "\n".join(line[:300] for line in proc.lines[-80:])
    assert not problems, "\n".join([*problems, "--- the script's last lines ---", output_tail])
