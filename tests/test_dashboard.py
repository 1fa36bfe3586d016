"""The dashboard (patterns/tools/dashboard.py): as a server, and as a page in a real browser
(Debian's headless Chromium, one per module, see browser.py) against a real Azurite."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import re
import signal
import socket
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import AccountSasPermissions, ResourceTypes, generate_account_sas
from browser import browser, dashboard_url, polls
from playwright.sync_api import expect
from support import (
    assert_refused,
    env_for,
    learner_env,
    peek_bodies,
    run_script,
    send,
    wait_until,
)

from patterns.emulator import Azurite, free_port
from patterns.helper.support.settings import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    CONNECTION_STRING_VAR,
    azurite_connection_string,
    holds_piece_of,
)
from patterns.tools import dashboard, status

DASHBOARD = "patterns.tools.dashboard"
CONSUMER = "patterns.competing_consumers.consumer"
PRODUCER = "patterns.competing_consumers.producer"
HOSTILE = (
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    "<b onmouseover=alert(3)>bold?</b>",
)
expect.set_options(timeout=20_000)


@pytest.fixture
def ns() -> str:
    """A prefix no other test uses; tutorial names go after it (`t1a2b3c4d-tasks-queue`)."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture(scope="module")
def chromium():
    with browser() as launched:
        yield launched


@pytest.fixture
def page(chromium):
    """A fresh tab; every dialog (alert) and console error it meets is recorded."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.dialogs, tab.errors = [], []
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    tab.on("console", lambda m: m.type == "error" and tab.errors.append(m.text))
    tab.on("pageerror", lambda error: tab.errors.append(str(error)))
    yield tab
    context.close()


def put(service, queue: str, *bodies) -> None:
    """Messages sent to a queue, made first if need be (send() as another client would)."""
    with contextlib.suppress(ResourceExistsError):
        service.get_queue_client(queue).create_queue()
    for body in bodies:
        send(service, queue, body)


def row(page, queue: str):
    return page.locator(f'tr[data-queue="{queue}"]')


# --- the server ------------------------------------------------------------------------------


def test_a_port_in_use_is_one_line_exit_2(env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_script(DASHBOARD, "--port", str(port), env=env, timeout=30)
    assert_refused(result, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.parametrize("credential", ["key", "sas"])
def test_answers_only_its_own_address_with_no_secret_and_strict_headers(
    start, azurite, ns, credential
):
    """DNS rebinding (a page elsewhere whose name now points at 127.0.0.1) is refused; the
    page and its JSON carry no key and no SAS token; no inline script, no other origin, no
    sniffing."""
    everything = ResourceTypes(service=True, container=True, object=True)
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    reading = AccountSasPermissions(read=True, list=True)
    sas = generate_account_sas(AZURITE_ACCOUNT, AZURITE_KEY, everything, reading, expiry)
    setting = azurite.connection_string
    if credential == "sas":
        setting = f"QueueEndpoint={azurite.endpoint};SharedAccessSignature={sas}"
    env = {**learner_env(), CONNECTION_STRING_VAR: setting}
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, env_=env)
    url = dashboard_url(proc)
    port = int(url.rsplit(":", 1)[1].strip("/"))

    def get(path: str, host: str, method: str = "GET") -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.putrequest(method, path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        return connection.getresponse()

    assert get("/", f"attacker.example:{port}").status == 421
    assert get("/api/state", f"attacker.example:{port}").status == 421
    assert get("/", f"127.0.0.1:{port + 1}").status == 421
    wait_until(lambda: polls(url) > 0, what="a first poll")
    for path in ("/", "/app.js", "/style.css", "/api/state", "/nothing", "/../../etc/passwd"):
        for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
            answer = get(path, host)
            body = answer.read().decode()
            assert answer.status == (404 if path in ("/nothing", "/../../etc/passwd") else 200)
            policy = answer.headers["Content-Security-Policy"]
            assert "default-src 'none'" in policy and "script-src 'self'" in policy
            assert "'unsafe-inline'" not in policy and "http" not in policy
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
            assert not holds_piece_of(body, AZURITE_KEY), path
            assert parse_qs(sas)["sig"][0] not in body and "sig=" not in body, path
            assert "AccountKey" not in body and "root:" not in body
    assert get("/", f"127.0.0.1:{port}", method="POST").status == 501  # reads only
    shown = json.loads(get("/api/state", f"127.0.0.1:{port}").read())
    assert shown["service"]["ok"] is True and shown["endpoint"] == azurite.endpoint


@pytest.mark.parametrize("service", ["answering", "hung"])
def test_ctrl_c_stops_it_at_once(start, env, service):
    """Even while its poller waits on a service that takes requests and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as hung:  # listens, never accepts
        if service == "hung":
            port = hung.getsockname()[1]
            env = {**env, CONNECTION_STRING_VAR: azurite_connection_string(port, blob_port=port)}
        proc = start(DASHBOARD, "--port", "0", env_=env)
        url = dashboard_url(proc)
        hung.settimeout(20)
        if service == "hung":  # the poller's first request is under way: nothing answers it
            held = hung.accept()[0]
        else:
            held = socket.socket()
            wait_until(lambda: polls(url) > 0, what="a first poll")
        with held:
            began = time.monotonic()
            assert proc.stop(signal.SIGINT) == 0
            assert time.monotonic() - began < 3
    assert proc.text.splitlines()[-1].endswith("] stopped")
    assert "Traceback" not in proc.text


# --- the page, in a browser -----------------------------------------------------------------


def test_tasks_show_and_drain_as_a_consumer_works_and_a_poison_reason_appears(
    start, service, page, ns, tmp_path
):
    queue = f"{ns}tasks-queue"
    put(service, queue, *({"id": f"task-{n}"} for n in range(6)))
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, "--traces", str(tmp_path / "none"))
    page.goto(dashboard_url(proc))
    expect(page.locator("#connection")).to_have_class("connection live")
    expect(row(page, queue).locator("td.messages")).to_have_text("6")
    expect(row(page, queue).locator("td.visible")).to_have_text("6")
    expect(page.locator("#queue-groups h3")).to_have_text("competing consumers")
    assert "OTEL_TRACES_EXPORTER=jsonl" in page.locator("#journeys").inner_text()  # no traces

    send(service, queue, "this is not JSON")
    start(CONSUMER, "--queue", queue, "--work-seconds", "0.2", "--idle-max", "0.2")
    expect(row(page, queue).locator("td.poison")).to_have_text("1")
    expect(row(page, queue).locator("td.messages")).to_have_text("0")
    reason = json.loads(peek_bodies(service, f"{queue}-poison")[0])["reason"]
    expect(page.locator("#poison-list .reason")).to_have_text([reason])
    expect(page.locator("#poison-list .body")).to_have_text(["this is not JSON"])
    depth = row(page, queue).locator("svg.depth polyline.messages")
    assert len(depth.get_attribute("points").split()) >= 2  # the depth, drawn as it fell
    assert row(page, queue).locator("svg.rate.net path.out").get_attribute("d") != "M0 0"
    assert page.dialogs == [] and page.errors == []


def test_hostile_text_shows_literally_and_runs_nothing(start, service, blobs, page, ns, tmp_path):
    """Bodies, reasons, ids, blob and service names from anyone who can write: text only."""
    poison = f"{ns}tasks-queue-poison"
    record = {"reason": HOSTILE[0] + "\x1b[31m", "source_queue": f"{ns}tasks-queue",
              "dequeue_count": 5, "poisoned_at": "2026-01-01T00:00:00+00:00",
              "message_id": HOSTILE[2],
              "body": json.dumps({"id": HOSTILE[2], "x": HOSTILE[1]})}  # fmt: skip
    put(service, poison, record, HOSTILE[1])  # and one that is not a record at all
    container = blobs.get_container_client("claim-check-payloads")
    if not container.exists():
        container.create_container()
    container.upload_blob(f"{ns}claim-check-queue/{HOSTILE[0]}", b"x")
    traces = tmp_path / "traces.jsonl"
    began = time.time_ns()
    spans = [
        {"trace_id": "a" * 32, "span_id": "1" * 16, "parent_id": None, "kind": "producer",
         "service": HOSTILE[1], "start_ns": began, "end_ns": began + 10**6,
         "attributes": {"app.id": HOSTILE[0], "messaging.destination.name": "q"}, "events": []},
        {"trace_id": "a" * 32, "span_id": "2" * 16, "parent_id": "1" * 16, "kind": "consumer",
         "service": HOSTILE[2], "start_ns": began + 5 * 10**6, "end_ns": began + 9 * 10**6,
         "attributes": {"messaging.destination.name": "q", "queue.wait_ms": 4.0,
                        "outcome": "poisoned"},
         "events": [{"name": "poisoned", "attributes": {"reason": HOSTILE[0]}}]},
    ]  # fmt: skip
    traces.write_text("".join(json.dumps(span) + "\n" for span in spans))
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, "--traces", str(traces),
                 "--orphan-age", "0")  # fmt: skip
    page.goto(dashboard_url(proc))
    expect(page.locator("#poison-list .record")).to_have_count(2)
    expect(page.locator("#blob-list .orphan")).to_contain_text(HOSTILE[0])
    page.locator("#journey-list .journey").first.click()
    expect(page.locator("#journey-detail .hop")).to_have_count(2)

    shown = page.locator("body").inner_text()
    for text in (*HOSTILE, "\\x1b[31m"):
        assert text in shown, text
    assert page.locator("img").count() == 0  # the one in the favicon link is not an element
    assert page.locator("script").count() == 1  # app.js
    assert page.locator("[onerror], [onmouseover]").count() == 0
    assert page.dialogs == [] and page.errors == []


def test_journeys_of_a_traced_run_slowest_marked_and_a_click_shows_its_hops(
    start, env, page, ns, tmp_path
):
    queue = f"{ns}tasks-queue"
    traces = tmp_path / "traces.jsonl"
    traced = {**env, "OTEL_TRACES_EXPORTER": "jsonl", "OTEL_TRACES_FILE": str(traces)}
    sent = run_script(PRODUCER, "--queue", queue, "--count", "3", env=traced)
    assert sent.returncode == 0, sent
    consumer = start(CONSUMER, "--queue", queue, "--work-seconds", "0.05", "--idle-max", "0.2",
                     env_=traced)  # fmt: skip
    consumer.wait_for(r"\] done ", count=3)
    assert consumer.stop() == 0
    later = run_script(PRODUCER, "--queue", queue, "--count", "1", env=traced)  # none takes it
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, "--traces", str(traces))
    page.goto(dashboard_url(proc))
    journeys = page.locator("#journey-list .journey")
    expect(journeys).to_have_count(4)
    expect(page.locator("#journey-list .slowest")).to_have_count(1)  # of the 3 that ended
    ids = [journey.split()[0] for journey in journeys.all_inner_texts()]
    assert ids[0] == re.findall(r"\] sent (\S+)$", later.stdout, re.MULTILINE)[0]  # newest
    assert set(ids[1:]) == set(re.findall(r"\] sent (\S+)$", sent.stdout, re.MULTILINE))
    expect(page.locator("#journey-list .waiting")).to_have_text([f"now waiting in {queue}"])
    expect(journeys.nth(0).locator(".waiting")).to_have_count(1)
    slowest = page.locator("#journey-list .journey", has=page.locator(".slowest"))
    slowest.click()
    hops = page.locator("#journey-detail .hop")
    expect(hops).to_have_count(2)
    assert "sends" in hops.nth(0).inner_text() and queue in hops.nth(0).inner_text()
    assert "consumer" in hops.nth(1).inner_text() and "done" in hops.nth(1).inner_text()
    assert page.locator("#journey-detail svg.gantt rect.work").count() >= 2
    moved = row(page, queue).locator("svg.rate.traced")  # the spans tell in and out apart
    expect(moved.locator("text")).to_have_text(re.compile(r"^traced ±[123]/s$"))
    assert moved.locator("path.in").get_attribute("d") != "M0 0"
    assert moved.locator("path.out").get_attribute("d") != "M0 0"
    assert page.dialogs == [] and page.errors == []


# --- an emulator of its own: restarted, and its access log counted ----------------------------


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory):
    """An emulator only these tests use, on ports that stay the same across its restarts."""
    log = tmp_path_factory.mktemp("dashboard") / "access.log"
    port = free_port()
    emulator = Azurite(port=port, blob_port=free_port(besides=port), log_path=log)
    emulator.start()
    yield emulator
    emulator.stop()


def test_the_page_survives_an_emulator_restart(start, own_azurite, page, ns):
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, env_=env_for(own_azurite))
    page.goto(dashboard_url(proc))
    connection = page.locator("#connection")
    expect(connection).to_have_class("connection live")
    own_azurite.stop()
    expect(connection).to_have_class("connection down")
    expect(connection).to_contain_text("cannot reach the queue service")
    own_azurite.start()  # in memory: it comes back empty
    queue = f"{ns}tasks-queue"
    service = own_azurite_service(own_azurite)
    put(service, queue, {"id": "after-restart"}, {"id": "after-restart-2"})
    expect(connection).to_have_class("connection live")
    expect(row(page, queue).locator("td.messages")).to_have_text("2")
    assert proc.popen.poll() is None
    assert page.dialogs == [] and page.errors == []


def own_azurite_service(emulator: Azurite):
    from azure.storage.queue import QueueServiceClient

    return QueueServiceClient.from_connection_string(emulator.connection_string)


def test_a_second_tab_costs_the_storage_service_nothing_more(
    start, own_azurite, page, chromium, ns
):
    """Requests to the queue service per second, from its access log, with one tab open and
    then with two: one poller serves both."""
    service = own_azurite_service(own_azurite)
    for name in ("tasks-queue", "tasks-high-priority"):
        put(service, f"{ns}{name}", {"id": "x"})
    proc = start(DASHBOARD, "--port", "0", "--prefix", ns, env_=env_for(own_azurite))
    url = dashboard_url(proc)
    log = Path(own_azurite.log_path)

    def rate() -> tuple[float, float]:
        """(requests/s to the queue service, polls/s), over 3 polls from the end of one."""
        first = polls(url)
        wait_until(lambda: polls(url) > first, what="a poll")  # it waits a second now
        lines, first, began = len(log.read_bytes().splitlines()), polls(url), time.monotonic()
        wait_until(lambda: polls(url) >= first + 3, what="3 polls")
        seconds = time.monotonic() - began
        return (len(log.read_bytes().splitlines()) - lines) / seconds, 3 / seconds

    page.goto(url)
    expect(page.locator("#footer")).to_contain_text("(1 open tab now)")
    one, polls_one = rate()
    second = chromium.new_page()
    try:
        second.goto(url)
        expect(page.locator("#footer")).to_contain_text("(2 open tabs now)")
        two, polls_two = rate()
    finally:
        second.close()
    assert one > 0 and polls_one < 1.5 and polls_two < 1.5  # about once a second, tabs or not
    assert two < 1.5 * one, (one, two)  # not twice as many


# --- what it keeps in memory (in-process) ---------------------------------------------------


def span_line(trace: int, app_id: str) -> str:
    began = time.time_ns()
    return json.dumps({
        "trace_id": f"{trace:032x}", "span_id": f"{trace:016x}", "parent_id": None,
        "kind": "producer", "service": "producer", "start_ns": began, "end_ns": began + 1000,
        "attributes": {"app.id": app_id, "messaging.destination.name": "q"}, "events": [],
    }) + "\n"  # fmt: skip


def test_the_traces_file_is_read_as_it_grows_and_only_the_latest_are_kept(tmp_path):
    path = tmp_path / "traces.jsonl"
    traces = dashboard.Traces(path)
    assert traces.read() is False and traces.journeys() == []  # no file yet
    path.write_text(span_line(1, "first") + '{"cut short')
    assert traces.read() is True
    assert [j["id"] for j in traces.journeys()] == ["first"]  # the half line waits
    with path.open("a") as file:
        file.write('"}\n' + "".join(span_line(n, f"id-{n}") for n in range(2, 400)))
    assert traces.read() is True
    assert traces.skipped == 1  # the line that was cut short is no span
    assert len(traces.spans) == dashboard.TRACES_KEPT  # the oldest forgotten
    shown = [j["id"] for j in traces.journeys()]
    assert len(shown) == dashboard.JOURNEYS_SHOWN and shown[0] == "id-399"
    assert traces.read() is False  # nothing new: nothing read
    assert sum(sent for _, sent, _ in traces.traffic()["q"]) == 399  # sent to q, per second
    path.write_text(span_line(7, "anew"))  # a new file (removed and written again)
    traces.read()
    assert [j["id"] for j in traces.journeys()] == ["anew"]
    assert [moved[1:] for moved in traces.traffic()["q"]] == [[1, 0]]


def test_a_queue_gone_is_forgotten_and_each_history_is_capped(tmp_path):
    poller = dashboard.Poller(None, "", 60, tmp_path / "none", logging.getLogger("t"))
    for n in range(500):
        queues = ["tasks-queue"] + ([f"reply-{n}"] if n % 2 else [])  # reply queues come and go
        poller._remember(n, [status.Row("x", name, n, n, None) for name in queues])
    assert set(poller.history) == {"tasks-queue", "reply-499"}
    assert len(poller.history["tasks-queue"]) == dashboard.WINDOW / dashboard.INTERVAL + 5
    assert poller.state(since=497)["history"]["tasks-queue"] == [
        [498, 498, 498, None],
        [499, 499, 499, None],
    ]


def test_a_journey_waits_only_in_a_queue_that_a_traced_consumer_takes_from(tmp_path):
    """A request taken and answered (its reply taken by the untraced requestor), a request
    not taken yet, and an order rejected to queue-rejected (which nobody takes from)."""
    began = time.time_ns()

    def span(trace: int, n: int, kind: str, queue: str, parent: int | None = None) -> dict:
        return {"trace_id": f"{trace:032x}", "span_id": f"{trace:08x}{n:08x}",
                "parent_id": None if parent is None else f"{trace:08x}{parent:08x}",
                "kind": kind, "service": kind, "start_ns": began + n * 10**6,
                "end_ns": began + n * 10**6 + 1000, "events": [],
                "attributes": {"app.id": f"id-{trace}", "messaging.destination.name": queue,
                               "queue.wait_ms": 0.0, "outcome": "done"}}  # fmt: skip

    spans = [
        span(1, 1, "producer", "request-queue"),
        span(1, 2, "consumer", "request-queue", parent=1),
        span(1, 3, "producer", "reply-1a2b", parent=2),  # the reply, sent while working
        span(2, 1, "producer", "request-queue"),
        span(3, 1, "producer", "queue-validate"),
        span(3, 2, "consumer", "queue-validate", parent=1),
        span(3, 3, "producer", "queue-rejected", parent=2),
    ]
    path = tmp_path / "traces.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in spans))
    traces = dashboard.Traces(path)
    traces.read()
    waiting = {j["id"]: j["waiting"] for j in traces.journeys()}
    assert waiting == {"id-1": "", "id-2": "request-queue", "id-3": ""}
