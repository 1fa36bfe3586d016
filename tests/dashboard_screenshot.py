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

from browser import browser, dashboard_url, polls
from support import env_for, run_script

from patterns.emulator import ROOT, Azurite
from patterns.runner import Proc, stop_all

WATCH = 25  # seconds of the run before the picture: the graphs need some history


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png")
    with (
        tempfile.TemporaryDirectory() as scratch,
        Azurite(log_path=Path(scratch) / "log") as azurite,
    ):
        traces = Path(scratch) / "traces.jsonl"
        env = {**env_for(azurite), "OTEL_TRACES_EXPORTER": "jsonl",
               "OTEL_TRACES_FILE": str(traces)}  # fmt: skip
        quiet = {**env_for(azurite)}  # the dashboard itself traces nothing
        procs: list[Proc] = []
        try:
            dashboard = Proc("patterns.tools.dashboard", "--port", "0", "--traces", str(traces),
                             env=quiet)  # fmt: skip
            procs.append(dashboard)
            url = dashboard_url(dashboard)
            consumers = [("patterns.competing_consumers.consumer", "--work-seconds", "1.5")] * 3
            consumers += [
                ("patterns.pipes_and_filters.validate", "--work-seconds", "0.4"),
                ("patterns.pipes_and_filters.enrich", "--work-seconds", "0.8"),
                ("patterns.pipes_and_filters.finalize",),
                ("patterns.priority.consumer", "--work-seconds", "0.5"),
            ]
            for module, *args in consumers:
                procs.append(Proc(module, *args, env=env))
            for module, *args in [
                ("patterns.competing_consumers.producer", "--count", "30"),
                ("patterns.pipes_and_filters.producer", "--count", "12", "--invalid"),
                ("patterns.priority.producer",),
            ]:
                result = run_script(module, *args, env=env)
                assert result.returncode == 0, result
            from azure.storage.queue import QueueServiceClient  # one task nobody can read:

            queues = QueueServiceClient.from_connection_string(azurite.connection_string)
            queues.get_queue_client("tasks-queue").send_message("{not json")  # poisoned
            with browser() as chromium:
                page = chromium.new_page(viewport={"width": 1200, "height": 900})
                page.goto(url)
                began = time.monotonic()
                while time.monotonic() - began < WATCH:
                    page.wait_for_timeout(1000)
                slowest = page.locator("#journey-list .slowest")
                page.locator("#journey-list .journey", has=slowest).click()  # its hops, below
                page.wait_for_timeout(300)
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
            print(f"{out}: the dashboard after {WATCH} s ({polls(url)} polls)", flush=True)
        finally:
            stop_all(procs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
