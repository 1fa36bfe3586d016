"""Tracing: one trace per journey across the queues, and the journey renderer.

Real Azurite, every script a subprocess with OTEL_TRACES_EXPORTER=jsonl writing to a file of
the test's own; the spans in that file are what is asserted."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from azure.storage.queue import QueueServiceClient
from support import assert_refused, run_script, wait_until

from patterns.helper.support import tracing
from patterns.tools import journey

PRODUCER = "patterns.pipes_and_filters.producer"
VALIDATE = "patterns.pipes_and_filters.validate"
ENRICH = "patterns.pipes_and_filters.enrich"
FINALIZE = "patterns.pipes_and_filters.finalize"
NAME = "messaging.destination.name"


def traced(env: dict[str, str], path: Path) -> dict[str, str]:
    return {**env, "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": str(path)}


def spans_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_off_by_default_imports_no_opentelemetry(env, qname) -> None:
    quiet = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
    result = run_script(PRODUCER, "--output", qname, env={**quiet, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "patterns.helper.support.tracing" in result.stderr  # the import log is complete
    assert "opentelemetry" not in result.stderr
    assert "traceparent" not in json.dumps(result.stdout)
    # the same run switched on does import it: the check above can fail
    on = {**quiet, "PYTHONPROFILEIMPORTTIME": "1", "OTEL_TRACES_EXPORTER": "console"}
    result = run_script(PRODUCER, "--output", qname, env=on)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "opentelemetry" in result.stderr


def test_unknown_exporter_is_one_line_exit_2(env, qname) -> None:
    result = run_script(PRODUCER, "--output", qname, env={**env, "OTEL_TRACES_EXPORTER": "zipkin"})
    assert_refused(result, "OTEL_TRACES_EXPORTER='zipkin' is not one of")


def test_pipeline_one_trace_per_order_in_causal_order(
    env, qname, start, tmp_path, service: QueueServiceClient
) -> None:
    path = tmp_path / "traces.jsonl"
    on = traced(env, path)
    v, e, f, r = (f"{qname}-v", f"{qname}-e", f"{qname}-f", f"{qname}-r")
    start(VALIDATE, "--input", v, "--output", e, "--rejected", r, env_=on)
    start(ENRICH, "--input", e, "--output", f, env_=on)
    final = start(FINALIZE, "--input", f, env_=on)
    result = run_script(PRODUCER, "--output", v, "--count", "3", "--invalid", env=on)
    assert result.returncode == 0, result.stderr
    orders = re.findall(r"sent (ORD-\S+-\d{3}) ", result.stdout)
    bad = re.findall(r"sent (ORD-\S+-bad) ", result.stdout)
    assert len(orders) == 3 and len(bad) == 1
    # A message sent without tracing (no traceparent) is processed all the same.
    service.get_queue_client(v).send_message(json.dumps({"order_id": "plain-1", "amount": 1,
                                                         "items": ["x"]}))  # fmt: skip
    final.wait_for(r"finished (ORD-\S+|plain-1) after", count=4, timeout=30)
    final.stop()  # its last span is written before it exits
    spans = spans_of(path)
    for order in orders:
        mine = [s for s in spans if s["attributes"].get("app.id") == order]
        assert len({s["trace_id"] for s in mine}) == 1, mine
        trace_id = mine[0]["trace_id"]
        trace = {s["span_id"]: s for s in spans if s["trace_id"] == trace_id}
        expected = [
            ("send", v, "producer"),
            ("process", v, "validate"),
            ("send", e, "validate"),
            ("process", e, "enrich"),
            ("send", f, "enrich"),
            ("process", f, "finalize"),
        ]
        assert len(trace) == len(expected)
        # Walk down from the root: each span is the parent of the next.
        (root,) = [s for s in trace.values() if s["parent_id"] is None]
        chain = [root]
        while children := [s for s in trace.values() if s["parent_id"] == chain[-1]["span_id"]]:
            assert len(children) == 1
            chain.append(children[0])
        assert [(s["name"].split()[0], s["attributes"][NAME], s["service"]) for s in chain] == [
            (f"{op}", q, role) for op, q, role in expected
        ]
        starts = [s["start_ns"] for s in chain]
        assert starts == sorted(starts)
        for span in chain:
            if span["kind"] == "consumer":
                assert span["attributes"]["app.id"] == order
                assert span["attributes"]["outcome"] == "done"
                assert span["attributes"]["messaging.azure.dequeue_count"] == 1
                wait = span["attributes"]["queue.wait_ms"]
                assert 0 <= span["attributes"]["queue.poll_wait_ms"] <= wait
                assert span["start_ns"] <= span["end_ns"]
        # The renderer draws this trace with the spans' own times.
        (drawn,) = [j for j in journey.journeys(spans) if j.app_id == order]
        assert [h.role for h in drawn.hops] == ["producer", "validate", "enrich", "finalize"]
        rows = journey.timeline(drawn).splitlines()[2:]  # below the title and the header
        for row, span in zip(rows, [chain[0], *chain[1::2]], strict=True):
            work = (span["end_ns"] - span["start_ns"]) / 1e6
            assert f"{work:8.1f}" in row
            if span["kind"] == "consumer":
                assert f"{span['attributes']['queue.wait_ms']:8.1f}" in row
                assert f"{span['attributes']['queue.poll_wait_ms']:8.1f}" in row
    # The invalid order: validate's span sends it to the rejected queue, in the same trace.
    (rejected,) = [s for s in spans if s["attributes"].get(NAME) == r]
    parent = next(s for s in spans if s["span_id"] == rejected["parent_id"])
    assert parent["attributes"]["app.id"] == bad[0]
    # The untraced message started its own trace at validate.
    plain = [s for s in spans if s["attributes"].get("app.id") == "plain-1"]
    first = next(s for s in plain if s["name"] == f"process {v}")
    assert first["parent_id"] is None and "queue.wait_ms" not in first["attributes"]
    assert {s["service"] for s in plain} == {"validate", "enrich", "finalize"}


def test_poisoned_message_trace_ends_in_poison_event(env, qname, start, tmp_path) -> None:
    path = tmp_path / "traces.jsonl"
    on = traced(env, path)
    enrich = start(ENRICH, "--input", qname, "--output", f"{qname}-out", env_=on)
    send = (
        "from patterns.helper import connect; "
        f"connect.send_json(connect.open_queue('{qname}'), {{'order_id': 7, 'amount': 1}})"
    )
    done = subprocess.run(
        [sys.executable, "-c", send], env={**on, "OTEL_SERVICE_NAME": "sender"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    enrich.wait_for(f"moved .* to '{qname}-poison'", timeout=30)
    enrich.stop()
    spans = spans_of(path)
    (sent,) = [s for s in spans if s["service"] == "sender"]
    trace = [s for s in spans if s["trace_id"] == sent["trace_id"]]
    last = max(trace, key=lambda s: s["end_ns"])
    assert last["parent_id"] == sent["span_id"] and last["service"] == "enrich"
    assert last["attributes"]["outcome"] == "poisoned"
    assert last["events"][-1]["name"] == "poisoned"
    assert "order_id must be a non-empty string" in last["events"][-1]["attributes"]["reason"]
    drawn = journey.timeline(journey.journeys(spans)[0])
    assert drawn.splitlines()[-1].endswith("poisoned")


def test_reply_belongs_to_the_requests_trace(env, qname, start, tmp_path) -> None:
    path = tmp_path / "traces.jsonl"
    on = traced(env, path)
    replier = start("patterns.request_reply.replier", "--queue", qname, env_=on)
    result = run_script("patterns.request_reply.requestor", "--queue", qname, "--count", "2",
                        env=on)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    replier.stop()
    spans = spans_of(path)
    requests = [s for s in spans if s["service"] == "requestor"]
    assert len(requests) == 2
    for request in requests:
        trace = [s for s in spans if s["trace_id"] == request["trace_id"]]
        (process,) = [s for s in trace if s["parent_id"] == request["span_id"]]
        assert process["service"] == "replier" and process["attributes"][NAME] == qname
        (reply,) = [s for s in trace if s["parent_id"] == process["span_id"]]
        assert reply["name"].startswith("send reply-")
        assert reply["attributes"]["app.id"] == request["attributes"]["app.id"]


def span(name, kind, service, start_ms, end_ms, span_id, parent=None, **attributes):
    return {
        "trace_id": "t1", "span_id": span_id, "parent_id": parent, "name": name, "kind": kind,
        "service": service, "start_ns": int(start_ms * 1e6), "end_ns": int(end_ms * 1e6),
        "attributes": {NAME: name.split()[1], "app.id": "ORD-1", **attributes}, "events": [],
    }  # fmt: skip


RECORDED = [  # a journey as the scripts record it: times in ms from an arbitrary origin
    span("send queue-validate", "producer", "producer", 1000, 1010, "a"),
    span("process queue-validate", "consumer", "validate", 1810, 1820, "b", "a",
         **{"queue.wait_ms": 810.0, "queue.poll_wait_ms": 800.0, "outcome": "done"}),
    span("send queue-enrich", "producer", "validate", 1812, 1818, "c", "b"),
    span("process queue-enrich", "consumer", "enrich", 1830, 2000, "d", "c",
         **{"queue.wait_ms": 12.0, "queue.poll_wait_ms": 0.0, "outcome": "done"}),
]  # fmt: skip


def test_renderer_timeline_and_mermaid_from_a_recorded_file(tmp_path) -> None:
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in RECORDED) + '{"cut sho\n')
    result = run_script("patterns.tools.journey", "--file", str(path), "--id", "ORD-1", env={})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        journey.LEGEND,
        "",
        "ORD-1  trace t1  1000.0 ms",
        "  hop       queue             wait ms   (poll)  work ms  |" + " " * 40 + "|",
        "  producer  queue-validate                         10.0  |#" + " " * 39 + "|",
        "  validate  queue-validate      810.0    800.0     10.0  |"
        + "." * 32
        + "#"
        + " " * 7
        + "|",
        "  enrich    queue-enrich         12.0      0.0    170.0  |"
        + " " * 32
        + "-"
        + "#" * 7
        + "|",
    ]
    mermaid = run_script("patterns.tools.journey", "--file", str(path), "--mermaid", env={})
    assert mermaid.stdout.splitlines() == [
        "sequenceDiagram",
        "    title ORD-1: 1000.0 ms",
        "    participant P0 as producer",
        "    participant P1 as queue-validate",
        "    participant P2 as validate",
        "    participant P3 as queue-enrich",
        "    participant P4 as enrich",
        "    P0->>P1: send ORD-1 (+0.0 ms)",
        "    P1->>P2: +810.0 ms, waited 810.0 ms, 800.0 ms of it for a poll",
        "    P2->>P3: send",
        "    Note over P2: work 10.0 ms, done",
        "    P3->>P4: +830.0 ms, waited 12.0 ms, 0.0 ms of it for a poll",
        "    Note over P4: work 170.0 ms, done",
    ]
    missing = run_script("patterns.tools.journey", "--file", str(path), "--id", "nope", env={})
    assert_refused(missing, "no journey of 'nope'", exit_code=1)
    assert tracing.exporter_name({}) is None
    assert tracing.exporter_name({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}) == "otlp"
    assert tracing.exporter_name({"OTEL_TRACES_EXPORTER": "none"}) is None


def test_journey_escapes_control_characters_and_skipped_lines_are_counted(tmp_path) -> None:
    """An id is whatever a message carried: ESC [2J would clear the learner's screen, a line
    break would add a line of its own to a Mermaid diagram. Both are shown escaped."""
    evil = "ORD\x1b[2J\n    Note over P0: injected\u2028"
    recorded = [
        {**s, "service": s["service"] + "\r", "attributes": {**s["attributes"], "app.id": evil}}
        for s in RECORDED
    ]
    path = tmp_path / "recorded.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in recorded) + '{"cut sho\n')
    clean = run_script("patterns.tools.journey", "--file", str(path), "--mermaid", env={})
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(s) + "\n" for s in RECORDED))
    expected = run_script("patterns.tools.journey", "--file", str(plain), "--mermaid", env={})
    assert clean.returncode == 0, clean.stderr
    assert len(clean.stdout.splitlines()) == len(expected.stdout.splitlines())
    assert "    title ORD\\x1b[2J\\n    Note over P0: injected\\u2028: 1000.0 ms" in clean.stdout
    assert not set("\x1b\r\u2028") & set(clean.stdout)
    assert clean.stderr == f"{path}: 1 line(s) skipped: not spans as the scripts write them\n"
    timeline = run_script("patterns.tools.journey", "--file", str(path), env={})
    assert timeline.returncode == 0, timeline.stderr
    assert not set("\x1b\r\u2028") & set(timeline.stdout)
    assert "ORD\\x1b[2J\\n    Note over P0: injected\\u2028  trace t1" in timeline.stdout


WITHOUT_EXTRA = """
import runpy, sys
class NoOpenTelemetry:  # as if `pip install -e '.[trace]'` had not been run
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError("No module named 'opentelemetry'")
sys.meta_path.insert(0, NoOpenTelemetry())
sys.argv = ["producer", *sys.argv[1:]]
runpy.run_module("patterns.pipes_and_filters.producer", run_name="__main__")
"""


def test_without_the_extra(env, qname, tmp_path) -> None:
    quiet = {k: v for k, v in env.items() if not k.startswith("OTEL_")}

    def producer(environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", WITHOUT_EXTRA, "--output", qname], env=environ,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    off = producer(quiet)  # runs exactly as before
    assert off.returncode == 0, off.stderr
    assert "sent 1 order(s)" in off.stdout
    on = producer(traced(quiet, tmp_path / "traces.jsonl"))  # asked for: says what is missing
    assert_refused(on, "pip install -e '.[trace]'")


def test_otlp_endpoint_receives_the_spans(env, qname) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT alone sends the spans to that collector (OTLP/HTTP): here a
    stand-in that records what is posted to it."""
    posts: list[tuple[str, str, bytes]] = []

    class Collector(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        quiet = {k: v for k, v in env.items() if not k.startswith("OTEL_")}
        endpoint = f"http://127.0.0.1:{server.server_port}"
        result = run_script(PRODUCER, "--output", qname, env={**quiet,
                            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})  # fmt: skip
        assert result.returncode == 0, result.stderr
    finally:
        server.shutdown()
        server.server_close()
    (order_id,) = re.findall(r"sent (ORD-\S+) ", result.stdout)
    assert [(path, kind) for path, kind, _ in posts] == [("/v1/traces", "application/x-protobuf")]
    assert f"send {qname}".encode() in posts[0][2] and order_id.encode() in posts[0][2]


def test_wait_after_idle_is_polling_wait_behind_others_is_not(
    env, qname, start, tmp_path, azurite
) -> None:
    path = tmp_path / "traces.jsonl"
    on = traced(env, path)
    v = f"{qname}-v"
    args = ("--input", v, "--output", f"{qname}-e", "--rejected", f"{qname}-r")
    validate = start(VALIDATE, *args, env_=on)

    def polls() -> int:  # receives (and deletes) validate has made on its input queue
        return Path(azurite.log_path).read_text(errors="replace").count(f"/{v}/messages")

    wait_until(lambda: polls() >= 2, what="validate polled its empty queue")
    for count, passed in (("1", 1), ("20", 21)):  # one order after idle, then 20 at once
        assert run_script(PRODUCER, "--output", v, "--count", count, env=on).returncode == 0
        validate.wait_for(r"passed ORD-", count=passed, timeout=30)
    validate.stop()
    spans = [s for s in spans_of(path) if s["name"] == f"process {v}"]
    assert len(spans) == 21
    first, burst = spans[0]["attributes"], [s["attributes"] for s in spans[1:]]
    in_line = [a["queue.wait_ms"] - a["queue.poll_wait_ms"] for a in burst]  # behind others
    # After idle: the wait was validate asleep between polls (all of it but what a send and an
    # empty receive may overlap); in a burst, one order at a time, the later ones also waited
    # behind the others - longer than any order waits for a receive to end (no tight margin:
    # a busy machine stretches both).
    assert first["queue.poll_wait_ms"] > 0
    assert 0 <= first["queue.wait_ms"] - first["queue.poll_wait_ms"] < max(in_line)
    assert all(0 <= a["queue.poll_wait_ms"] <= a["queue.wait_ms"] for a in burst)
    assert max(in_line) > 10
