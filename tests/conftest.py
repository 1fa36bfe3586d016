"""Shared test fixtures: one real Azurite per session (in memory, free port), unique queue
names per test, and scripts started as subprocesses that are always stopped afterwards. The
shared functions are in support.py."""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from support import env_for

from patterns.emulator import Azurite
from patterns.helper.support.settings import MESSAGE_ENCODING_VAR
from patterns.runner import Proc, stop_all

# The suite runs in the default message encoding, whatever the shell or a .env says (the
# environment wins over .env); tests of base64 mode set it themselves.
os.environ[MESSAGE_ENCODING_VAR] = "text"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    log = tmp_path_factory.mktemp("azurite") / "access.log"
    with Azurite(log_path=log) as emulator:
        yield emulator


@pytest.fixture
def env(azurite: Azurite) -> dict[str, str]:
    """The environment a learner's terminal would have, pointed at the test emulator."""
    return env_for(azurite)


@pytest.fixture
def service(azurite: Azurite) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def blobs(azurite: Azurite) -> BlobServiceClient:
    """The test emulator's blob service (claim-check payloads, oversized poison records)."""
    return BlobServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def table_service(azurite: Azurite) -> TableServiceClient:
    """The test emulator's table service (the exactly-once and per-key order lessons)."""
    return TableServiceClient.from_connection_string(azurite.connection_string)


@pytest.fixture
def tname() -> str:
    """A table name no other test uses (letters and digits only, as table names must be)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def qname(request: pytest.FixtureRequest) -> str:
    """A queue name no other test uses (short enough to have a -poison queue)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:30]
    return f"t-{stem.strip('-')}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def start(env: dict[str, str]) -> Iterator[Callable[..., Proc]]:
    """start("patterns.x.consumer", "--queue", q) -> Proc; every Proc is stopped at the end."""
    procs: list[Proc] = []

    def _start(
        module: str, *args: str, label: str = "", env_: dict[str, str] | None = None
    ) -> Proc:
        proc = Proc(module, *args, env=env_ or env, label=label)
        procs.append(proc)
        return proc

    yield _start
    stop_all(procs)


@pytest.fixture
def disk_azurite(tmp_path: Path) -> Iterator[Azurite]:
    """An emulator of its own that keeps its data on disk (so it survives a restart), on a
    free port that stays the same across restarts."""
    emulator = Azurite(data_dir=tmp_path / "data", log_path=tmp_path / "azurite.log")
    with emulator:
        yield emulator


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
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """figures("2000 tasks in 8.1 s") -> one line in the "battery figures" section that ends
    the run: what a test measured (times, duplicates, where messages ended up), not asserted.
    Carried in the test's report, so that it reaches the summary from an xdist worker too."""
    return lambda text: request.node.user_properties.append(
        (FIGURE, f"{request.node.name}: {text}")
    )


FIGURE = "battery figure"
_figures: list[str] = []  # in the process that writes the summary (xdist's controller, or this)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _figures.extend(text for name, text in report.user_properties if name == FIGURE)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _figures:
        terminalreporter.section("battery figures")
        for line in _figures:
            terminalreporter.write_line(line)
