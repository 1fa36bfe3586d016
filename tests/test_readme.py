"""Keep the READMEs honest: every command they show exists, its flags exist, every script's
--help runs, the Japanese edition shows exactly the same code blocks as the English one, the
table of contents links every section (with GitHub's anchors), and every pattern section has
the same parts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import unicodedata
from collections import Counter
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
    "load_leveling/producer.py": "--queue",
    "load_leveling/autoscaler.py": "--queue",
    "claim_check/producer.py": "--queue",
    "claim_check/consumer.py": "--queue",
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


# --- navigation: the table of contents, and the parts of each pattern section --------------


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case; letters, marks, digits, `_`, `-` and
    spaces kept, every other character (punctuation, symbols, full-width brackets) dropped;
    spaces become hyphens."""
    kept = (
        c
        for c in heading.lower()
        if c in "- "
        or unicodedata.category(c)[0] in "LM"
        or unicodedata.category(c) in ("Nd", "Nl", "Pc")
    )
    return "".join(kept).replace(" ", "-")


def test_github_slug_matches_what_github_does():
    assert github_slug("Request/reply") == "requestreply"
    assert github_slug("The toolbox: see, peek, redrive, clean up") == (
        "the-toolbox-see-peek-redrive-clean-up"
    )
    assert github_slug("Entra ID sign-in (no account key)") == "entra-id-sign-in-no-account-key"
    assert github_slug("パイプ＆フィルター") == "パイプフィルター"
    assert github_slug("make を使わない場合（Windows PowerShell も）") == (
        "make-を使わない場合windows-powershell-も"
    )


def headings(path: Path) -> list[tuple[int, str]]:
    """(level, anchor) of every Markdown heading outside code blocks, in order; a repeated
    anchor gets -1, -2 ... as on GitHub."""
    found, seen, fenced = [], Counter[str](), False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^(#{1,6}) +(.+?) *#* *$", line)
        if heading and not fenced:
            anchor = github_slug(heading[2])
            found.append((len(heading[1]), f"{anchor}-{seen[anchor]}" if seen[anchor] else anchor))
            seen[anchor] += 1
    return found


def anchor_links(text: str) -> list[str]:
    return re.findall(r"\]\(#([^)\s]+)\)", text)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
def test_the_table_of_contents_links_every_section_and_every_link_lands(readme):
    anchors = {anchor for _, anchor in headings(readme)}
    text = readme.read_text(encoding="utf-8")
    links = anchor_links(text)
    assert links, f"{readme.name}: no table of contents"
    assert [link for link in links if link not in anchors] == [], f"{readme.name}: dead links"
    top = text.split("\n## ", 1)[0]  # everything before the first section: the contents
    sections = [anchor for level, anchor in headings(readme) if level == 2]
    assert [s for s in sections if s not in anchor_links(top)] == [], f"{readme.name}: not listed"


# Each pattern section: what it is (the text under its heading), the terminals, what to
# notice, the trade-offs, what to try - in this order.
PARTS = {
    "README.md": ["**Terminal", "**What to notice**", "**Trade-offs", "**Try this**"],
    "README.ja.md": ["**ターミナル", "**注目ポイント**", "**トレードオフ", "**試してみよう**"],
}
PATTERNS = [
    "competing-consumers",
    "fanout",
    "priority",
    "pipes-and-filters",
    "request-reply",
    "load-leveling",
    "claim-check",
    "functions",
]


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.name)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_pattern_section_has_the_same_parts_in_the_same_order(readme, pattern):
    text = readme.read_text(encoding="utf-8")
    section = text.split(f"<!-- BEGIN {pattern} -->")[1].split(f"<!-- END {pattern} -->")[0]
    heading, *body = [line for line in section.splitlines() if line.strip()]
    assert heading.startswith("## ") and not body[0].startswith("**"), "what it is, first"
    where = [section.find(part) for part in PARTS[readme.name]]
    assert -1 not in where, f"{pattern}: missing {PARTS[readme.name][where.index(-1)]}"
    assert where == sorted(where), f"{pattern}: parts out of order"
