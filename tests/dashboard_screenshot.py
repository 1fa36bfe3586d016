"""`make screenshot`: the hub's picture of the dashboard (docs/dashboard.png), taken by the
same headless Chromium as the browser tests, from a real run on a fresh in-memory Azurite:
three competing consumers draining a backlog (one task of it poisoned), a pipeline, priority
queues, traced so that the journeys show.

    python tests/dashboard_screenshot.py [docs/dashboard.png]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # browser.py, support.py beside us
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the patterns package

from azure.storage.queue import QueueServiceClient
from browser import browser, dashboard_url, polls
from support import env_for, run_script

from patterns.emulator import ROOT, Azurite
from patterns.runner import Proc, stop_all

WATCH = 40  # seconds of the run before the picture: the graphs need some history
CONSUMERS = [
    *[("patterns.competing_consumers.consumer", "--work-seconds", "2")] * 3,
    ("patterns.pipes_and_filters.validate", "--work-seconds", "0.4"),
    ("patterns.pipes_and_filters.enrich", "--work-seconds", "0.8"),
    ("patterns.pipes_and_filters.finalize",),
    ("patterns.priority.consumer", "--work-seconds", "0.5"),
    ("patterns.exactly_once.consumer", "--work-seconds", "0.3"),
    ("patterns.ordered.consumer", "--work-seconds", "0.2"),
]
SENDS = [  # (second of the run, what is sent then): bursts, so that queues fill and drain
    (0, "patterns.competing_consumers.producer", "--count", "30"),
    (2, "patterns.pipes_and_filters.producer", "--count", "12", "--invalid"),
    (5, "patterns.priority.producer"),
    (20, "patterns.pipes_and_filters.producer", "--count", "8"),
    (24, "patterns.priority.producer"),
    (28, "patterns.competing_consumers.producer", "--count", "24"),
    (8, "patterns.exactly_once.producer", "--count", "16", "--duplicates", "4"),
    (12, "patterns.ordered.producer", "--keys", "5", "--shuffle"),
]
SENDS.sort(key=lambda send: send[0])


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png")
    with (
        tempfile.TemporaryDirectory() as scratch,
        Azurite(log_path=Path(scratch) / "log") as azurite,
    ):
        traces = Path(scratch) / "traces.jsonl"
        env = {**env_for(azurite), "OTEL_TRACES_EXPORTER": "jsonl",
               "OTEL_TRACES_FILE": str(traces)}  # fmt: skip
        procs: list[Proc] = []
        try:
            dashboard = Proc("patterns.tools.dashboard", "--port", "0", "--traces", str(traces),
                             env=env_for(azurite))  # fmt: skip
            procs.append(dashboard)
            url = dashboard_url(dashboard)
            procs += [Proc(module, *args, env=env) for module, *args in CONSUMERS]
            queues = QueueServiceClient.from_connection_string(azurite.connection_string)
            queues.create_queue("tasks-queue")
            queues.get_queue_client("tasks-queue").send_message("{not json")  # to be poisoned
            with browser() as chromium:
                page = chromium.new_page(viewport={"width": 1200, "height": 900})
                page.goto(url)
                began, sends = time.monotonic(), list(SENDS)
                while time.monotonic() - began < WATCH:
                    while sends and sends[0][0] <= time.monotonic() - began:
                        _, module, *args = sends.pop(0)
                        result = run_script(module, *args, env=env)
                        assert result.returncode == 0, result
                    page.wait_for_timeout(250)
                slowest = page.locator("#journey-list .journey", has=page.locator(".slowest"))
                slowest.click()  # its hops, drawn below the list
                page.wait_for_timeout(300)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            print(f"{out}: the dashboard after {WATCH} s ({polls(url)} polls)", flush=True)
        finally:
            stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
