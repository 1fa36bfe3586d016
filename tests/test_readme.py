"""Keep the pages honest: every command they show exists, its flags exist, every script's
--help runs, every Japanese page shows exactly the same code blocks as its English twin, every
link and anchor lands (with GitHub's anchors), the hub lists its sections, and every lesson page
has the same parts in the same order (the template the next lessons follow). That the pages'
commands, run in order, print what the pages show is tests/test_walkthrough.py's."""

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
from walkthrough import pages as lesson_pages

from patterns.emulator import ROOT

HUB = ROOT / "README.md"
# Every English page: the hub, the docs/ pages, a page beside each lesson's code.
ENGLISH = [
    HUB,
    *sorted(p for p in (ROOT / "docs").glob("*.md") if not p.name.endswith(".ja.md")),
    *sorted((ROOT / "patterns").glob("*/README.md")),
]
PAGES = [page for en in ENGLISH for page in (en, en.with_name(en.stem + ".ja.md"))]
READMES = PAGES  # the checks below were written for the two READMEs; they now cover every page


def ja(page: Path) -> Path:
    return page.with_name(page.stem + ".ja.md")


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


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


@pytest.mark.parametrize("readme", READMES, ids=name)
def test_every_command_in_the_readme_exists(readme):
    assert readme.exists(), f"{readme.name} is missing"
    checked = 0
    for command in commands(readme):
        command = re.sub(r"^(?:[A-Z_]+=\S*\s+)+", "", command)  # NAME=value python ...
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
        elif PYTHON.match(words[0]) and not words[1].startswith(("-", "tests/")):
            path = ROOT / words[1]
            assert path.exists(), f"{readme.name}: no script for {command!r}"
            for flag in [w.split("=")[0] for w in words[2:] if w.startswith("--")]:
                assert flag in help_text(path), f"{readme.name}: {command!r}: unknown {flag}"
        checked += 1
    lesson = any(readme in (page, ja(page)) for page in lesson_pages())
    assert checked >= (5 if readme.parent == ROOT else 3 if lesson else 0)


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


@pytest.mark.parametrize("page", ENGLISH, ids=name)
def test_japanese_page_shows_the_same_code_blocks(page):
    english, japanese = code_blocks(page), code_blocks(ja(page))
    assert len(japanese) == len(english), (
        f"{name(ja(page))}: {len(japanese)} blocks, not {len(english)}"
    )
    for number, (en, jp) in enumerate(zip(english, japanese, strict=True), start=1):
        assert jp == en, f"{name(ja(page))}: code block {number} differs"


@pytest.mark.parametrize("page", ENGLISH, ids=name)
def test_pages_are_short(page):
    """The hub at most ~300 lines, every other page under ~250 (issue 21)."""
    most = 300 if page == HUB else 250
    for each in (page, ja(page)):
        lines = len(each.read_text(encoding="utf-8").splitlines())
        assert lines <= most, f"{name(each)}: {lines} lines"


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


def prose(text: str) -> str:
    """The text without its code blocks."""
    kept, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            kept.append(line)
    return "\n".join(kept)


def links(text: str) -> list[str]:
    """Every Markdown link target outside code blocks (not the web's)."""
    text = prose(text)
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if not re.match(r"https?:", t)]


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_link_and_anchor_lands(page):
    dead = []
    for target in links(page.read_text(encoding="utf-8")):
        path, _, anchor = target.partition("#")
        there = (page.parent / path).resolve() if path else page
        if not there.exists() or (
            anchor and there.suffix == ".md" and anchor not in {a for _, a in headings(there)}
        ):
            dead.append(target)
    assert dead == [], f"{name(page)}: dead links"


@pytest.mark.parametrize("hub", [HUB, ja(HUB)], ids=name)
def test_the_hub_lists_every_section_and_every_page(hub):
    text = hub.read_text(encoding="utf-8")
    top = text.split("\n## ", 1)[0]  # everything before the first section: the contents
    sections = [anchor for level, anchor in headings(hub) if level == 2]
    assert [s for s in sections if s not in anchor_links(top)] == [], f"{name(hub)}: not listed"
    linked = {(hub.parent / t.partition("#")[0]).resolve() for t in links(text)}
    suffix = ".ja.md" if hub.name.endswith(".ja.md") else ".md"
    every = {p.resolve() for p in PAGES if p.name.endswith(suffix) and p != hub}
    every = {p for p in every if suffix == ".ja.md" or not p.name.endswith(".ja.md")}
    assert every <= linked, f"{name(hub)} does not link {sorted(map(str, every - linked))}"


# Each lesson page: what it is (its title and the text under it), then these parts, as its
# H2 headings, in this order. The next lessons follow the same template.
PARTS = {
    ".md": [
        "What you will see",
        "Terminals",
        "What to notice",
        "Try this",
        "Trade-offs",
        "Where the production concerns live",
    ],
    ".ja.md": [
        "何が見えるか",
        "ターミナル",
        "注目ポイント",
        "試してみよう",
        "トレードオフ",
        "本番で必要なことの置き場所",
    ],
}
LESSONS = [page for en in lesson_pages() for page in (en, ja(en))]


@pytest.mark.parametrize("page", LESSONS, ids=name)
def test_every_lesson_page_has_the_same_parts_in_the_same_order(page):
    text = page.read_text(encoding="utf-8")
    parts = PARTS[".ja.md" if page.name.endswith(".ja.md") else ".md"]
    title, intro = text.split("\n## ", 1)[0].split("\n", 1)
    assert title.startswith("# ") and len(intro.strip()) > 100, "what it is, first"
    h2 = re.findall(r"^## (.+)$", prose(text), re.MULTILINE)
    assert h2 == parts, f"{name(page)}: its parts are {h2}"
