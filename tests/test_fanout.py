"""Fan-out, end to end: real Azurite, scripts run as subprocesses.

Every test uses its own --prefix, so it only ever sees its own subscriber queues."""

from __future__ import annotations

import json
import logging
import subprocess
import uuid

import pytest
from azure.core.exceptions import ServiceRequestError
from azure.storage.queue import QueueClient
from support import assert_refused, message_count, peek_bodies, run_script

from patterns.fanout import producer
from patterns.helper.connect import send_json

CONSUMER = "patterns.fanout.consumer"
PRODUCER = "patterns.fanout.producer"


@pytest.fixture
def prefix() -> str:
    return f"fo-{uuid.uuid4().hex[:10]}-"


@pytest.fixture
def subscribe(start, prefix):
    """subscribe("a") -> a running subscriber that has created its queue."""

    def _subscribe(name: str, *extra: str):
        proc = start(
            CONSUMER, "--subscriber", name, "--prefix", prefix, "--work-seconds", "0", *extra
        )
        proc.wait_for("subscribed: waiting for messages")
        return proc

    return _subscribe


def publish(env, prefix: str, *args: str) -> subprocess.CompletedProcess[str]:
    result = run_script(PRODUCER, "--prefix", prefix, *args, env=env)
    assert "Traceback" not in result.stdout + result.stderr
    return result


def published_id(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.split("] published ", 1)[1].split()[0]


def took(proc) -> list[str]:
    return [m.group(1) for m in proc.matches(r"\] took (\S+):")]


def test_three_subscribers_each_get_the_message_exactly_once(subscribe, env, service, prefix):
    subscribers = [subscribe(name) for name in ("a", "b", "c")]
    result = publish(env, prefix)
    order = published_id(result)
    assert f"published {order} to 3 subscriber(s)" in result.stdout
    for sub in subscribers:
        sub.wait_for(f"done {order}")
    assert [sub.stop() for sub in subscribers] == [0, 0, 0]
    assert [took(sub) for sub in subscribers] == [[order]] * 3
    for name in ("a", "b", "c"):
        assert message_count(service, prefix + name) == 0


def test_a_subscriber_started_later_gets_the_next_message(subscribe, env, prefix):
    first = [subscribe(name) for name in ("a", "b", "c")]
    one = published_id(publish(env, prefix))
    for sub in first:
        sub.wait_for(f"done {one}")

    late = subscribe("d")  # no producer change: its queue is found by the prefix
    two = published_id(publish(env, prefix))
    for sub in [*first, late]:
        sub.wait_for(f"done {two}")
    assert [took(sub) for sub in first] == [[one, two]] * 3
    assert took(late) == [two]


def test_a_stopped_subscriber_gets_on_restart_what_was_sent_meanwhile(
    subscribe, env, service, prefix
):
    a, b = subscribe("a"), subscribe("b")
    assert b.stop() == 0  # its queue stays: a durable subscription
    order = published_id(publish(env, prefix, "--message", "sent while b was down"))
    a.wait_for(f"done {order}")
    assert [json.loads(body)["id"] for body in peek_bodies(service, prefix + "b")] == [order]

    b_again = subscribe("b")
    b_again.wait_for(f"took {order}: sent while b was down")
    b_again.wait_for(f"done {order}")
    assert b_again.stop() == 0  # after the delete that follows "done"
    assert took(b) == []
    assert message_count(service, prefix + "b") == 0


def test_same_id_sent_twice_is_processed_once_per_subscriber(subscribe, env, service, prefix):
    subscribers = [subscribe("a"), subscribe("b")]
    for _ in range(2):
        assert published_id(publish(env, prefix, "--id", "order-12345")) == "order-12345"
    for sub in subscribers:
        sub.wait_for("skipped order-12345: already processed")
    assert [sub.stop() for sub in subscribers] == [0, 0]
    for sub in subscribers:
        assert took(sub) == ["order-12345"]
        assert len(sub.matches("skipped order-12345")) == 1
        assert "processed 1 message(s), skipped 1 duplicate(s)" in sub.text
    assert [message_count(service, prefix + n) for n in ("a", "b")] == [0, 0]


def test_no_subscribers_exits_1_and_sends_nothing(env, service, prefix):
    result = publish(env, prefix)
    assert result.returncode == 1
    assert f"no subscriber queues named '{prefix}*'" in result.stdout
    assert "nobody would receive this message" in result.stdout
    assert list(service.list_queues(name_starts_with=prefix)) == []


def test_fixed_subscriber_list_creates_the_queues(env, service, prefix):
    order = published_id(publish(env, prefix, "--subscribers", "a,b"))
    for name in ("a", "b"):
        assert [json.loads(b)["id"] for b in peek_bodies(service, prefix + name)] == [order]


def test_poison_queue_is_not_a_subscriber_and_bad_messages_go_there(
    subscribe, env, service, prefix
):
    a = subscribe("a")
    inbox = service.get_queue_client(prefix + "a")
    inbox.send_message("this is not JSON")
    inbox.send_message("")
    inbox.send_message(json.dumps({"text": "no id"}))
    a.wait_for(rf"moved message .* to '{prefix}a-poison'", count=3)
    reasons = sorted(json.loads(b)["reason"] for b in peek_bodies(service, f"{prefix}a-poison"))
    assert reasons[0] == "empty message"
    assert reasons[1] == "id is missing"
    assert reasons[2].startswith("not JSON")

    result = publish(env, prefix)  # the poison queue shares the prefix but is skipped
    order = published_id(result)
    assert f"subscribers (found by prefix '{prefix}'): {prefix}a\n" in result.stdout
    a.wait_for(f"done {order}")  # still consuming
    assert a.stop() == 0


def test_unsubscribe_deletes_the_queue_on_exit(subscribe, service, prefix):
    a = subscribe("a", "--unsubscribe")
    assert [q.name for q in service.list_queues(name_starts_with=prefix)] == [prefix + "a"]
    assert a.stop() == 0
    assert f"unsubscribed: deleted queue '{prefix}a'" in a.text
    assert list(service.list_queues(name_starts_with=prefix)) == []


@pytest.mark.parametrize(
    ("module", "args", "shown"),
    [
        (CONSUMER, ["--subscriber", "Bad_Name"], "invalid queue name 'fanout-queue-Bad_Name'"),
        (CONSUMER, ["--subscriber", "a-poison"], "invalid subscriber name 'a-poison'"),
        (CONSUMER, ["--subscriber", "a", "--prefix", "X_"], "invalid queue name 'X_a'"),
        (PRODUCER, ["--subscribers", "a,Bad"], "invalid queue name 'fanout-queue-Bad'"),
    ],
)
def test_invalid_names_are_refused_with_one_line_and_exit_2(env, module, args, shown):
    assert_refused(run_script(module, *args, env=env), shown)


@pytest.mark.parametrize("failures", [1, 99])
def test_failed_sends_are_retried_then_named(service, prefix, failures, caplog):
    """The producer's fan_out with a real emulator and the send to subscriber b failing
    `failures` times: a transient failure is retried away; a lasting one is reported by queue
    name (with how to complete the job), b's copy missing."""
    queues = [service.create_queue(prefix + name) for name in ("a", "b")]
    left = [failures]

    def flaky_send(queue: QueueClient, body: dict[str, str]) -> object:
        if queue.queue_name == prefix + "b" and left[0] > 0:
            left[0] -= 1
            raise ServiceRequestError("connection reset")
        return send_json(queue, body)

    caplog.set_level(logging.INFO)
    log = logging.getLogger("test-fan-out")
    missing = producer.fan_out(queues, {"id": "order-1", "text": "hi"}, flaky_send, 2, log)

    lines = caplog.messages
    a_ids = [json.loads(b)["id"] for b in peek_bodies(service, prefix + "a")]
    b_ids = [json.loads(b)["id"] for b in peek_bodies(service, prefix + "b")]
    assert f"retry 1 of 2 for: {prefix}b" in lines
    if failures == 1:
        assert missing == []
        assert (a_ids, b_ids) == (["order-1"], ["order-1"])
    else:
        assert missing == [prefix + "b"]
        assert (a_ids, b_ids) == (["order-1"], [])
        assert lines[-1].startswith(f"order-1 did NOT reach 1 of 2 subscriber(s): {prefix}b.")
        assert "Re-run with --id order-1" in lines[-1]


def test_ids_must_be_non_empty_strings_and_are_never_duplicates_of_each_other(
    subscribe, service, prefix
):
    """Two messages without an id (or with a null one) are not the same
    message, and 7 is not "7": only a non-empty string is an id; the rest go to poison."""
    a = subscribe("a")
    inbox = service.get_queue_client(prefix + "a")
    bad = [{"text": "one"}, {"text": "two"}, {"id": None}, {"id": None}, {"id": 7}, {"id": ""}]
    for body in [*bad, {"id": "7", "text": "the string"}]:
        inbox.send_message(json.dumps(body))
    a.wait_for("done 7")
    a.wait_for(rf"moved message .* to '{prefix}a-poison'", count=len(bad))
    assert not a.matches("skipped"), "no message without an id is anyone's duplicate"
    poisoned = [json.loads(b) for b in peek_bodies(service, f"{prefix}a-poison")]
    assert sorted(p["body"] for p in poisoned) == sorted(json.dumps(body) for body in bad)
    assert {p["reason"].split(",")[0] for p in poisoned} == {
        "id is missing",
        "id must be a non-empty string of printable characters",
    }
    assert a.stop() == 0
    assert "processed 1 message(s), skipped 0 duplicate(s)" in a.text


def test_a_message_too_big_is_refused_by_the_producer_with_one_line(env, service, prefix):
    """What a consumer would poison at once, a producer refuses before sending: one line,
    exit 2."""
    result = publish(env, prefix, "--subscribers", "a", "--message", "x" * 70_000)
    assert_refused(result, "a queue message can hold at most 64 KiB")
    assert message_count(service, prefix + "a") == 0


def test_no_subscriber_hint_is_a_command_that_subscribes_under_the_prefix_in_use(
    start, env, prefix
):
    result = publish(env, prefix)
    assert result.returncode == 1
    hint = result.stdout.split("Start a subscriber first: ", 1)[1].strip()
    assert hint == f"python patterns/fanout/consumer.py --prefix {prefix} --subscriber a"
    words = hint.split()
    subscriber = start(words[1].removesuffix(".py").replace("/", "."), *words[2:])
    subscriber.wait_for("subscribed: waiting for messages")
    assert published_id(publish(env, prefix))  # the hinted subscriber is found: exit 0
    subscriber.wait_for(r"\] took msg-")
