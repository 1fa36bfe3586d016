"""Priority queue, end to end: real Azurite, scripts run as subprocesses.

Every test uses its own --prefix, so its three queues are its own."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter

import pytest
from support import assert_refused, message_count, peek_bodies, run_script, send, wait_until

CONSUMER = "patterns.priority.consumer"
PRODUCER = "patterns.priority.producer"


@pytest.fixture
def prefix() -> str:
    return f"pq-{uuid.uuid4().hex[:10]}"


def produce(env, prefix: str, *args: str) -> list[str]:
    """Run the producer; the ids it sent, in order."""
    result = run_script(PRODUCER, "--prefix", prefix, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [
        line.split("] sent ")[1].split()[0]
        for line in result.stdout.splitlines()
        if "] sent task-" in line
    ]


def put(service, prefix: str, level: str, task_id: str) -> None:
    """Send one task straight to a level's queue (faster than starting the producer)."""
    send(service, f"{prefix}-{level}-priority", {"id": task_id, "text": task_id})


def create_levels(service, prefix: str) -> None:
    """The three queues, so tasks can be put in before any script has run."""
    for level in ("high", "normal", "low"):
        service.create_queue(f"{prefix}-{level}-priority")


def taken(proc) -> list[tuple[str, str]]:
    """(level, id) of each task the consumer took, in order."""
    return [(m.group(2), m.group(1)) for m in proc.matches(r"\] took (\S+) from (\w+):")]


def consumer(start, prefix: str, *args: str, work: str = "0"):
    proc = start(CONSUMER, "--prefix", prefix, "--work-seconds", work, *args)
    proc.wait_for("waiting for tasks")
    return proc


def test_high_tasks_sent_while_busy_go_before_the_next_normal_and_low_goes_last(
    start, env, service, prefix
):
    normal = produce(env, prefix, "--priority", "normal", "--count", "2")
    low = produce(env, prefix, "--priority", "low", "--count", "2")
    worker = consumer(start, prefix, work="0.5")
    worker.wait_for(rf"took {normal[0]} from normal")  # busy for 1 s with the first normal task
    for n in range(3):
        put(service, prefix, "high", f"urgent-{n}")
    assert not worker.matches(r"\] done "), "the urgent tasks must arrive while it is busy"

    worker.wait_for(r"\] done ", count=7, timeout=30)
    assert worker.stop() == 0
    assert taken(worker) == [
        ("normal", normal[0]),
        ("high", "urgent-0"),
        ("high", "urgent-1"),
        ("high", "urgent-2"),
        ("normal", normal[1]),
        ("low", low[0]),
        ("low", low[1]),
    ]
    assert "processed 7 task(s) (high 3, normal 2, low 2)" in worker.text


def test_low_is_taken_only_when_high_and_normal_are_empty(start, service, env, prefix):
    low = produce(env, prefix, "--priority", "low", "--count", "2")
    worker = consumer(start, prefix, work="0.5")
    worker.wait_for(rf"took {low[0]} from low")
    put(service, prefix, "normal", "normal-1")
    put(service, prefix, "high", "high-1")
    assert not worker.matches(r"\] done ")

    worker.wait_for(r"\] done ", count=4, timeout=30)
    assert [level for level, _ in taken(worker)] == ["low", "high", "normal", "low"]


def test_starvation_guard_lets_one_lower_task_through_after_n_high(start, env, prefix):
    high = produce(env, prefix, "--priority", "high", "--count", "5")
    normal = produce(env, prefix, "--priority", "normal", "--count", "2")
    worker = consumer(start, prefix, "--starvation-guard", "2")
    worker.wait_for(r"\] done ", count=7)
    assert taken(worker) == [
        ("high", high[0]),
        ("high", high[1]),
        ("normal", normal[0]),
        ("high", high[2]),
        ("high", high[3]),
        ("normal", normal[1]),
        ("high", high[4]),
    ]


def test_the_original_scenario_with_two_consumers_each_task_once(start, env, service, prefix):
    workers = [consumer(start, prefix, work="0.2") for _ in range(2)]
    sent = produce(env, prefix)  # 5 normal, 2 urgent, 5 normal
    assert len(sent) == 12
    wait_until(lambda: sum(len(w.matches(r"\] done ")) for w in workers) >= 12, 30, "all done")
    assert [w.stop() for w in workers] == [0, 0]
    done = Counter(m.group(1) for w in workers for m in w.matches(r"\] done (\S+)"))
    assert sorted(done) == sorted(sent)
    assert set(done.values()) == {1}
    for level in ("high", "normal", "low"):
        assert message_count(service, f"{prefix}-{level}-priority") == 0


def test_bad_messages_go_to_poison_and_the_consumer_goes_on(start, service, prefix):
    worker = consumer(start, prefix)
    high = service.get_queue_client(f"{prefix}-high-priority")
    high.send_message("this is not JSON")
    high.send_message("")
    worker.wait_for(rf"moved message .* to '{prefix}-high-priority-poison'", count=2)
    poisoned = [json.loads(b) for b in peek_bodies(service, f"{prefix}-high-priority-poison")]
    assert sorted(p["body"] for p in poisoned) == ["", "this is not JSON"]
    assert {p["source_queue"] for p in poisoned} == {f"{prefix}-high-priority"}

    put(service, prefix, "normal", "after-poison")
    worker.wait_for("done after-poison")
    assert worker.stop() == 0


@pytest.mark.parametrize(
    ("module", "args", "shown"),
    [
        (CONSUMER, ["--levels", "high,urgent"], "argument --levels: list some of high, normal"),
        (CONSUMER, ["--prefix", "Bad_"], "invalid queue name 'Bad_-high-priority"),
        (PRODUCER, ["--prefix", "Bad_"], "invalid queue name 'Bad_-high-priority"),
    ],
)
def test_invalid_levels_and_names_are_refused_with_one_line_and_exit_2(env, module, args, shown):
    assert_refused(run_script(module, *args, env=env), shown)


def test_the_readme_try_this_an_urgent_task_typed_seconds_later_still_overtakes(start, env, prefix):
    """README 'Try this': ten 1-second low tasks, then - at human speed, seconds later - an
    urgent one, which is taken ahead of the low tasks still waiting."""
    worker = consumer(start, prefix, work="1")  # the README's consumer: 1 s per task
    low = produce(env, prefix, "--priority", "low", "--message", "Rebuild search index",
                  "--count", "10")  # fmt: skip
    worker.wait_for(rf"took {low[0]} from low")
    time.sleep(3)  # a human typing the second command (the lesson is this delay)
    [urgent] = produce(env, prefix, "--priority", "high", "--message", "URGENT: Payment failed")
    worker.wait_for(rf"done {urgent}", timeout=10)
    order = [task_id for _, task_id in taken(worker)]
    first_lows = order.index(urgent)  # the low tasks done before it arrived, in order
    assert order == [*low[:first_lows], urgent]
    assert first_lows < len(low), "low tasks must still be waiting behind the urgent one"
    assert worker.stop() == 0


def test_ageing_serves_a_task_that_waited_too_long_as_if_one_level_higher(start, service, prefix):
    """--age-after 6: a normal task that has waited 8 s goes before fresh high tasks, and a low
    one that waited as long goes before a fresh normal one; fresh tasks keep their order (for
    the 6 s a consumer may take to start on a busy machine)."""
    create_levels(service, prefix)
    put(service, prefix, "normal", "old-normal")
    put(service, prefix, "low", "old-low")
    time.sleep(8)  # the lesson is time passing: these two are now older than --age-after
    for task_id in ("new-high-1", "new-high-2"):
        put(service, prefix, "high", task_id)
    put(service, prefix, "normal", "new-normal")
    worker = consumer(start, prefix, "--age-after", "6")
    worker.wait_for(r"\] done ", count=5)
    assert worker.stop() == 0
    assert taken(worker) == [
        ("normal", "old-normal"),
        ("high", "new-high-1"),
        ("high", "new-high-2"),
        ("low", "old-low"),
        ("normal", "new-normal"),
    ]
    [line] = worker.matches(r"took old-normal from normal: old-normal \(waited (\d+) s\)$")
    assert int(line.group(1)) >= 5


def test_without_ageing_strict_priority_holds_however_long_a_task_waited(start, service, prefix):
    create_levels(service, prefix)
    put(service, prefix, "normal", "old-normal")
    time.sleep(2)
    put(service, prefix, "high", "new-high")
    worker = consumer(start, prefix)  # --age-after 0, the default: off
    worker.wait_for(r"\] done ", count=2)
    assert [task_id for _, task_id in taken(worker)] == ["new-high", "old-normal"]
    assert "waited" not in worker.text
