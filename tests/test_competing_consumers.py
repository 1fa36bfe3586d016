"""Competing consumers, end to end: real Azurite, scripts run as subprocesses."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from collections import Counter
from datetime import datetime, timedelta

import pytest
from azure.storage.queue import QueueClient
from support import (
    assert_refused,
    env_for,
    ids_logged,
    log_seconds,
    message_count,
    peek_bodies,
    requests_logged,
    run_script,
    send,
    wait_until,
)

from patterns.emulator import Azurite
from patterns.helper import consume
from patterns.helper.support.settings import CONNECTION_STRING_VAR
from patterns.runner import Proc

CONSUMER = "patterns.competing_consumers.consumer"
PRODUCER = "patterns.competing_consumers.producer"


def test_three_consumers_share_twenty_tasks_each_once(start, env, service, qname):
    consumers = [start(CONSUMER, "--queue", qname, "--work-seconds", "0.2") for _ in range(3)]
    for consumer in consumers:
        consumer.wait_for("waiting for tasks")
    producer = run_script(PRODUCER, "--queue", qname, "--count", "20", env=env)
    assert producer.returncode == 0, producer.stderr
    sent = [
        line.rsplit(" ", 1)[1] for line in producer.stdout.splitlines() if "] sent task-" in line
    ]
    assert len(set(sent)) == 20

    wait_until(lambda: sum(len(ids_logged(c, "done")) for c in consumers) >= 20, 30, "all done")
    exits = [c.stop() for c in consumers]

    done = Counter(task for c in consumers for task in ids_logged(c, "done"))
    assert sorted(done) == sorted(sent)
    assert max(done.values()) == 1, "a task was processed twice"
    assert sum(1 for c in consumers if ids_logged(c, "done")) > 1, "one consumer did all the work"
    assert exits == [0, 0, 0]
    assert message_count(service, qname) == 0


def test_kill_9_mid_task_hands_it_to_another_consumer(start, service, qname):
    first = start(CONSUMER, "--queue", qname, "--work-seconds", "60", "--visibility-timeout", "2")
    first.wait_for("waiting for tasks")
    send(service, qname, {"id": "survivor"})
    first.wait_for("took survivor")
    first.send_signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL

    second = start(CONSUMER, "--queue", qname, "--work-seconds", "0.1", "--visibility-timeout", "2")
    second.wait_for("done survivor", timeout=15)
    assert second.stop() == 0
    assert message_count(service, qname) == 0


def test_ctrl_c_mid_task_releases_it_at_once_and_exits_0(start, service, qname):
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "60", "--visibility-timeout", "60"
    )
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "long-task"})
    consumer.wait_for("took long-task")
    assert peek_bodies(service, qname) == []  # hidden while the consumer holds it

    pressed = time.monotonic()
    consumer.send_signal(signal.SIGINT)
    assert consumer.wait(10) == 0
    while not peek_bodies(service, qname) and time.monotonic() - pressed < 10:
        time.sleep(0.1)
    assert [json.loads(b)["id"] for b in peek_bodies(service, qname)] == ["long-task"]
    assert time.monotonic() - pressed < 10, "released long before the 60 s visibility timeout"
    assert "processed 0 task(s)" in consumer.text
    assert "Traceback" not in consumer.text


def test_ctrl_c_while_the_service_is_frozen_stops_within_seconds_and_says_so(tmp_path, qname):
    """Azurite paused (SIGSTOP): a consumer with a task in work (its lease renewal stuck on the
    frozen service) and an idle one (its receive stuck) both stop within a few seconds; the
    release that failed says when the task comes back. Nothing is lost."""
    emulator = Azurite(log_path=tmp_path / "azurite.log")  # our own: the session's runs on
    env = {**os.environ, CONNECTION_STRING_VAR: emulator.connection_string}
    with emulator:
        assert emulator.process is not None
        queue = QueueClient.from_connection_string(emulator.connection_string, qname)
        queue.create_queue()
        queue.send_message(json.dumps({"id": "held"}))
        flags = ["--queue", qname, "--work-seconds", "60", "--idle-max", "0.2"]
        working = Proc(CONSUMER, *flags, "--visibility-timeout", "2", env=env)  # renews each 1 s
        idle = Proc(CONSUMER, *flags, "--queue", f"{qname}-idle", env=env)
        paused = False
        try:
            working.wait_for("took held")
            idle.wait_for("waiting for tasks")
            os.kill(emulator.process.pid, signal.SIGSTOP)
            paused = True
            time.sleep(1.5)  # a renewal and a receive are now under way, and get no answer
            pressed = time.monotonic()
            working.send_signal(signal.SIGINT)
            idle.send_signal(signal.SIGINT)
            assert idle.wait(10) == 0
            idle_took = time.monotonic() - pressed
            assert working.wait(20) == 0
            working_took = time.monotonic() - pressed
            os.kill(emulator.process.pid, signal.SIGCONT)
            paused = False
        finally:
            if paused:
                os.kill(emulator.process.pid, signal.SIGCONT)
            working.kill()
            idle.kill()
        print(f"stopped after {working_took:.1f} s (task in work), {idle_took:.1f} s (idle)")
        assert working_took < 7, f"{working_took:.1f} s with a task in work"
        assert idle_took < 4, f"{idle_took:.1f} s while idle"
        assert working.matches(
            r"warning: could not release message \S+ \(id held\): service unreachable; it "
            r"comes back within 2 s, when its visibility timeout ends$"
        ), working.text
        assert working.text.endswith("stopped: processed 0 task(s)")
        assert idle.text.endswith("stopped: processed 0 task(s)")
        assert "Traceback" not in working.text + idle.text
        assert queue.get_queue_properties().approximate_message_count == 1  # nothing lost


def test_failing_and_malformed_tasks_go_to_poison_and_the_consumer_goes_on(start, service, qname):
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "0",
        "--visibility-timeout", "1", "--max-attempts", "3",
    )  # fmt: skip
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "always-fails", "fail": True})
    send(service, qname, "this is not JSON")
    send(service, qname, {"id": "fine"})
    consumer.wait_for("done fine")
    consumer.wait_for(r"moved message .* to '.*-poison'", count=2, timeout=20)

    poisoned = [json.loads(b) for b in peek_bodies(service, f"{qname}-poison")]
    by_body = {p["body"]: p for p in poisoned}
    failing = by_body[json.dumps({"id": "always-fails", "fail": True})]
    assert failing["reason"].startswith("failed 3 times")
    assert "the task asked to fail" in failing["reason"]
    assert failing["dequeue_count"] == 3
    assert failing["source_queue"] == qname
    assert by_body["this is not JSON"]["reason"].startswith("not JSON")
    assert message_count(service, qname) == 0

    send(service, qname, {"id": "after-poison"})
    consumer.wait_for("done after-poison")  # still consuming
    assert consumer.stop() == 0


def test_task_longer_than_visibility_timeout_is_processed_once(start, service, qname):
    slow = start(CONSUMER, "--queue", qname, "--work-seconds", "5", "--visibility-timeout", "2")
    slow.wait_for("waiting for tasks")
    send(service, qname, {"id": "slow-task"})
    slow.wait_for("took slow-task")
    rival = start(CONSUMER, "--queue", qname, "--work-seconds", "0", "--visibility-timeout", "2")
    rival.wait_for("waiting for tasks")
    slow.wait_for("done slow-task", timeout=15)
    time.sleep(2.5)  # the window in which an expired lease would let the rival take it
    slow.stop()
    rival.stop()
    assert ids_logged(slow, "took") + ids_logged(rival, "took") == ["slow-task"]
    assert message_count(service, qname) == 0


def test_no_server_exits_2_quickly_with_one_line(env, azurite):
    from patterns.emulator import free_port
    from patterns.helper.support.settings import azurite_connection_string

    dead = {**env, "AZURE_STORAGE_CONNECTION_STRING": azurite_connection_string(free_port())}
    for module in (PRODUCER, CONSUMER):
        began = time.monotonic()
        result = run_script(module, env=dead, timeout=30)
        took = time.monotonic() - began
        assert result.returncode == 2, result
        assert took < 5, f"{module} took {took:.1f} s to give up"
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1, result.stderr
        assert "cannot reach the queue service" in errors[0]
        assert "make emulator" in errors[0]
        assert "Traceback" not in result.stdout + result.stderr


def test_idle_consumer_makes_about_one_request_per_second(start, azurite, qname):
    consumer = start(CONSUMER, "--queue", qname)
    consumer.wait_for("waiting for tasks")
    time.sleep(2)  # 0.1 + 0.2 + 0.4 + 0.8 s: the backoff reaches its 1 s ceiling
    before = len(requests_logged(azurite, qname))
    time.sleep(5)
    polls = len(requests_logged(azurite, qname)) - before
    assert 3 <= polls <= 7, f"{polls} receive requests in 5 s"
    assert consumer.stop() == 0


def test_bad_queue_name_and_bad_connection_string_are_one_line_exit_2(env):
    assert_refused(
        run_script(CONSUMER, "--queue", "Bad_Name", env=env), "invalid queue name 'Bad_Name'"
    )

    broken = {**env, "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=c2VjcmV0;nonsense"}
    result = run_script(PRODUCER, env=broken)
    assert_refused(result, "not a valid connection string")
    assert "c2VjcmV0" not in result.stderr  # the key is redacted


def test_consumer_rides_out_an_emulator_restart(disk_azurite, start, qname):
    """A transient outage while running: warn, back off, carry on when the service is back."""
    emulator = disk_azurite
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=env_for(emulator))
    consumer.wait_for("waiting for tasks")
    emulator.stop()
    consumer.wait_for("cannot reach the queue service", timeout=15)
    emulator.start()  # same port, same data folder
    client = QueueClient.from_connection_string(emulator.connection_string, qname)
    client.send_message(json.dumps({"id": "after-restart"}))
    consumer.wait_for("the queue service answers again", timeout=20)
    consumer.wait_for("done after-restart", timeout=20)
    assert consumer.stop() == 0
    assert "Traceback" not in consumer.text


def test_messages_that_cannot_succeed_go_to_poison_at_once(start, service, qname):
    """Retrying cannot help a body nested 30,000 deep or an id of the wrong
    type, so they are poisoned on their first delivery, with the reason, not after 5."""
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "0",
        "--visibility-timeout", "1", "--max-attempts", "5",
    )  # fmt: skip
    consumer.wait_for("waiting for tasks")
    deep = '{"id": "deep", "x": ' + "[" * 30_000 + "]" * 30_000 + "}"
    send(service, qname, deep)
    send(service, qname, {"id": 7})
    send(service, qname, {"id": ["task-1"]})
    send(service, qname, {"id": "fine"})
    consumer.wait_for("done fine")
    consumer.wait_for(r"moved message .* to '.*-poison'", count=3)

    records = {p["body"][:20]: p for p in map(json.loads, peek_bodies(service, f"{qname}-poison"))}
    assert records[deep[:20]]["reason"] == "JSON nested too deeply to read"
    assert records['{"id": 7}']["reason"].startswith("id must be a non-empty string")
    assert records['{"id": ["task-1"]}']["reason"].endswith('got ["task-1"]')
    assert [r["dequeue_count"] for r in records.values()] == [1, 1, 1]
    assert not consumer.matches("attempt 1 of 5 failed")
    # "done fine" is logged before its delete: wait for the delete, don't race it.
    wait_until(lambda: message_count(service, qname) == 0, 10, f"'{qname}' empty")
    assert consumer.stop() == 0


def test_log_lines_name_the_application_id_beside_the_message_id(start, service, qname):
    """Release, failed attempt and poison lines show the task's own id."""
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "60",
        "--visibility-timeout", "1", "--max-attempts", "2",
    )  # fmt: skip
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "fails-twice", "fail": True})
    consumer.wait_for(
        r"attempt 1 of 2 failed for message [0-9a-f-]+ \(id fails-twice\): "
        r"RuntimeError: the task asked to fail; next attempt in 1 s"
    )
    consumer.wait_for(
        rf"moved message [0-9a-f-]+ \(id fails-twice\) to '{qname}-poison': failed 2 times"
    )
    send(service, qname, {"id": "held"})
    consumer.wait_for("took held")
    consumer.send_signal(signal.SIGINT)
    assert consumer.wait(10) == 0
    assert consumer.matches(rf"released message [0-9a-f-]+ \(id held\) back to '{qname}'")


def test_a_message_the_service_cannot_hand_out_is_reported_once(start, azurite, service, qname):
    """A raw \\x00 (sent by a plain SDK client, not by our scripts) is stored
    by Azurite, but every receive that takes it answers 500: the message is hidden and its
    dequeue count goes up, yet the answer carrying it fails, so no one gets its pop receipt
    and it can be neither processed nor deleted. The consumer warns once and goes on."""
    service.create_queue(qname)
    send(service, qname, '{"id": "raw-\x00"}')
    for n in range(3):  # taken in the same batch as the bad one, they fail with it at first
        send(service, qname, {"id": f"beside-{n}"})
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "0",
        "--visibility-timeout", "1", "--batch-size", "32",
    )  # fmt: skip
    consumer.wait_for("a receive from .* got 500 .* cannot hand out", timeout=20)
    for n in range(3):
        consumer.wait_for(f"done beside-{n}", timeout=20)

    def failed_receives() -> int:
        log = requests_logged(azurite, qname)
        return sum(1 for line in log if f"/{qname}/messages?" in line and '" 500 ' in line)

    # It keeps coming back (every visibility timeout).
    wait_until(lambda: failed_receives() >= 3, 20, "the message came back")
    send(service, qname, {"id": "still-served"})
    consumer.wait_for("done still-served")
    assert len(consumer.matches("cannot hand out")) == 1, "warned once"
    assert consumer.matches(r"\(warned once\)$")
    assert consumer.stop() == 0
    assert "Traceback" not in consumer.text


# --- the bare consumer: the SDK alone ---------------------------------------------------------

BARE = "patterns.competing_consumers.consumer_bare"


def start_bare(start, env, tmp_path, qname, **constants):
    """consumer_bare.py with its constants changed, as a learner would edit them."""
    edited = tmp_path / "bare_edited.py"
    sets = "".join(f"bare.{name} = {value!r}\n" for name, value in constants.items())
    edited.write_text(f"import {BARE} as bare\n{sets}raise SystemExit(bare.main())\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    bare = start("bare_edited", "--queue", qname, label="bare", env_={**env, "PYTHONPATH": path})
    bare.wait_for("waiting for tasks")
    return bare


def test_bare_consumer_does_the_producers_tasks_and_poisons_one_after_n_deliveries(
    start, env, service, qname, tmp_path
):
    bare = start_bare(start, env, tmp_path, qname, VISIBILITY_TIMEOUT=1, MAX_ATTEMPTS=3,
                      WORK_SECONDS=0)  # fmt: skip
    producer = run_script(PRODUCER, "--queue", qname, "--count", "4", "--failing", "1", env=env)
    assert producer.returncode == 0, producer.stderr
    sent = [
        line.rsplit(" ", 1)[1] for line in producer.stdout.splitlines() if "] sent task-" in line
    ]
    failing = sent[0]  # --failing 1: the first task asks to fail

    bare.wait_for(rf"moved message \S+ to '{qname}-poison'", timeout=30)
    bare.wait_for(r"\] done task-", count=3)
    assert bare.stop() == 0
    assert sorted(ids_logged(bare, "done")) == sorted(sent[1:])
    attempts = [m.group(1) for m in bare.matches(rf"took {failing} \(attempt (\d+)\)")]
    assert attempts == ["1", "2", "3"]  # delivered 3 times, worked 3 times, then set aside
    assert [json.loads(body)["id"] for body in peek_bodies(service, f"{qname}-poison")] == [failing]
    assert message_count(service, qname) == 0  # 3 done + 1 in poison: nothing lost
    assert "stopped" in bare.text and "Traceback" not in bare.text


def test_bare_consumer_ctrl_c_loses_nothing_and_an_idle_one_polls_once_a_second(
    start, env, azurite, service, qname, tmp_path
):
    bare = start_bare(start, env, tmp_path, qname, VISIBILITY_TIMEOUT=2, WORK_SECONDS=60)
    before = len(requests_logged(azurite, qname))
    time.sleep(3)
    polls = len(requests_logged(azurite, qname)) - before
    assert 1 <= polls <= 5, f"{polls} receive requests in 3 s"  # never a hot loop
    send(service, qname, {"id": "long-task"})
    bare.wait_for("took long-task")
    bare.send_signal(signal.SIGINT)
    assert bare.wait(10) == 0
    assert "Traceback" not in bare.text
    assert message_count(service, qname) == 1  # not deleted: hidden until its timeout ends
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    consumer.wait_for("done long-task")  # it came back, and the helper's consumer did it
    assert consumer.stop() == 0


def test_a_failing_task_is_retried_after_a_growing_backoff_then_poisoned(start, service, qname):
    """Attempts 1-5 of an always-failing task come 1, 2, 4, 8 s apart (the default backoff),
    not a 30 s visibility timeout apart: poisoned in about 15 s instead of 2 minutes."""
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", "--idle-max", "0.2")
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "always-fails", "fail": True})
    for attempt, wait in enumerate([1, 2, 4, 8], start=1):
        consumer.wait_for(
            rf"attempt {attempt} of 5 failed for message \S+ \(id always-fails\): "
            rf"RuntimeError: the task asked to fail; next attempt in {wait} s",
            timeout=20,
        )
    consumer.wait_for(rf"moved message \S+ \(id always-fails\) to '{qname}-poison'", timeout=20)

    taken = [
        datetime.strptime(m.group(1), "%H:%M:%S.%f")
        for m in consumer.matches(r"(\d\d:\d\d:\d\d\.\d{3}) consumer\[\d+\] took always-fails")
    ]
    assert len(taken) == 5
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(taken)]
    print("gaps between attempts (s):", gaps)
    # The rule, not a ratio (a busy machine makes any attempt late): no attempt before its
    # backoff is over (the service's clock counts whole seconds: 0.5 s of slack), and each one
    # back before the 30 s visibility timeout would have brought it (the backoff, not that).
    for gap, wait in zip(gaps, [1, 2, 4, 8], strict=True):
        assert wait - 0.5 <= gap < consume.VISIBILITY_TIMEOUT, gaps
    assert message_count(service, qname) == 0
    assert consumer.stop() == 0


def test_delayed_tasks_are_not_received_before_their_delay_and_are_after(start, env, qname):
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", "--idle-max", "0.2")
    consumer.wait_for("waiting for tasks")
    sent_at = time.monotonic()
    producer = run_script(PRODUCER, "--queue", qname, "--count", "2", "--delay", "4", env=env)
    assert producer.returncode == 0, producer.stderr
    # Both become visible at about the same moment, in either order: wait for the first one.
    consumer.wait_for(r"done task-00[12]", timeout=20)
    waited = time.monotonic() - sent_at
    assert waited >= 3.5, f"received after {waited:.1f} s, before the 4 s delay"
    consumer.wait_for(r"done task-00[12]", timeout=10, count=2)
    assert len(ids_logged(consumer, "done")) == 2
    code = consumer.stop()
    assert code == 0, consumer.text


def test_a_delay_must_end_before_the_message_expires(service, qname):
    from patterns.helper import Fatal, connect

    queue = service.get_queue_client(qname)
    with pytest.raises(Fatal, match=r"delay of 60 s must be shorter than .* time to live \(60 s\)"):
        connect.send_json(queue, {"id": "late"}, time_to_live=60, delay=60)


def test_a_delayed_task_lives_its_delay_plus_the_usual_7_days(env, service, qname):
    """A time to live runs from the send, the delay included: with the default 7 days, a task
    delayed 7 days would expire the second it became visible. It gets its delay on top."""
    from patterns.helper import connect

    producer = run_script(PRODUCER, "--queue", qname, "--count", "1", "--delay", "2", env=env)
    assert producer.returncode == 0, producer.stderr
    wait_until(lambda: peek_bodies(service, qname) != [], 10, "the task is due")
    (due,) = service.get_queue_client(qname).peek_messages()
    assert due.expires_on - due.inserted_on == timedelta(days=7, seconds=2)

    week = connect.send_json(service.get_queue_client(qname), {"id": "next-week"}, delay=604800)
    assert week.expires_on - week.next_visible_on == timedelta(days=7)


def test_a_retry_that_would_come_after_the_message_expires_poisons_it_instead(
    start, service, qname
):
    """A backoff past the message's expiry (here 120 s for a message that lives 60 s) would
    let a failing task expire unseen: it goes to poison instead, saying why."""
    service.create_queue(qname)
    send(service, qname, {"id": "short-lived", "fail": True}, time_to_live=60)
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "0", "--retry-backoff", "120",
        "--retry-backoff-max", "604800",
    )  # fmt: skip
    consumer.wait_for(
        rf"moved message \S+ \(id short-lived\) to '{qname}-poison': attempt 1 of 5 failed, "
        r"and the next \(in 120 s\) would come after the message expires at "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC; last: RuntimeError: the task asked to fail$"
    )
    assert consumer.stop() == 0
    (record,) = service.get_queue_client(f"{qname}-poison").peek_messages()
    assert json.loads(json.loads(record.content)["body"]) == {"id": "short-lived", "fail": True}
    assert message_count(service, qname) == 0


# --- --concurrency: several tasks at once in one consumer -------------------------------------


def took_and_done(consumer) -> list[tuple[float, str, str]]:
    """(time, 'took' or 'done', task id) for each such line, in the order logged."""
    found = consumer.matches(r"(\d\d:\d\d:\d\d\.\d{3}) consumer\[\d+\] (took|done) (\S+)")
    return [(log_seconds(m.group(1)), m.group(2), m.group(3)) for m in found]


def test_concurrency_4_works_on_4_tasks_at_once_each_done_once(start, env, azurite, service, qname):
    producer = run_script(PRODUCER, "--queue", qname, "--count", "8", env=env)
    assert producer.returncode == 0, producer.stderr
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "1", "--concurrency", "4",
        "--batch-size", "32",
    )  # fmt: skip
    consumer.wait_for("waiting for tasks on .*, 4 at a time")
    held = []  # messages hidden from others (in this consumer's hands), seen from outside
    while len(ids_logged(consumer, "done")) < 8:
        visible = len(peek_bodies(service, qname))  # peek first: never over-counts held
        held.append(message_count(service, qname) - visible)
        consumer.wait_for(r"\] done ", timeout=20, count=1)  # fails if the consumer died
        time.sleep(0.05)
    assert consumer.stop() == 0

    events = took_and_done(consumer)
    first_done = next(i for i, (_, what, _) in enumerate(events) if what == "done")
    assert first_done >= 4, f"fewer than 4 tasks were in work at once: {events}"
    done = Counter(task for _, what, task in events if what == "done")
    assert sorted(done) == sorted(ids_logged(consumer, "took"))
    assert len(done) == 8 and max(done.values()) == 1, done
    took = events[-1][0] - events[0][0]
    print(f"8 tasks x 1 s at --concurrency 4: {took:.2f} s from first took to last done")
    in_work = list(itertools.accumulate(1 if what == "took" else -1 for _, what, _ in events))
    assert max(in_work) == 4, f"in work at once, by the log: {in_work}"  # the rule, not a time
    assert max(held) <= 4, f"held {max(held)} messages with 4 workers"
    receives = [line for line in requests_logged(azurite, qname) if "peekonly" not in line]
    asked = [int(n) for line in receives for n in re.findall(r"numofmessages=(\d+)", line)]
    assert asked and max(asked) <= 4, f"receives asked for {asked} (--batch-size 32, 4 workers)"
    assert message_count(service, qname) == 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_concurrency_stop_mid_work_releases_every_task_in_work_at_once(
    start, service, qname, signum
):
    service.create_queue(qname)
    for n in range(6):
        send(service, qname, {"id": f"long-{n}"})
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "60", "--visibility-timeout", "60",
        "--concurrency", "4", "--batch-size", "32",
    )  # fmt: skip
    consumer.wait_for(r"\] took long-", count=4)
    wait_until(lambda: len(peek_bodies(service, qname)) == 2, 10, "4 held, 2 left visible")

    pressed = time.monotonic()
    consumer.send_signal(signum)
    assert consumer.wait(10) == 0
    wait_until(lambda: len(peek_bodies(service, qname)) == 6, 5, "all 6 visible again")
    assert time.monotonic() - pressed < 10, "released long before the 60 s visibility timeout"
    released = consumer.matches(rf"released message \S+ \(id (long-\d)\) back to '{qname}'")
    assert sorted(m.group(1) for m in released) == sorted(ids_logged(consumer, "took"))
    assert len(released) == 4
    assert "processed 0 task(s)" in consumer.text and "Traceback" not in consumer.text

    other = start(CONSUMER, "--queue", qname, "--work-seconds", "0", "--concurrency", "3")
    other.wait_for(r"\] done long-", count=6, timeout=10)  # not after a 60 s lease
    assert other.stop() == 0
    assert sorted(ids_logged(other, "done")) == [f"long-{n}" for n in range(6)]


def test_concurrency_failing_tasks_still_retry_and_poison_beside_good_ones(start, service, qname):
    consumer = start(
        CONSUMER, "--queue", qname, "--work-seconds", "0.5", "--concurrency", "4",
        "--max-attempts", "2", "--idle-max", "0.2",
    )  # fmt: skip
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "fails-a", "fail": True})
    send(service, qname, {"id": "fails-b", "fail": True})
    send(service, qname, "not JSON")
    for n in range(5):
        send(service, qname, {"id": f"good-{n}"})
    consumer.wait_for(r"\] done good-", count=5)
    consumer.wait_for(rf"moved message .* to '{qname}-poison'", count=3, timeout=20)
    for task in ("fails-a", "fails-b"):
        assert consumer.matches(rf"attempt 1 of 2 failed for message \S+ \(id {task}\)")
    wait_until(lambda: message_count(service, qname) == 0, 10, f"'{qname}' empty")
    assert consumer.stop() == 0

    records = [json.loads(b) for b in peek_bodies(service, f"{qname}-poison")]
    reasons = {r["body"]: r["reason"] for r in records}
    assert len(records) == 3
    assert reasons[json.dumps({"id": "fails-a", "fail": True})].startswith("failed 2 times")
    assert reasons[json.dumps({"id": "fails-b", "fail": True})].startswith("failed 2 times")
    assert reasons["not JSON"].startswith("not JSON")
    assert Counter(ids_logged(consumer, "done")) == Counter(f"good-{n}" for n in range(5))
    assert consumer.text.count(f"created queue '{qname}-poison'") == 1


def test_concurrency_keeps_every_task_in_work_hidden_past_its_visibility_timeout(
    start, service, qname
):
    """Three tasks of 4 s at once, a 2 s visibility timeout, a rival consumer waiting: the
    keeper renews all three leases, so each task is taken once."""
    slow = start(
        CONSUMER, "--queue", qname, "--work-seconds", "4", "--visibility-timeout", "2",
        "--concurrency", "3",
    )  # fmt: skip
    slow.wait_for("waiting for tasks")
    for n in range(3):
        send(service, qname, {"id": f"slow-{n}"})
    slow.wait_for(r"\] took slow-", count=3)
    rival = start(CONSUMER, "--queue", qname, "--work-seconds", "0", "--visibility-timeout", "2")
    rival.wait_for("waiting for tasks")
    slow.wait_for(r"\] done slow-", count=3, timeout=20)
    time.sleep(2.5)  # the window in which an expired lease would let the rival take one
    assert [slow.stop(), rival.stop()] == [0, 0]
    assert sorted(ids_logged(slow, "took")) == [f"slow-{n}" for n in range(3)]
    assert ids_logged(rival, "took") == []
    assert message_count(service, qname) == 0
