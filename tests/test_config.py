"""Bad configuration, as a learner meets it: every case against a producer and a consumer run as
subprocesses. Each must end in one line on stderr and exit 2, with no traceback, and the key
must never be shown. Also: a service that hangs while a consumer runs, and the emulator's port.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import pytest
from azure.storage.queue import (
    AccountSasPermissions,
    QueueClient,
    ResourceTypes,
    generate_account_sas,
)
from conftest import assert_refused

from patterns.emulator import ROOT, Azurite, free_port
from patterns.helper.settings import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    AZURITE_PORT,
    CONNECTION_STRING_VAR,
)
from patterns.tools.runner import Proc

PRODUCER = "patterns.competing_consumers.producer"
CONSUMER = "patterns.competing_consumers.consumer"
KEY = base64.b64encode(
    hashlib.sha512(b"issue 10: a key that must never be shown").digest()
).decode()
# A run of 20+ base64 characters with a digit or + or / in it: what a key (or a part of one)
# looks like. Plain words such as "DefaultEndpointsProtocol" are not keys, and neither is an
# endpoint's path (".../10001/devstoreaccount1"; a query, where a SAS token would be, is kept).
KEY_LIKE = re.compile(r"(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{20,}")
ENDPOINT = re.compile(r"https?://[^\s?]+")


def key_like(output: str) -> list[str]:
    pieces = {KEY[i : i + 20] for i in range(len(KEY) - 19)}
    return [p for p in pieces if p in output] + KEY_LIKE.findall(ENDPOINT.sub("", output))


def conn(port: str, key: str = KEY) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"QueueEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


# id: (AZURE_STORAGE_CONNECTION_STRING or None for unset, .env text or None,
#      what the one error line says, what stdout says before it)
# Placeholders: {key}, and the ports {azurite} (the session's), {dead} (nothing listens),
# {hung} (accepts, never answers), {web} (a web server answering 200 to everything).
CASES = {
    "malformed": ("AccountKey={key};nonsense", None, "part 2 of 2 is not Name=value", ""),
    "key-only": ("{key}", None, "looks like an account key on its own", ""),
    "space-before-equals": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey ={key};"
        "EndpointSuffix=core.windows.net",
        None,
        "part 3 of 4 has a space around 'AccountKey'",
        "",
    ),
    "wrong-key": (conn("{azurite}"), None, "refused our credentials", ""),
    "dead-port": (
        conn("{dead}"),
        None,
        "cannot reach the queue service at http://127.0.0.1:{dead}/devstoreaccount1 - ",
        "",
    ),
    "hung-port": (conn("{hung}"), None, "does not answer (nothing in 5 s)", ""),
    "not-a-queue-service": (conn("{web}"), None, "is not a queue service (HTTP 200", ""),
    "empty-variable": (
        "",
        None,
        f"cannot reach the queue service at http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1",
        f"warning: {CONNECTION_STRING_VAR} is set but empty in the environment: ignored",
    ),
    "bad-dotenv": (
        None,
        '# my settings\n\nAZURE_STORAGE_CONNECTION_STRING: "' + conn("{azurite}") + '"\n',
        f"cannot reach the queue service at http://127.0.0.1:{AZURITE_PORT}/devstoreaccount1",
        ".env line 3 is unreadable",
    ),
}
FALLS_BACK = {"empty-variable", "bad-dotenv"}  # to the local emulator on the default port
SLOW = {"hung-port"}  # waits out the read timeout


@pytest.fixture(scope="module")
def hung_port() -> Iterator[int]:
    """A port that accepts connections and never answers (the kernel accepts for us)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


class _WebPage(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def web_port() -> Iterator[int]:
    """A web server that answers 200 and a page to every request: not a queue service."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WebPage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


@pytest.fixture
def default_port_refused() -> Iterator[None]:
    """Port 10001 bound but not listening, so a fallback to the default emulator is refused
    at once, whatever else this machine runs."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", AZURITE_PORT))
        except OSError:
            pytest.skip(f"port {AZURITE_PORT} is in use here: the fallback would reach it")
        yield


def learner_env() -> dict[str, str]:
    """The environment without any storage setting of the developer's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}


def run_both(
    env: dict[str, str], cwd: Path, queue: str
) -> dict[str, tuple[subprocess.CompletedProcess[str], float]]:
    """Run the producer and the consumer at the same time: each one's result, and how long
    it took at most."""
    began = time.monotonic()
    procs: dict[str, subprocess.Popen[str]] = {}
    results = {}
    try:
        for module in (PRODUCER, CONSUMER):
            procs[module] = subprocess.Popen(
                [sys.executable, "-u", "-m", module, "--queue", queue], cwd=cwd, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        for module, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            results[module] = (result, time.monotonic() - began)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in CASES],
)
def test_bad_configuration_is_one_line_exit_2_and_never_shows_the_key(
    case, request, azurite, hung_port, web_port, qname, tmp_path
):
    if case in FALLS_BACK:
        request.getfixturevalue("default_port_refused")
    value, dotenv, shown, said = CASES[case]
    fill = {"key": KEY, "azurite": azurite.port, "dead": free_port(), "hung": hung_port}
    fill["web"] = web_port
    env = learner_env()
    if value is not None:
        env[CONNECTION_STRING_VAR] = value.format(**fill)
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv.format(**fill))
    shown = shown.format(**fill)

    for module, (result, took) in run_both(env, tmp_path, qname).items():
        assert_refused(result, shown)
        assert said in result.stdout, result.stdout
        output = result.stdout + result.stderr
        assert key_like(output) == [], output
        assert took < 10, f"{module} took {took:.1f} s to say what is wrong"


@pytest.mark.slow
def test_a_consumer_warns_when_the_service_hangs_and_carries_on_after(tmp_path, qname):
    """Azurite paused (SIGSTOP) takes requests but answers none: the running consumer warns,
    a script started meanwhile says so within 10 s, and after SIGCONT all is well again."""
    emulator = Azurite(log_path=tmp_path / "azurite.log")  # our own: the session's must run on
    env = {**learner_env(), CONNECTION_STRING_VAR: emulator.connection_string}
    with emulator:
        assert emulator.process is not None
        consumer = Proc(CONSUMER, "--queue", qname, "--work-seconds", "0", env=env)
        paused = False
        try:
            consumer.wait_for("waiting for tasks")
            os.kill(emulator.process.pid, signal.SIGSTOP)
            paused, began = True, time.monotonic()
            late = subprocess.run(
                [sys.executable, "-u", "-m", PRODUCER, "--queue", qname, "--count", "1"],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            started_late = time.monotonic() - began
            assert_refused(late, "does not answer (nothing in 5 s)")
            assert started_late < 10, f"the producer took {started_late:.1f} s to say so"

            consumer.wait_for("warning: the queue service at .* does not answer", timeout=20)
            warned = time.monotonic() - began
            assert warned < 20, f"the consumer warned after {warned:.1f} s"  # ~11 s; margin

            os.kill(emulator.process.pid, signal.SIGCONT)
            paused = False
            consumer.wait_for("the queue service answers again", timeout=15)
            QueueClient.from_connection_string(env[CONNECTION_STRING_VAR], qname).send_message(
                json.dumps({"id": "after-the-hang"})
            )
            consumer.wait_for("done after-the-hang")
            assert consumer.stop() == 0
            assert "Traceback" not in consumer.text
        finally:
            if paused:
                os.kill(emulator.process.pid, signal.SIGCONT)
            consumer.kill()


# --- the emulator's port ------------------------------------------------------------------

EMULATOR = [sys.executable, "-m", "patterns.emulator", "--in-memory", "--port"]


def test_emulator_on_another_port_prints_the_line_that_points_the_scripts_at_it(qname):
    port = free_port()
    emulator = Proc("patterns.emulator", "--in-memory", "--port", str(port), env=learner_env())
    try:
        emulator.wait_for(f"ready on http://127.0.0.1:{port}/devstoreaccount1", timeout=30)
        [bash] = emulator.wait_for(rf'^  export {CONNECTION_STRING_VAR}="(.+)"$')
        emulator.wait_for(rf'^  \$env:{CONNECTION_STRING_VAR}="{re.escape(bash[1])}"$')
        # The line works: with it, a script reaches this emulator.
        env = {**learner_env(), CONNECTION_STRING_VAR: bash[1]}
        result = subprocess.run(
            [sys.executable, "-m", PRODUCER, "--queue", qname, "--count", "1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert f"sent 1 tasks to '{qname}'" in result.stdout
        assert emulator.stop() == 0
    finally:
        emulator.kill()


def test_port_taken_by_an_azurite_says_use_it(azurite):
    result = subprocess.run(
        [*EMULATOR, str(azurite.port)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert_refused(result, f"port {azurite.port} is already in use by an Azurite")
    assert "use it" in result.stderr
    assert f'export {CONNECTION_STRING_VAR}="{azurite.connection_string}"' in result.stdout


def test_port_taken_by_another_program_says_how_to_pick_another(web_port):
    result = subprocess.run(
        [*EMULATOR, str(web_port)], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert_refused(result, f"port {web_port} is already in use by another program")
    suggested = int(re.search(r"--port (\d+)", result.stderr)[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", suggested))  # the suggestion is free
    assert "point the scripts at it" in result.stderr


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
    env = {
        **learner_env(),
        CONNECTION_STRING_VAR: f"QueueEndpoint={azurite.endpoint};SharedAccessSignature={sas}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "patterns.tools.status"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"at {azurite.endpoint} " in result.stdout
    signature = parse_qs(sas)["sig"][0]
    assert signature not in result.stdout + result.stderr
    assert "sig=" not in result.stdout + result.stderr
