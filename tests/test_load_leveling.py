"""Load levelling with an autoscaler, end to end: real Azurite, scripts run as subprocesses."""

from __future__ import annotations

import os
import re
import signal
from collections import Counter
from pathlib import Path

import pytest
from support import message_count, peek_bodies, run_script, send, wait_until

from patterns.load_leveling import autoscaler
from patterns.load_leveling.autoscaler import desired
from patterns.runner import Proc

AUTOSCALER = "patterns.load_leveling.autoscaler"
PRODUCER = "patterns.load_leveling.producer"


@pytest.mark.parametrize(
    ("length", "expected"),
    [(0, 1), (1, 1), (5, 1), (6, 2), (10, 2), (11, 3), (19, 4), (100, 4)],
)
def test_desired_is_one_consumer_per_target_messages_rounded_up_within_limits(length, expected):
    assert desired(length, target=5, least=1, most=4) == expected


def test_desired_may_scale_to_zero_when_min_is_zero():
    assert desired(0, target=5, least=0, most=4) == 0
    assert desired(1, target=5, least=0, most=4) == 1


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_burst_scales_consumers_up_drains_and_cools_back_down(start, env, service, qname):
    scaler = start(
        AUTOSCALER, "--queue", qname, "--min", "1", "--max", "4", "--target", "5",
        "--interval", "0.5", "--cooldown", "3", "--work-seconds", "0.2",
    )  # fmt: skip
    scaler.wait_for(r"consumer\[\d+\] waiting for tasks")
    producer = run_script(
        PRODUCER, "--queue", qname, "--bursts", "1", "--burst-size", "30", "--lull-seconds", "0",
        env=env,
    )  # fmt: skip
    assert producer.returncode == 0, producer.stderr
    sent = re.findall(r"\] sent (task-\S+)", producer.stdout)
    assert len(set(sent)) == 30

    def done() -> Counter[str]:
        return Counter(m.group(1) for m in scaler.matches(r"consumer\[\d+\] done (\S+)"))

    wait_until(lambda: sum(done().values()) >= 30, 60, "every task done")
    counts = [int(m.group(1)) for m in scaler.matches(r"consumers (\d+)")]
    assert max(counts) > 1, "the burst never added a consumer"
    # The cool-down passes, then the extra consumers are stopped, newest first.
    scaler.wait_for(r"consumers [2-9] -> 1$", timeout=30)
    ticks = len(scaler.matches(r"\] queue "))
    scaler.wait_for(r"\] queue ", count=ticks + 1)  # the next tick runs one consumer
    assert scaler.matches(r"\] queue .* consumers (\d+)")[-1].group(1) == "1"
    assert scaler.stop() == 0

    assert sorted(done()) == sorted(sent)
    assert max(done().values()) == 1, "a task was done twice"
    assert message_count(service, qname) == 0
    started = [int(m.group(1)) for m in scaler.matches(r"started consumer pid (\d+)")]
    stopped = [int(m.group(1)) for m in scaler.matches(r"stopped consumer pid (\d+) \(exit 0\)")]
    assert len(started) > 1 and sorted(stopped) == sorted(started)
    assert stopped[-1] == started[0], "newest first: the first consumer is stopped last"
    assert [pid for pid in started if alive(pid)] == []


def test_the_terminals_ctrl_c_reaches_only_the_autoscaler_which_stops_consumers_newest_first(
    env, service, qname
):
    """Ctrl+C in a terminal signals its whole foreground process group. The consumers are in
    sessions of their own, so each gets one stop, from the autoscaler, newest first; each
    hands its task back at once."""
    service.create_queue(qname)
    scaler = Proc(
        AUTOSCALER, "--queue", qname, "--min", "3", "--max", "3", "--interval", "0.5",
        "--work-seconds", "60", env=env, own_group=True,  # as a terminal's foreground job
    )  # fmt: skip
    try:
        scaler.wait_for(r"consumer\[\d+\] waiting for tasks", count=3)
        for n in range(3):
            send(service, qname, {"id": f"held-{n}"})
        scaler.wait_for(r"consumer\[\d+\] took held-", count=3)
        os.killpg(scaler.pid, signal.SIGINT)  # the terminal's Ctrl+C
        assert scaler.wait(20) == 0
    finally:
        scaler.kill()
    started = [int(m.group(1)) for m in scaler.matches(r"started consumer pid (\d+)")]
    stopped = [int(m.group(1)) for m in scaler.matches(r"stopped consumer pid (\d+) \(exit 0\)")]
    assert stopped == started[::-1], scaler.text
    assert len(scaler.matches(r"consumer\[\d+\] released message \S+ \(id held-\d\)")) == 3
    assert "interrupted" not in scaler.text and "Traceback" not in scaler.text
    assert len(peek_bodies(service, qname)) == 3  # all back at once, not after 30 s
    assert [pid for pid in started if alive(pid)] == []


def test_the_autoscaler_starts_and_stops_processes_itself():
    """Starting and stopping processes is the lesson: in the script, not in the test harness."""
    source = Path(autoscaler.__file__).read_text()
    assert "runner" not in source
    assert "subprocess.Popen(" in source and "send_signal(signal.SIGINT)" in source
