"""The fault battery, configuration: tracing switched on wrongly, and a key pasted in the wrong
place of the connection string. Real Azurite, every script a subprocess.

Asserted: a setting that cannot work stops a script at start in one line (exit 2: nothing sent,
nothing received); one that fails later (no collector, a full disk, a removed folder) is one
warning while the work goes on; no traceback; no output holds 20 characters of the key in a
row, in any case; no message lost. The counts are printed under "battery figures".
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from support import (
    assert_refused,
    ids_logged,
    learner_env,
    log_seconds,
    message_count,
    queue_exists,
    run_script,
    send,
    wait_until,
)
from test_flags import scripts
from test_helper import CASES, QUOTED, SECRET, key_pieces

from patterns.helper.support import tracing
from patterns.helper.support.settings import CONNECTION_STRING_VAR

pytestmark = pytest.mark.battery

PRODUCER = "patterns.competing_consumers.producer"
CONSUMER = "patterns.competing_consumers.consumer"
WARNING = "] warning: tracing: "


def untraced(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("OTEL_")}


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: a connection to it is refused at once."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


def consume(start, env: dict[str, str], queue: str, count: int):
    """A consumer that has done `count` tasks (and logged each `done`)."""
    consumer = start(CONSUMER, "--queue", queue, "--work-seconds", "0", "--idle-max", "0.2",
                     env_=env)  # fmt: skip
    consumer.wait_for(r"\] done task-", count=count, timeout=30)
    return consumer


# --- tracing that cannot work: stopped at start, before any request -------------------------

STOPS_AT_START = {  # settings, what the one line says
    "missing-folder": (
        {"OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": "{tmp}/missing/traces.jsonl"},
        "cannot open the traces file '{tmp}/missing/traces.jsonl' for appending (No such file",
    ),
    "a-folder": (
        {"OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": "{tmp}"},
        "cannot open the traces file '{tmp}' for appending (Is a directory)",
    ),
    "bogus-exporter": (
        {"OTEL_TRACES_EXPORTER": "bogus"},
        "OTEL_TRACES_EXPORTER='bogus' is not one of jsonl, otlp, console, none",
    ),
    "otlp-address-without-scheme": (
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"},
        "the OTLP collector's address in OTEL_EXPORTER_OTLP_ENDPOINT must start with https://",
    ),
}


@pytest.mark.parametrize("script", ["producer", "consumer"])
@pytest.mark.parametrize("case", STOPS_AT_START)
def test_tracing_that_cannot_work_stops_the_script_at_start(
    case, script, env, service, qname, tmp_path, figures
):
    """It used to fail on the first message: the producer with a traceback and nothing sent,
    the consumer with a traceback (the message taken and left to come back), or exit 2 after
    the queue was made. Now: one line, exit 2, and the service untouched."""
    settings, shown = STOPS_AT_START[case]
    on = {**untraced(env), **{k: v.format(tmp=tmp_path) for k, v in settings.items()}}
    if script == "producer":
        result = run_script(PRODUCER, "--queue", qname, "--count", "3", env=on, timeout=30)
        assert_refused(result, shown.format(tmp=tmp_path))
        assert not queue_exists(service, qname), "the producer made its queue before stopping"
    else:
        service.create_queue(qname)
        send(service, qname, {"id": "waits-for-a-working-consumer"})
        result = run_script(CONSUMER, "--queue", qname, env=on, timeout=30)
        assert_refused(result, shown.format(tmp=tmp_path))
        [waiting] = service.get_queue_client(qname).peek_messages()
        assert waiting.dequeue_count == 0, "the consumer took the message before stopping"
    figures(f"{case} x {script}: exit {result.returncode}, 1 line, nothing sent or taken")


# --- tracing that fails later: one warning, the work goes on ---------------------------------


def ids_logged_sent(stdout: str) -> list[str]:
    return [line.rsplit(" ", 1)[-1] for line in stdout.splitlines() if "] sent task-" in line]


def spans_in(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def seconds_after(line: str) -> float:
    """Seconds from a log line's time to now (both wall-clock time of day)."""
    now = datetime.now()
    since_midnight = now.hour * 3600 + now.minute * 60 + now.second + now.microsecond / 1e6
    return (since_midnight - log_seconds(line)) % 86400


def test_otlp_without_a_collector_is_one_warning_and_adds_no_seconds_to_exit(
    env, start, service, qname, refusing_port, figures
):
    """The SDK printed three retry lines and a failure per batch, and its export (10 s timeout,
    retried with backoff) kept every script ~7 s after its work was done."""
    url = f"http://127.0.0.1:{refusing_port}"
    on = {**untraced(env), "OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": url}
    produced = run_script(PRODUCER, "--queue", qname, "--count", "5", env=on)
    exit_took = seconds_after(produced.stdout.strip().splitlines()[-1])
    assert produced.returncode == 0, produced
    assert f"tracing: spans go to the OTLP collector at {url}/v1/traces" in produced.stdout
    assert produced.stdout.count(WARNING) == 1, produced.stdout
    assert f"no OTLP collector took the spans at {url}/v1/traces" in produced.stdout
    assert produced.stderr == "", produced.stderr  # none of the SDK's own lines
    assert message_count(service, qname) == 5

    consumer = consume(start, on, qname, 5)
    began = time.monotonic()
    assert consumer.stop() == 0
    stop_took = time.monotonic() - began
    assert consumer.text.count(WARNING) == 1, consumer.text
    assert "Traceback" not in consumer.text and "Transient error" not in consumer.text
    assert sorted(ids_logged(consumer, "done")) == sorted(ids_logged_sent(produced.stdout))
    assert message_count(service, qname) == 0
    # A bound between what a busy machine needs (the export gives up after OTLP_TIMEOUT) and
    # the ~7 s it used to wait.
    assert exit_took < tracing.OTLP_TIMEOUT + 3, f"the producer exited {exit_took:.1f} s late"
    assert stop_took < tracing.OTLP_TIMEOUT + 3, f"the consumer stopped in {stop_took:.1f} s"
    figures(
        f"5 sent, 5 done, 0 lost; exit {exit_took:.1f} s after the work, stop {stop_took:.1f} s"
    )


def test_a_full_disk_is_one_warning_and_every_task_is_sent_and_done(
    env, start, service, qname, figures
):
    """/dev/full opens for appending and refuses every write (No space left on device)."""
    on = {**untraced(env), "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": "/dev/full"}
    produced = run_script(PRODUCER, "--queue", qname, "--count", "5", env=on)
    assert produced.returncode == 0, produced
    assert "tracing: spans go to '/dev/full'" in produced.stdout
    assert produced.stdout.count(WARNING) == 1, produced.stdout
    assert "cannot write spans to '/dev/full' (No space left on device)" in produced.stdout
    assert produced.stderr == "", produced.stderr
    consumer = consume(start, on, qname, 5)
    assert consumer.stop() == 0
    assert consumer.text.count(WARNING) == 1, consumer.text
    assert "Traceback" not in consumer.text
    assert sorted(ids_logged(consumer, "done")) == sorted(ids_logged_sent(produced.stdout))
    assert message_count(service, qname) == 0
    figures("5 sent, 5 done, 0 lost, one warning each")


@pytest.mark.parametrize("removed", ["the-folder", "the-file"])
def test_traces_removed_mid_run_never_stop_the_consumer(
    removed, env, start, service, qname, tmp_path, figures
):
    """The folder gone: spans cannot be written any more (one warning). The file gone (a
    learner starting afresh): a new one is made, and the later spans are in it."""
    folder = tmp_path / "traces"
    folder.mkdir()
    path = folder / "traces.jsonl"
    on = {**untraced(env), "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": str(path)}
    sent = []
    for batch in (1, 2):
        produced = run_script(PRODUCER, "--queue", qname, "--count", "2", env=untraced(env))
        assert produced.returncode == 0, produced
        sent += ids_logged_sent(produced.stdout)
        if batch == 1:
            consumer = consume(start, on, qname, 2)
            wait_until(lambda: len(spans_in(path)) == 2, what="the first 2 spans written")
            shutil.rmtree(folder) if removed == "the-folder" else path.unlink()
    consumer.wait_for(r"\] done task-", count=4, timeout=30)
    assert consumer.stop() == 0
    assert "Traceback" not in consumer.text
    assert sorted(ids_logged(consumer, "done")) == sorted(sent)
    assert message_count(service, qname) == 0
    if removed == "the-folder":
        assert consumer.text.count(WARNING) == 1, consumer.text
        assert "(No such file or directory); spans are dropped, the work goes on" in consumer.text
    else:
        assert WARNING not in consumer.text
        later = {span["attributes"].get("app.id") for span in spans_in(path)}
        assert later == set(sent[2:]), later
    figures(f"{removed} removed: 4 sent, 4 done, 0 lost")


# --- a key in the wrong place, against every script ------------------------------------------

KEY_CASES = [name for name in CASES if name.startswith(("key-", "sas-"))]
NOT_CONNECTING = {"patterns.demo", "patterns.emulator", "patterns.tools.journey", "bench.__main__"}
# The bare scripts are the SDK alone on purpose (their docstrings: the SDK's own errors, no checks).
SDK_ONLY = {"patterns.competing_consumers.consumer_bare", "patterns.pipes_and_filters.filter_bare"}
ARGS = {
    "patterns.fanout.consumer": ["--subscriber", "a"],
    "patterns.tools.peek": ["tasks-queue"],
    "patterns.tools.redrive": ["tasks-queue"],
    "patterns.tools.cleanup": ["--dry-run"],
}
SCRIPTS = [module for module in scripts() if module not in NOT_CONNECTING | SDK_ONLY]


def refused_run(module: str, case: str, port: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`module` run with the case's setting (every local address in it: `port`)."""
    value, dotenv, _, _ = CASES[case]
    fill = {"key": SECRET, "quoted": QUOTED, "azurite": port, "dead": port}
    env = learner_env()
    if value is not None:
        env[CONNECTION_STRING_VAR] = value.format(**fill)
    cwd.mkdir()
    if dotenv is not None:
        (cwd / ".env").write_text(dotenv.format(**fill))
    return subprocess.run(
        [sys.executable, "-u", "-m", module, *ARGS.get(module, [])], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_key_in_the_wrong_place_is_refused_by_every_script_and_never_shown(tmp_path, figures):
    """Every script that connects, with the cases in turn, one each (every case runs against
    the producer and the consumer in test_helper.py): one line, exit 2, before any request,
    and no 20 characters of the key in a row on stdout or stderr, in any case."""
    runs = [(module, KEY_CASES[n % len(KEY_CASES)]) for n, module in enumerate(SCRIPTS)]
    with socket.create_server(("127.0.0.1", 0)) as listener:  # knocks are counted, not answered
        port = listener.getsockname()[1]
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(
                lambda run: refused_run(*run, port, tmp_path / f"{run[0]}-{run[1]}"), runs
            ))  # fmt: skip
        listener.setblocking(False)
        knocks = 0
        while True:
            try:
                listener.accept()[0].close()
            except BlockingIOError:
                break
            knocks += 1
    pieces = tracebacks = 0
    for (module, case), result in zip(runs, results, strict=True):
        output = result.stdout + result.stderr
        pieces += len(key_pieces(output))
        tracebacks += "Traceback" in output
        assert key_pieces(output) == [], f"{module} {case}: {output}"
        assert_refused(result, CASES[case][2])
    assert knocks == 0, f"{knocks} connection(s) made before refusing"
    assert {case for _, case in runs} == set(KEY_CASES)
    figures(
        f"{len(runs)} runs ({len(SCRIPTS)} scripts, {len(KEY_CASES)} cases in turn): "
        f"key pieces found {pieces}, tracebacks {tracebacks}, connections made {knocks}"
    )
