"""`make demo` is part of every run: every lesson end to end, against an Azurite of its own."""

from __future__ import annotations

import re

from support import run_script

from patterns import demo


def test_the_demo_runs_every_lesson_and_every_row_is_ok():
    result = run_script("patterns.demo", timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    head = result.stdout.index("pattern                 sent processed  seconds  result")
    rows = [line for line in result.stdout[head:].splitlines()[1:] if line.strip()]
    assert len(rows) == len(demo.SCENARIOS), rows
    assert all(re.search(r"\d\s+ok\b", row) for row in rows), rows
    assert "Traceback" not in result.stdout + result.stderr
