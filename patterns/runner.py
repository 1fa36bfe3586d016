"""Run tutorial scripts as child processes, the way a learner runs them in terminals.

Used by the demo and the benchmarks (and the tests, which start scripts the same way): start
`python -u -m patterns...`, collect its output lines (optionally echoing them with a `[role]`
prefix), wait for a line, stop it by its PID. Also the checks the demo and the benchmarks make:
the time a log line was written, whether a queue exists; and `echo`, one whole line per print.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueServiceClient

from patterns.emulator import ROOT, die_with_parent

_print_lock = threading.Lock()


def echo(line: str) -> None:
    """Print a line and flush it; lines printed by several threads at once never mix."""
    with _print_lock:
        print(line, flush=True)


class Proc:
    def __init__(
        self,
        module: str,
        *args: str,
        env: dict[str, str],
        label: str = "",
        echo: Callable[[str], None] | None = None,
        own_group: bool = False,
    ) -> None:
        """`own_group`: a process group of its own, so a Ctrl+C typed in the terminal reaches
        only us, and we decide when (and whether) the child is asked to stop."""
        self.label = label or module.rsplit(".", 1)[-1]
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._echo = echo
        self.popen = subprocess.Popen(
            [sys.executable, "-u", "-m", module, *args],
            cwd=ROOT,
            env={**env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
            start_new_session=own_group,
        )
        self.pid = self.popen.pid
        self._asked = False  # has it been sent a stop signal?
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for raw in self.popen.stdout:
            line = raw.rstrip("\n")
            if self._echo is not None:
                self._echo(f"[{self.label}] {line}")
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def matches(self, pattern: str) -> list[re.Match[str]]:
        regex = re.compile(pattern)
        with self._changed:
            return [m for m in map(regex.search, self.lines) if m]

    def wait_for(self, pattern: str, timeout: float = 15.0, count: int = 1) -> list[re.Match[str]]:
        """Wait until `count` output lines match `pattern`; TimeoutError if they do not."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = self.matches(pattern)
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.popen.poll() is not None and not self._reader.is_alive()):
                    raise TimeoutError(
                        f"{self.label}: {count} line(s) matching {pattern!r} not seen; "
                        f"output so far:\n{self.text}"
                    )
                self._changed.wait(min(left, 0.2))

    def wait(self, timeout: float = 30.0) -> int:
        code = self.popen.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def send_signal(self, signum: int = signal.SIGINT) -> None:
        if self.popen.poll() is None:
            os.kill(self.pid, signum)
            self._asked = True

    def stop(self, signum: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Ask the process to stop (Ctrl+C by default) unless it was already asked - a second
        Ctrl+C means "stop at once" - and kill it if it does not stop in time."""
        if not self._asked:
            self.send_signal(signum)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.wait(5)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def stop_all(procs: list[Proc]) -> list[int]:
    """Ctrl+C to every process at once (so they stop in parallel), then their exit codes."""
    for proc in procs:
        proc.send_signal()
    return [proc.stop() for proc in procs]


def log_seconds(line: str) -> float:
    """The `HH:MM:SS.mmm` a script's log line carries, as seconds since midnight."""
    stamp = re.search(r"(\d\d:\d\d:\d\d\.\d{3})", line)
    assert stamp is not None, line
    parsed = datetime.strptime(stamp.group(1), "%H:%M:%S.%f")
    return parsed.hour * 3600 + parsed.minute * 60 + parsed.second + parsed.microsecond / 1e6


def queue_exists(service: QueueServiceClient, name: str) -> bool:
    try:
        service.get_queue_client(name).get_queue_properties()
    except ResourceNotFoundError:
        return False
    return True
