"""The fault battery, part two: processes that die and a service that refuses to serve.

A task that kills its consumer every time (kill -9 right after `took`, as an out-of-memory kill
or a segfault would); the autoscaler killed outright with tasks in work, and through a queue
outage; a throttled service (503 Server Busy, put in front of the real Azurite by a small
fault-injecting proxy, tests/proxy.py). Real Azurite, scripts run as subprocesses, as in
test_battery.py; the figures each case measured are printed under "battery figures".
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid

import pytest
from azure.storage.queue import QueueServiceClient
from proxy import FaultyProxy
from support import env_for, ids_logged, message_count, peek_bodies, send, wait_until
from test_battery import outage

from patterns.helper.support.settings import CONNECTION_STRING_VAR
from patterns.runner import Proc

pytestmark = pytest.mark.battery

CONSUMER = "patterns.competing_consumers.consumer"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- a message that kills its consumer ----------------------------------------------------------


def test_a_task_that_kills_its_consumer_goes_to_poison_after_the_stated_attempts(
    start, service, qname, figures
):
    """kill -9 on every delivery, right after `took`: no exception ever reaches the helper,
    yet after --max-attempts deliveries the next one moves it to poison, with the reason."""
    service.create_queue(qname)
    send(service, qname, {"id": "killer"})
    flags = ["--visibility-timeout", "1", "--max-attempts", "3", "--work-seconds", "60"]
    flags += ["--idle-max", "0.2"]
    for attempt in (1, 2, 3):
        consumer = start(CONSUMER, "--queue", qname, *flags, label=f"consumer-{attempt}")
        consumer.wait_for(rf"took killer \(attempt {attempt}\)", timeout=15)
        consumer.send_signal(signal.SIGKILL)  # os.kill, by its PID
        assert consumer.wait(5) == -signal.SIGKILL

    last = start(CONSUMER, "--queue", qname, *flags, label="consumer-4")
    last.wait_for(
        rf"moved message \S+ \(id killer\) to '{qname}-poison': delivered 4 times, more than "
        r"--max-attempts 3; its consumer may have died on it each time$",
        timeout=15,
    )
    assert not last.matches("took killer"), "worked on a fourth time"
    assert last.stop() == 0
    (record,) = service.get_queue_client(f"{qname}-poison").peek_messages()
    poisoned = json.loads(record.content)
    assert poisoned["dequeue_count"] == 4
    assert json.loads(poisoned["body"]) == {"id": "killer"}
    assert message_count(service, qname) == 0
    assert "Traceback" not in last.text
    figures("1 task, 3 deliveries killed by kill -9, the 4th poisoned; lost 0, tracebacks 0")


# --- a throttled service is an outage, not a broken message -------------------------------------


def test_a_throttled_queue_is_an_outage_and_batch_receives_keep_their_size(
    azurite, service, qname, figures
):
    """503 Server Busy is Azure's answer to a throttled queue. Once, retried away by the SDK:
    nothing to say. For ~3 s, every receive: one outage warning, a line when it is over. Never
    "cannot hand out" (that is Azurite's \\x00 quirk), and every receive asks for the batch."""
    service.create_queue(qname)
    with FaultyProxy(azurite) as proxy:
        env = {**env_for(azurite), CONNECTION_STRING_VAR: proxy.connection_string}
        consumer = Proc(
            CONSUMER, "--queue", qname, "--batch-size", "32", "--work-seconds", "0",
            "--idle-max", "0.2", env=env,
        )  # fmt: skip
        try:
            consumer.wait_for("waiting for tasks")
            proxy.refuse(1)
            send(service, qname, {"id": "after-one-503"})
            consumer.wait_for("done after-one-503")
            proxy.refuse(10**6)
            wait_until(lambda: proxy.counted().count((32, 503)) >= 8, 20, "8 receives refused")
            for n in range(10):  # waiting meanwhile: taken when it is over
                send(service, qname, {"id": f"throttled-{n}"})
            proxy.refuse(0)
            consumer.wait_for("the queue service answers again")
            for n in range(10):
                consumer.wait_for(f"done throttled-{n}")
            assert consumer.stop() == 0
        finally:
            consumer.kill()
    refused = proxy.counted().count((32, 503))
    asked = {n for n, _ in proxy.counted()}
    assert consumer.matches("cannot hand out") == []
    assert len(consumer.matches(r"warning: the queue service answers 503 Server Busy")) == 1
    assert len(consumer.matches(r"\] warning: ")) == 1, consumer.text
    assert asked == {32}, f"receives asked for {sorted(asked)} messages"
    assert message_count(service, qname) == 0
    assert "Traceback" not in consumer.text
    figures(f"{refused} receives refused (503), 1 warning, batch 32 kept; lost 0, tracebacks 0")


# --- the autoscaler -------------------------------------------------------------------------------

AUTOSCALER = "patterns.load_leveling.autoscaler"


@pytest.mark.parametrize("when", ["in-work", "while-stopping"])
def test_autoscaler_killed_outright_its_consumers_hand_back_every_task_at_once(
    azurite, service, qname, figures, when
):
    """kill -9 of the autoscaler with 4 tasks in work, or while it stops its consumers (Ctrl+C
    sent, their releases under way): each consumer gets one stop (a SIGTERM from the kernel
    after the autoscaler's SIGINT is the same stop), hands its task back at once and exits;
    none waits out the 30 s visibility timeout. A release takes 0.5 s here (a proxy slows it,
    as a distant service would): a second stop meanwhile would make it 'stop at once' and drop
    the release."""
    service.create_queue(qname)
    with FaultyProxy(azurite) as proxy:
        proxy.slow_updates = 0.5
        env = {**env_for(azurite), CONNECTION_STRING_VAR: proxy.connection_string}
        scaler = Proc(
            AUTOSCALER, "--queue", qname, "--min", "4", "--max", "4", "--interval", "0.5",
            "--work-seconds", "60", env=env,
        )  # fmt: skip
        pids: list[int] = []
        try:
            scaler.wait_for(r"consumer\[\d+\] waiting for tasks", count=4)
            pids = [int(m.group(1)) for m in scaler.matches(r"started consumer pid (\d+)")]
            for n in range(4):
                send(service, qname, {"id": f"held-{n}"})
            scaler.wait_for(r"consumer\[\d+\] took held-", count=4)
            assert peek_bodies(service, qname) == []  # all 4 in a consumer's hands
            if when == "while-stopping":
                scaler.send_signal(signal.SIGINT)  # it sends each consumer Ctrl+C ...
                wait_until(lambda: proxy.updates >= 1, 10, "a release under way")

            scaler.send_signal(signal.SIGKILL)  # ... and dies meanwhile; by its PID
            killed = time.monotonic()
            back = wait_until(
                lambda: len(peek_bodies(service, qname)) == 4, 10, "all 4 handed back at once"
            )
            wait_until(lambda: not any(alive(pid) for pid in pids), 10, "every consumer exited")
            gone = time.monotonic() - killed
            assert scaler.wait(5) == -signal.SIGKILL
        finally:
            scaler.kill()
            for pid in pids:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
    released = scaler.matches(r"consumer\[\d+\] released message \S+ \(id (held-\d)\) back")
    assert sorted(m.group(1) for m in released) == [f"held-{n}" for n in range(4)]
    assert len(scaler.matches(r"consumer\[\d+\] stopped: processed 0 task\(s\)")) == 4
    assert "interrupted" not in scaler.text and "Traceback" not in scaler.text
    assert message_count(service, qname) == 4
    figures(
        f"autoscaler kill -9 ({when}) with 4 tasks in work: 4 handed back within {back:.1f} s, "
        f"the consumers gone after {gone:.1f} s; not handed back 0, lost 0, tracebacks 0"
    )


def test_autoscaler_rides_out_a_10_s_outage_and_keeps_its_pool(disk_azurite, start, figures):
    """The queue service away for 10 s: the autoscaler warns once, keeps its consumers, says
    when the service answers again and goes on scaling; every task is done."""
    env = env_for(disk_azurite)
    service = QueueServiceClient.from_connection_string(disk_azurite.connection_string)
    name = f"out-as-{uuid.uuid4().hex[:8]}"
    scaler = start(
        AUTOSCALER, "--queue", name, "--min", "2", "--max", "3", "--interval", "0.5",
        "--cooldown", "120", "--work-seconds", "0.1", env_=env,
    )  # fmt: skip
    scaler.wait_for(r"consumer\[\d+\] waiting for tasks", count=2)
    pool = sorted(int(m.group(1)) for m in scaler.matches(r"started consumer pid (\d+)"))

    down = outage(disk_azurite, 10)
    scaler.wait_for(r"autoscaler\[\d+\] the queue service answers again", timeout=30)
    for n in range(20):
        send(service, name, {"id": f"after-{n}"})
    wait_until(lambda: len(set(ids_logged(scaler, "done"))) == 20, 30, "every task done")
    assert scaler.popen.poll() is None, scaler.text
    now = sorted(int(m.group(1)) for m in scaler.matches(r"started consumer pid (\d+)"))
    assert now[: len(pool)] == pool and all(alive(pid) for pid in pool), "the pool was lost"
    warned = scaler.matches(r"autoscaler\[\d+\] warning: ")
    assert len(warned) == 1, scaler.text
    assert scaler.stop() == 0
    assert "Traceback" not in scaler.text
    assert message_count(service, name) == 0
    figures(
        f"autoscaler through {down:.1f} s of outage: 1 warning, pool of {len(pool)} kept, "
        f"20 tasks after it done; lost 0, tracebacks 0"
    )
