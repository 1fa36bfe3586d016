"""Shared test fixtures: one real Azurite per session (in memory, free port), unique queue
names per test, and scripts started as subprocesses that are always stopped afterwards."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.storage.queue import QueueClient, QueueServiceClient

from patterns.emulator import ROOT, Azurite
from patterns.helper.settings import CONNECTION_STRING_VAR
from patterns.tools.runner import Proc, stop_all

FIGURES = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    log = tmp_path_factory.mktemp("azurite") / "access.log"
    with Azurite(log_path=log) as emulator:
        yield emulator


@pytest.fixture
def env(azurite: Azurite) -> dict[str, str]:
    """The environment a learner's terminal would have, pointed at the test emulator."""
    return {**os.environ, CONNECTION_STRING_VAR: azurite.connection_string}


@pytest.fixture
def service(azurite: Azurite) -> QueueServiceClient:
    return QueueServiceClient.from_connection_string(azurite.connection_string)


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


def run_script(
    module: str, *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a script to completion, as `python -m module args`."""
    return subprocess.run(
        [sys.executable, "-u", "-m", module, *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def queue(service: QueueServiceClient, name: str) -> QueueClient:
    return service.get_queue_client(name)


def peek_bodies(service: QueueServiceClient, name: str) -> list[str]:
    """Bodies of the visible messages in a queue (up to 32), without taking them."""
    return [m.content for m in service.get_queue_client(name).peek_messages(max_messages=32)]


def message_count(service: QueueServiceClient, name: str) -> int:
    return service.get_queue_client(name).get_queue_properties().approximate_message_count


def requests_logged(azurite: Azurite, queue_name: str) -> int:
    """How many requests Azurite's access log shows for one queue's messages."""
    assert azurite.log_path is not None
    text = Path(azurite.log_path).read_text(errors="replace")
    return text.count(f"/{queue_name}/messages")


def assert_refused(
    result: subprocess.CompletedProcess[str], shown: str, exit_code: int = 2
) -> None:
    """An expected failure as a learner sees it: the exit code, one line that names the
    problem, and no traceback."""
    assert result.returncode == exit_code, result
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert shown in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """figures("2000 tasks in 8.1 s") -> one line in the "battery figures" section that ends
    the run: what a test measured (times, duplicates, where messages ended up), not asserted."""
    lines = request.config.stash.setdefault(FIGURES, [])
    return lambda text: lines.append(f"{request.node.name}: {text}")


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(FIGURES, [])
    if lines:
        terminalreporter.section("battery figures")
        for line in lines:
            terminalreporter.write_line(line)
