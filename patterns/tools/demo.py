"""Run every pattern end to end against a private, in-memory Azurite, then print a summary.

    make demo                         # or: python -m patterns.tools.demo

Each script runs as a real subprocess, exactly as in the walkthrough; every output line is
prefixed with the script's role. Exit 0 only if every pattern passed its check.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from patterns.emulator import Azurite
from patterns.helper import CONNECTION_STRING_VAR, Fatal, run
from patterns.tools.runner import Proc

_print_lock = threading.Lock()


def echo(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


@dataclass
class Row:
    pattern: str
    sent: int
    processed: int
    seconds: float
    ok: bool
    detail: str = ""


class Stage:
    """Starts the scripts of one scenario and stops every one of them, whatever happens."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.procs: list[Proc] = []

    def start(self, module: str, *args: str, label: str) -> Proc:
        proc = Proc(module, *args, env=self.env, label=label, echo=echo)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> list[int]:
        """Ctrl+C to every script at once, then collect their exit codes (in start order)."""
        for proc in self.procs:
            proc.send_signal()
        return [proc.stop() for proc in self.procs]


@contextlib.contextmanager
def stage(env: dict[str, str]) -> Iterator[Stage]:
    current = Stage(env)
    try:
        yield current
    finally:
        current.stop_all()


def competing_consumers(env: dict[str, str]) -> Row:
    """3 consumers share 20 tasks; every task is done once, by more than one consumer."""
    count, consumers, work_seconds = 20, 3, "0.5"
    with stage(env) as s:
        workers = [
            s.start(
                "patterns.competing_consumers.consumer",
                *("--work-seconds", work_seconds),
                label=f"consumer-{n}",
            )
            for n in range(1, consumers + 1)
        ]
        for worker in workers:
            worker.wait_for(r"waiting for tasks")
        started = time.perf_counter()
        producer = s.start(
            "patterns.competing_consumers.producer", "--count", str(count), label="producer"
        )
        producer_ok = producer.wait(60) == 0
        sent = {m.group(1) for m in producer.matches(r"sent (task-\S+)$")}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(len(w.matches(r"done (task-\S+)")) for w in workers) >= count:
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        exits = s.stop_all()[:consumers]
    done = [m.group(1) for w in workers for m in w.matches(r"done (task-\S+)")]
    busy = sum(1 for w in workers if w.matches(r"done task-"))
    ok = (
        producer_ok
        and len(sent) == count
        and sorted(done) == sorted(sent)
        and busy > 1
        and exits == [0] * consumers
    )
    detail = f"{busy} of {consumers} consumers shared the work"
    return Row("competing consumers", len(sent), len(done), seconds, ok, detail)


# Later patterns add their scenario here, in the walkthrough's order.
SCENARIOS: dict[str, Callable[[dict[str, str]], Row]] = {
    "competing-consumers": competing_consumers,
}


def print_summary(rows: list[Row]) -> None:
    echo("")
    echo(f"{'pattern':<22} {'sent':>5} {'processed':>9} {'seconds':>8}  result")
    for row in rows:
        result = "ok" if row.ok else "FAILED"
        echo(
            f"{row.pattern:<22} {row.sent:>5} {row.processed:>9} {row.seconds:>8.1f}  {result}"
            + (f"  ({row.detail})" if row.detail else "")
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", choices=sorted(SCENARIOS), action="append", help="run just these patterns"
    )
    args = parser.parse_args()
    chosen = [name for name in SCENARIOS if not args.only or name in args.only]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, Azurite(log_path=Path(tmp) / "azurite.log") as az:
        echo(f"[demo] Azurite (in memory) on 127.0.0.1:{az.port}")
        env = {**os.environ, CONNECTION_STRING_VAR: az.connection_string}
        for name in chosen:
            echo(f"[demo] --- {name} ---")
            try:
                rows.append(SCENARIOS[name](env))
            except (TimeoutError, Fatal) as error:
                first = re.split(r"\n", str(error))[0]
                echo(f"[demo] {name} failed: {first}")
                rows.append(Row(name.replace("-", " "), 0, 0, 0.0, False, first))
    print_summary(rows)
    return 0 if rows and all(row.ok for row in rows) else 1


if __name__ == "__main__":
    run(main)
