"""The lesson pages, walked in the hub's order on one emulator: every command a page shows runs
in its terminal, every expected-output block is compared with what the programs printed, and
every page ends with nothing left running (tests/walkthrough.py says how pages mark their
steps). Faster than a learner: where a page says `test:`, shorter work and waits, which change
when lines come, not what they say."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from walkthrough import ROOT, Piped, Walk, Warm, expected_lines, match, normal, pages, steps

from patterns.emulator import Azurite
from patterns.helper.support.settings import CONNECTION_STRING_VAR, MESSAGE_ENCODING_VAR


def test_the_lesson_pages_in_order_on_one_emulator(tmp_path: Path, figures) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with Azurite(log_path=tmp_path / "azurite.log") as azurite:
        base |= {CONNECTION_STRING_VAR: azurite.connection_string, MESSAGE_ENCODING_VAR: "text"}
        warm = Warm(base)
        walk = Walk(lambda name: Piped(name, base, tmp_path, warm), fast=True, expect_timeout=30)
        took = []
        try:
            for page in pages():
                started = time.monotonic()
                walk.page(page)
                took.append(f"{page.parent.name}/{page.name} {time.monotonic() - started:.0f} s")
        finally:
            walk.close()
            warm.close()
    figures("; ".join(took))


def test_the_hub_lists_every_lesson_page_with_the_toolbox_first():
    """A new lesson's page is walked once the hub's table links it (in the row's place)."""
    walked = pages()
    assert walked[0] == ROOT / "docs/toolbox.md"
    lessons = {page for page in ROOT.glob("patterns/*/README.md") if steps(page)}
    assert lessons - set(walked) == set(), "lesson pages the hub's table does not link"
    assert len(walked) >= 11


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_lesson_page_starts_clean_and_stops_what_it_started(page: Path):
    found = steps(page)
    first = found[0]
    lesson = first.block[0].split("--lesson ")[1].split()[0] if first.block else ""
    assert first.kind == "run" and first.block == [
        f"python patterns/tools/cleanup.py --lesson {lesson} --yes"
    ], f"{page}: its first command must empty its queues"
    started = {t for s in found if s.kind == "start" for t in s.terminals}
    stopped = {t for s in found if s.kind == "stop" for t in s.terminals}
    assert started <= stopped, f"{page}: started {started - stopped} and never stopped them"


def test_the_comparison_sees_what_the_issue_saw():
    """The leaks a learner met (issue 21) are differences the comparison does not forgive."""
    page = ["claim check  claim-check-queue         1        1       -"]
    real = ["claim check  claim-check-queue         2        2       -"]
    assert match(page, real, 0, False, {}) is None
    page = ["1 message(s) shown of about 1 in 'tasks-queue-poison' (peeked: nothing was taken)"]
    real = ["1 message(s) shown of about 2 in 'tasks-queue-poison' (peeked: nothing was taken)"]
    assert match(page, real, 0, False, {}) is None
    # what differs on every run is forgiven: times, pids, ids, ports, decimals
    page = ["04:34:04.705 producer[3810] sent 20 tasks to 'tasks-queue' in 0.08 s (242/s)"]
    real = ["11:02:09.001 producer[77] sent 20 tasks to 'tasks-queue' in 0.31 s (64/s)"]
    assert match(page, real, 0, False, {}) is not None
    assert normal("a at http://127.0.0.1:10001/x") == normal("a at http://127.0.0.1:54321/x")
    # an id the page shows stands for one id of the run throughout
    page = ["sent ORD-0268103e-001", "finished ORD-0268103e-001"]
    assert match(page, ["sent ORD-aaaaaaaa-001", "finished ORD-bbbbbbbb-001"], 0, False, {}) is None
    assert match(page, ["sent ORD-aaaaaaaa-001", "finished ORD-aaaaaaaa-001"], 0, False, {})
    # unordered: each line once, in any order (which of two tasks comes first varies)
    page = ["took task-001-aaaaaaaa", "took task-002-aaaaaaaa"]
    real = ["took task-002-bbbbbbbb", "x", "took task-001-bbbbbbbb"]
    assert match(page, real, 0, False, {}) is None
    assert match(page, real, 0, False, {}, unordered=True) == (3, [2, 0], {"aaaaaaaa": "bbbbbbbb"})
    assert match(page + page[:1], real, 0, False, {}, unordered=True) is None  # once each
    # loose: the words and the shape, not the counts
    assert normal("consumers 1 -> 5", loose=True) != normal("consumers 5", loose=True)
    assert expected_lines(["...", "x", "", "…"]) == ["x"]


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_stop_is_a_ctrl_c_the_page_asks_for(page: Path):
    """An output that ends with `stopped` comes after the text says to press Ctrl+C."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for step in steps(page):
        if step.kind == "stop":
            before = lines[max(0, step.line - 12) : step.line - 1]
            assert any("Ctrl+C" in line for line in before), f"{step.where()}: say Ctrl+C"
