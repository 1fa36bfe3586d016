"""Headless Chromium for the dashboard's browser tests and its screenshot (make screenshot):
Debian's `chromium` (`make test` installs it when missing), driven by Playwright for Python.
Playwright's own browser download is not used: it is pointed at that executable.
"""

from __future__ import annotations

import os
import re
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from patterns.runner import Proc

CHROMIUM_VAR = "DASHBOARD_CHROMIUM"  # another Chromium or Chrome binary
# Headless, nothing fetched from outside (no updates, no sync, no QUIC probes); no sandbox,
# which needs user namespaces that a container (and root) may not have. Playwright gives it a
# fresh profile (--user-data-dir) of its own each launch.
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
URL_LINE = r"\] dashboard at (http://127\.0\.0\.1:\d+/)"


def chromium() -> str:
    """The browser's executable; an error that says how to get one (the tests never skip)."""
    found = os.environ.get(CHROMIUM_VAR) or shutil.which("chromium")
    if not found:
        raise RuntimeError(
            "no Chromium for the dashboard's browser tests: `make test` installs it on Debian "
            "as root (apt-get install chromium); elsewhere install Chromium and set "
            f"{CHROMIUM_VAR} to its executable"
        )
    return found


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium, closed on leaving."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def dashboard_url(proc: Proc) -> str:
    """The URL a dashboard printed when it started."""
    return proc.wait_for(URL_LINE, timeout=20)[0].group(1)


def state(url: str) -> dict[str, Any]:
    """The dashboard's JSON, as a page gets it (no tab id: not counted as a tab)."""
    import json

    with urllib.request.urlopen(url + "api/state", timeout=5) as answer:
        return dict(json.load(answer))


def polls(url: str) -> int:
    return int(state(url)["polls"])


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]
