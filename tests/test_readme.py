"""Keep the READMEs honest: every command they show exists, its flags exist, every script's
--help runs, and the Japanese edition shows exactly the same code blocks as the English one."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from patterns.emulator import ROOT

READMES = [ROOT / "README.md", ROOT / "README.ja.md"]
FENCE = re.compile(r"^ *```")
PYTHON = re.compile(r"^(?:python3?|py|\.venv[/\\](?:bin|Scripts)[/\\]python)$")
SCRIPTS = sorted(
    path
    for folder in ("patterns", "bench")
    for path in (ROOT / folder).rglob("*.py")
    if '__name__ == "__main__"' in path.read_text()
)


def code_blocks(path: Path) -> list[str]:
    blocks, current = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def commands(path: Path) -> list[str]:
    """Command lines in code blocks, plus inline `python ...` / `make ...` spans."""
    text = path.read_text(encoding="utf-8")
    found = [
        line.strip()
        for block in code_blocks(path)
        for line in block.splitlines()
        if re.match(r"^\s*(make|python3?|py|\.venv[/\\])\b", line)
    ]
    found += re.findall(r"`((?:python3?|make) [^`]+)`", text)
    return [re.split(r"\s+# ", command)[0].strip() for command in found]  # drop comments


@cache
def help_text(script: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{script}: --help failed\n{result.stderr}"
    return result.stdout


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", text, flags=re.MULTILINE))


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_every_command_in_the_readme_exists(readme):
    assert readme.exists(), f"{readme.name} is missing"
    checked = 0
    for command in commands(readme):
        words = shlex.split(command.replace("\\", "/"))
        if words[0] == "make":
            assert set(words[1:2]) <= make_targets(), (
                f"{readme.name}: no make target in {command!r}"
            )
        elif PYTHON.match(words[0]) and words[1] == "-m":
            module = words[2]
            if module in {"pip", "venv", "pytest"}:
                continue
            path = ROOT / (module.replace(".", "/") + ".py")
            assert path.exists(), f"{readme.name}: no module for {command!r}"
            flags = [w.split("=")[0] for w in words[3:] if w.startswith("--")]
            for flag in flags:
                assert flag in help_text(path), f"{readme.name}: {command!r}: unknown {flag}"
        elif PYTHON.match(words[0]):
            path = ROOT / words[1]
            assert path.exists(), f"{readme.name}: no script for {command!r}"
            for flag in [w.split("=")[0] for w in words[2:] if w.startswith("--")]:
                assert flag in help_text(path), f"{readme.name}: {command!r}: unknown {flag}"
        checked += 1
    assert checked >= 20


# The option that names each script's queue(s): --help must offer it.
QUEUE_OPTION = {
    "competing_consumers/producer.py": "--queue",
    "competing_consumers/consumer.py": "--queue",
    "fanout/producer.py": "--prefix",
    "fanout/consumer.py": "--prefix",
    "priority/producer.py": "--prefix",
    "priority/consumer.py": "--prefix",
    "pipes_and_filters/producer.py": "--output",
    "pipes_and_filters/validate.py": "--input",
    "pipes_and_filters/enrich.py": "--input",
    "pipes_and_filters/finalize.py": "--input",
    "request_reply/requestor.py": "--queue",
    "request_reply/replier.py": "--queue",
}


def in_patterns(script: Path) -> str:
    """`competing_consumers/producer.py` for patterns/competing_consumers/producer.py."""
    return script.relative_to(ROOT).as_posix().removeprefix("patterns/")


def test_queue_option_table_names_real_scripts():
    assert set(QUEUE_OPTION) <= {in_patterns(path) for path in SCRIPTS}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_script_answers_help_when_run_as_a_file(script):
    text = help_text(script)
    assert "usage:" in text
    option = QUEUE_OPTION.get(in_patterns(script))
    assert option is None or option in text


def test_japanese_readme_shows_the_same_code_blocks():
    english, japanese = (code_blocks(path) for path in READMES)
    assert len(japanese) == len(english)
    for number, (en, ja) in enumerate(zip(english, japanese, strict=True), start=1):
        assert ja == en, f"code block {number} differs"
