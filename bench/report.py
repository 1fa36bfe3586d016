"""The benchmark's table: rows of what was measured, against what, and whether it met its target.

Pure (no I/O but `machine()`), so that the Markdown and the ratio/target logic are unit-tested.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone

from patterns.emulator import ROOT

COLUMNS = ("what", "measured", "ceiling / ideal", "ratio", "target", "met?")


@dataclass(frozen=True)
class Target:
    """A figure's goal: `at_least` or `at_most` `limit`, on the ratio (or on the value itself
    when `on_value`)."""

    at_least: bool
    limit: float
    on_value: bool = False
    unit: str = ""

    def met(self, value: float | None, ratio: float | None) -> bool | None:
        figure = value if self.on_value else ratio
        if figure is None:
            return None
        return figure >= self.limit if self.at_least else figure <= self.limit

    def __str__(self) -> str:
        sign = "≥" if self.at_least else "≤"
        what = f"{self.limit:g}{self.unit}" if self.on_value else f"{self.limit:g}×"
        return f"{sign} {what}"


# The targets (DESIGN.md, "Performance and reliability targets").
DRAIN = Target(at_least=True, limit=0.8)
PRODUCER = Target(at_least=True, limit=0.8)
SCENARIO = Target(at_least=False, limit=1.03)
IDLE = Target(at_least=False, limit=1.0, on_value=True, unit=" req/s")


@dataclass(frozen=True)
class Row:
    what: str
    value: float | None  # None: not measured (`note` says why)
    unit: str
    ceiling: float | None = None  # what the value is compared with (same unit)
    target: Target | None = None
    note: str = ""  # shown instead of the value when it is None, else after it

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.ceiling:
            return None
        return self.value / self.ceiling

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.value, self.ratio)

    def cells(self) -> tuple[str, ...]:
        if self.value is None:
            measured = self.note or "not measured"
        else:
            measured = f"{number(self.value)} {self.unit}".strip()
            if self.note:
                measured += f"; {self.note}"
        ceiling = "" if self.ceiling is None else f"{number(self.ceiling)} {self.unit}".strip()
        ratio = "" if self.ratio is None else f"{self.ratio:.2f}"
        met = {None: "", True: "yes", False: "**no**"}[self.met]
        target = "" if self.target is None else str(self.target)
        return (self.what, measured, ceiling, ratio, target, met)


def number(value: float) -> str:
    """1234.5 -> '1,234'; 12.34 -> '12.3'; 0.456 -> '0.46': as many digits as mean something."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (cell.replace("|", "\\|") for cell in row.cells())
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def document(header: dict[str, str], rows: list[Row], notes: list[str]) -> str:
    """BENCHMARKS.md: when, where and how it ran, the table, then the notes."""
    missed = [row.what for row in rows if row.met is False]
    verdict = "every target met" if not missed else f"missed: {'; '.join(missed)}"
    parts = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python -m bench`); do not edit by hand. Every throughput "
        "figure is a ratio to a ceiling measured in the same run on the same endpoint, because "
        "absolute figures drift on a shared machine.",
        "",
        *(f"- **{key}**: {value}" for key, value in header.items()),
        "",
        markdown_table(rows),
        "",
        f"Targets: {verdict}.",
        "",
    ]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(parts)


def machine(endpoint: str, command: str, azurite: bool) -> dict[str, str]:
    """The header: when, on what machine, with which versions, against what, by what command."""
    model = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = "load average %.2f %.2f %.2f at the start" % os.getloadavg()  # noqa: UP031
    except OSError:
        load = ""
    azurite_version = "not used"
    if azurite:
        package = ROOT / "node_modules" / "azurite" / "package.json"
        azurite_version = json.loads(package.read_text())["version"]
    cpu = f"{os.cpu_count()} × {model}" + (f"; {load}" if load else "")
    return {
        "when": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": cpu,
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "azure-storage-queue": importlib.metadata.version("azure-storage-queue"),
        "Azurite": azurite_version,
        "endpoint": endpoint,
        "command": f"`{command}`",
    }
