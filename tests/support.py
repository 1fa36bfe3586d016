"""What the tests share besides their fixtures (those are in conftest.py): run a script to the
end, the environment a script runs in, look into a queue, send a test message, wait for a
condition, the ids a script logged, and an expected failure as a learner sees it.

Checks that the demo and the benchmarks make too (does a queue exist, the time on a log line)
are in patterns/runner.py; tests import them from here, so there is one place to look.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from azure.storage.queue import QueueServiceClient

from patterns.emulator import ROOT, Azurite
from patterns.helper.support.settings import CONNECTION_STRING_VAR
from patterns.runner import Proc, log_seconds, queue_exists

__all__ = [
    "assert_refused",
    "env_for",
    "ids_logged",
    "learner_env",
    "log_seconds",
    "message_count",
    "peek_bodies",
    "queue_exists",
    "requests_logged",
    "run_script",
    "send",
    "wait_until",
]


def run_script(
    module: str,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a script to completion, as `python -m module args` (env: this process's when None;
    input: what is typed at its prompt)."""
    return subprocess.run(
        [sys.executable, "-u", "-m", module, *args],
        cwd=ROOT, env=env, input=input, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def env_for(azurite: Azurite) -> dict[str, str]:
    """The environment a learner's terminal would have, pointed at this emulator."""
    return {**os.environ, CONNECTION_STRING_VAR: azurite.connection_string}


def learner_env() -> dict[str, str]:
    """The environment without any storage setting of the developer's own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AZURE_STORAGE")}


def send(service: QueueServiceClient, name: str, body: Any, **kwargs: Any) -> None:
    """Send a message the way another client would: text exactly as given, anything else as
    JSON (kwargs: the SDK's, e.g. time_to_live)."""
    text = body if isinstance(body, str) else json.dumps(body)
    service.get_queue_client(name).send_message(text, **kwargs)


def peek_bodies(service: QueueServiceClient, name: str) -> list[str]:
    """Bodies of the visible messages in a queue (up to 32), without taking them."""
    return [m.content for m in service.get_queue_client(name).peek_messages(max_messages=32)]


def poison_reasons(service: QueueServiceClient, queue: str) -> list[str]:
    """The reasons of the poison records in `queue`-poison that a peek sees (up to 32), sorted."""
    peeked = service.get_queue_client(f"{queue}-poison").peek_messages(max_messages=32)
    return sorted(json.loads(message.content)["reason"] for message in peeked)


def message_count(service: QueueServiceClient, name: str) -> int:
    """Messages in a queue, invisible ones included."""
    return service.get_queue_client(name).get_queue_properties().approximate_message_count


def wait_until(
    condition: Callable[[], bool], timeout: float = 20.0, what: str = "the condition"
) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails, naming `what`, if it does
    not hold within `timeout` seconds."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - began


def ids_logged(proc: Proc, verb: str) -> list[str]:
    """The ids in a script's `<verb> <id>` lines, in order (`took`, `done`, ...)."""
    return [m.group(1) for m in proc.matches(rf"\] {verb} (\S+)")]


def assert_refused(
    result: subprocess.CompletedProcess[str], shown: str, exit_code: int = 2
) -> None:
    """An expected failure as a learner sees it: the exit code, one line that names the
    problem, and no traceback."""
    assert result.returncode == exit_code, result
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert shown in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def requests_logged(azurite: Azurite, queue_name: str) -> list[str]:
    """The lines of Azurite's access log for requests to one queue's messages (sends,
    receives, deletes), in the order they were served."""
    assert azurite.log_path is not None
    lines = Path(azurite.log_path).read_text(errors="replace").splitlines()
    return [line for line in lines if f"/{queue_name}/messages" in line]
