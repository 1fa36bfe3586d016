"""Every checked flag of every script, refused before the script talks to anyone.

One table: each numeric flag with values just outside its range (and one that is no number),
each queue flag with a name its consumers could not use. A bad value must give one line on
stderr that names the flag, exit 2, no traceback - and not one connection to the service:
each run points the script at a socket of its own that listens and never answers, and the
test checks that nobody knocked. A second test keeps the table complete: every flag a
script's parser checks must have a row here.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import NamedTuple

import pytest
from support import assert_refused, message_count, run_script

from patterns.emulator import ROOT
from patterns.helper.support.flags import Range
from patterns.helper.support.settings import CONNECTION_STRING_VAR, azurite_connection_string

CONSUMED = "q" * 57  # a valid queue name, but one too long for its -poison queue (64 > 63)


class Case(NamedTuple):
    module: str
    flag: str  # "--count", or the name of a positional argument ("queue")
    value: str
    before: tuple[str, ...] = ()  # what the script needs besides (required options)

    @property
    def argv(self) -> list[str]:
        given = [self.value] if not self.flag.startswith("-") else [self.flag, self.value]
        return [*self.before, *given]

    @property
    def id(self) -> str:
        return f"{self.module.removeprefix('patterns.')} {self.flag} {self.value[:12]}"


def consumer_flags(module: str, *before: str, work: bool = True) -> list[Case]:
    """The options of cli.add_consumer_arguments, out of range."""
    rows = [
        ("--batch-size", "0"),
        ("--batch-size", "33"),
        ("--visibility-timeout", "0"),
        ("--visibility-timeout", "604801"),
        ("--visibility-timeout", "1.5"),
        ("--max-attempts", "0"),
        ("--idle-max", "0"),  # was a hot loop
        ("--idle-max", "61"),
        ("--retry-backoff", "-1"),
        ("--retry-backoff", "3601"),
        ("--retry-backoff", "0.5"),
        ("--retry-backoff-max", "0"),
    ]
    if work:
        rows += [("--work-seconds", "-1"), ("--work-seconds", "nan"), ("--work-seconds", "3601")]
    return [Case(module, flag, value, before) for flag, value in rows]


CC, FO, PR, PF, RR, LL, CK, EO, OR, TOOLS = (
    "patterns.competing_consumers",
    "patterns.fanout",
    "patterns.priority",
    "patterns.pipes_and_filters",
    "patterns.request_reply",
    "patterns.load_leveling",
    "patterns.claim_check",
    "patterns.exactly_once",
    "patterns.ordered",
    "patterns.tools",
)
SUBSCRIBER = ("--subscriber", "a")

CASES: list[Case] = [
    Case(f"{CC}.producer", "--queue", CONSUMED),
    Case(f"{CC}.producer", "--count", "-1"),  # was "sent -1 tasks (-26917/s)", exit 0
    Case(f"{CC}.producer", "--count", "0"),
    Case(f"{CC}.producer", "--count", "ten"),
    Case(f"{CC}.producer", "--concurrency", "0"),  # was a traceback
    Case(f"{CC}.producer", "--concurrency", "65"),
    Case(f"{CC}.producer", "--failing", "-1"),
    Case(f"{CC}.producer", "--delay", "-1"),
    Case(f"{CC}.producer", "--delay", "604801"),  # more than the 7 days the service allows
    Case(f"{CC}.consumer", "--queue", CONSUMED),
    Case(f"{CC}.consumer", "--queue", "Bad_Name"),
    *consumer_flags(f"{CC}.consumer"),
    Case(f"{CC}.consumer", "--concurrency", "0"),
    Case(f"{CC}.consumer", "--concurrency", "65"),
    Case(f"{CC}.consumer", "--concurrency", "abc"),
    Case(f"{FO}.producer", "--retries", "-1"),
    Case(f"{FO}.consumer", "--remember", "0", SUBSCRIBER),
    *consumer_flags(f"{FO}.consumer", *SUBSCRIBER),
    Case(f"{PR}.producer", "--count", "0"),
    Case(f"{PR}.producer", "--priority", "urgent"),
    Case(f"{PR}.consumer", "--starvation-guard", "-1"),
    Case(f"{PR}.consumer", "--age-after", "604801"),
    Case(f"{PR}.consumer", "--levels", "high,urgent"),
    *consumer_flags(f"{PR}.consumer"),
    Case(f"{PF}.producer", "--output", CONSUMED),
    Case(f"{PF}.producer", "--count", "0"),
    Case(f"{PF}.producer", "--concurrency", "0"),
    Case(f"{PF}.validate", "--input", CONSUMED),
    Case(f"{PF}.validate", "--output", CONSUMED),
    Case(f"{PF}.validate", "--rejected", "queue_rejected"),
    *consumer_flags(f"{PF}.validate"),
    Case(f"{PF}.enrich", "--input", CONSUMED),
    Case(f"{PF}.enrich", "--output", CONSUMED),
    *consumer_flags(f"{PF}.enrich"),
    Case(f"{PF}.finalize", "--input", CONSUMED),
    *consumer_flags(f"{PF}.finalize", work=False),
    Case(f"{RR}.requestor", "--queue", CONSUMED),
    Case(f"{RR}.requestor", "--count", "0"),
    Case(f"{RR}.requestor", "--timeout", "0"),
    Case(f"{RR}.requestor", "--timeout", "inf"),
    Case(f"{RR}.requestor", "--timeout", "604801"),
    Case(f"{RR}.requestor", "--concurrency", "0"),
    Case(f"{RR}.replier", "--queue", CONSUMED),
    *consumer_flags(f"{RR}.replier", work=False),
    Case(f"{LL}.producer", "--queue", CONSUMED),
    Case(f"{LL}.producer", "--bursts", "0"),
    Case(f"{LL}.producer", "--burst-size", "0"),
    Case(f"{LL}.producer", "--lull-seconds", "-1"),
    Case(f"{LL}.producer", "--concurrency", "0"),
    Case(f"{LL}.autoscaler", "--queue", CONSUMED),
    Case(f"{LL}.autoscaler", "--min", "-1"),
    Case(f"{LL}.autoscaler", "--min", "3", ("--max", "2")),
    Case(f"{LL}.autoscaler", "--max", "0"),
    Case(f"{LL}.autoscaler", "--target", "0"),
    Case(f"{LL}.autoscaler", "--interval", "0"),
    Case(f"{LL}.autoscaler", "--interval", "301"),
    Case(f"{LL}.autoscaler", "--cooldown", "-1"),
    Case(f"{LL}.autoscaler", "--work-seconds", "nan"),
    Case(f"{CK}.producer", "--queue", CONSUMED),
    Case(f"{CK}.producer", "--count", "0"),
    Case(f"{CK}.producer", "--size", "0"),
    Case(f"{CK}.producer", "--size", str(256 * 1024 * 1024 + 1)),
    Case(f"{CK}.producer", "--threshold", "-1"),
    Case(f"{CK}.producer", "--threshold", str(45 * 1024 + 1)),  # inline, it would not fit
    Case(f"{CK}.producer", "--container", "Bad_Name"),
    Case(f"{CK}.consumer", "--queue", CONSUMED),
    Case(f"{CK}.consumer", "--container", "Bad_Name"),
    Case(f"{CK}.consumer", "--max-bytes", "-1"),
    *consumer_flags(f"{CK}.consumer"),
    Case(f"{EO}.producer", "--queue", CONSUMED),
    Case(f"{EO}.producer", "--count", "0"),
    Case(f"{EO}.producer", "--accounts", "0"),
    Case(f"{EO}.producer", "--accounts", "1001"),
    Case(f"{EO}.producer", "--duplicates", "-1"),
    Case(f"{EO}.producer", "--duplicates", "3", ("--count", "2")),  # more copies than payments
    Case(f"{EO}.producer", "--concurrency", "0"),
    Case(f"{EO}.consumer", "--queue", CONSUMED),
    Case(f"{EO}.consumer", "--table", "pay-ments"),  # table names: letters and digits only
    Case(f"{EO}.consumer", "--table", "tables"),
    *consumer_flags(f"{EO}.consumer"),
    Case(f"{OR}.producer", "--queue", CONSUMED),
    Case(f"{OR}.producer", "--keys", "0"),
    Case(f"{OR}.producer", "--events", "1001"),
    Case(f"{OR}.producer", "--drop", "order-3"),  # KEY:SEQ
    Case(f"{OR}.producer", "--drop", "order-3:0"),
    Case(f"{OR}.producer", "--concurrency", "0"),
    Case(f"{OR}.consumer", "--queue", CONSUMED),
    Case(f"{OR}.consumer", "--table", "or_dered"),
    Case(f"{OR}.consumer", "--gap-timeout", "0"),
    Case(f"{OR}.consumer", "--gap-timeout", "nan"),
    *consumer_flags(f"{OR}.consumer"),
    Case(f"{TOOLS}.peek", "queue", "Bad_Name"),
    Case(f"{TOOLS}.peek", "--count", "0", ("tasks-queue",)),
    Case(f"{TOOLS}.peek", "--count", "33", ("tasks-queue",)),
    Case(f"{TOOLS}.redrive", "queue", CONSUMED),
    Case(f"{TOOLS}.redrive", "--count", "0", ("tasks-queue",)),
    Case(f"{TOOLS}.status", "--interval", "0"),
    Case(f"{TOOLS}.status", "--orphan-age", "-1"),
    Case(f"{TOOLS}.cleanup", "--orphan-age", "-1"),
    Case(f"{TOOLS}.cleanup", "--lesson", "nothing"),
    Case(f"{TOOLS}.journey", "--slowest", "0"),
    Case(f"{TOOLS}.dashboard", "--port", "-1"),
    Case(f"{TOOLS}.dashboard", "--port", "65536"),
    Case(f"{TOOLS}.dashboard", "--orphan-age", "-1"),
    Case("bench.__main__", "--count", "99"),
    Case("bench.__main__", "--samples", "1"),
    Case("bench.__main__", "--only", "fanout"),
    Case("patterns.demo", "--only", "nothing"),
    Case("patterns.emulator", "--port", "0"),
    Case("patterns.emulator", "--port", "65536"),
    Case("patterns.emulator", "--blob-port", "0"),
    Case("patterns.emulator", "--blob-port", "65536"),
    Case("patterns.emulator", "--table-port", "0"),
]


class Outcome(NamedTuple):
    code: object  # the exit code
    stdout: str
    stderr: str
    knocked: bool  # did the script open a connection to its "service"?


def run_in_this_process(case: Case, monkeypatch: pytest.MonkeyPatch, capsys) -> Outcome:
    """The script's main() on the case's arguments, here: its parser is the one a learner's
    run meets. Every connection it tries is counted, and refused."""
    knocks: list[object] = []

    def knock(self: socket.socket, address: object) -> None:
        knocks.append(address)
        raise ConnectionRefusedError("no connection may be made before the flags are checked")

    monkeypatch.setattr(socket.socket, "connect", knock)
    monkeypatch.setattr(sys, "argv", [case.module, *case.argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(case.module).main()
    out, err = capsys.readouterr()
    return Outcome(exited.value.code, out, err, bool(knocks))


def run_against_a_silent_service(case: Case) -> Outcome:
    """The script run as a learner runs it, its "service" a socket that listens and never
    answers: whether anyone knocked."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        env = {
            **os.environ,
            CONNECTION_STRING_VAR: azurite_connection_string(server.getsockname()[1]),
        }
        result = run_script(case.module, *case.argv, env=env)
        server.setblocking(False)
        try:
            server.accept()[0].close()
        except BlockingIOError:
            return Outcome(result.returncode, result.stdout, result.stderr, knocked=False)
        return Outcome(result.returncode, result.stdout, result.stderr, knocked=True)


def assert_refused_before_any_request(case: Case, outcome: Outcome) -> None:
    assert outcome.code == 2, outcome
    assert not outcome.knocked, f"{case.id}: the script connected to the service before refusing"
    stderr = outcome.stderr.strip()
    assert stderr.splitlines() == [stderr], stderr  # one line, not a usage block
    assert re.match(rf"error: argument (-\w/)?{case.flag}: ", stderr), stderr  # -n/--count
    assert repr(case.value) in stderr or case.value in stderr, stderr
    assert "Traceback" not in outcome.stdout + outcome.stderr
    assert outcome.stdout == ""


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_a_bad_value_is_one_line_naming_the_flag_before_any_request(case, monkeypatch, capsys):
    assert_refused_before_any_request(case, run_in_this_process(case, monkeypatch, capsys))


# One row per script, run for real (a Python start-up each): the same refusal, as a learner
# meets it, from a process that starts as `python -m` starts it.
FIRST_OF_EACH = list({case.module: case for case in reversed(CASES)}.values())


@cache
def real_outcomes() -> dict[Case, Outcome]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        found = pool.map(run_against_a_silent_service, FIRST_OF_EACH)
        return dict(zip(FIRST_OF_EACH, found, strict=True))


@pytest.mark.parametrize("case", FIRST_OF_EACH, ids=lambda case: case.id)
def test_a_bad_value_is_refused_the_same_way_by_the_script_run_for_real(case):
    assert_refused_before_any_request(case, real_outcomes()[case])


class Parsed(Exception):
    """Raised instead of parsing, carrying the script's parser."""


def scripts() -> list[str]:
    files = [
        path
        for folder in ("patterns", "bench")
        for path in (ROOT / folder).rglob("*.py")
        if '__name__ == "__main__"' in path.read_text()
    ]
    return sorted(".".join(p.relative_to(ROOT).with_suffix("").parts) for p in files)


def checked_flags(module: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The flags whose value a script's parser checks (every argument with a `type=`)."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)  # cli's and plain ones
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module).main()
    parser = parsed.value.args[0]
    found = set()
    for action in parser._actions:
        assert action.type not in (int, float), f"{module}: {action.dest} is an unchecked number"
        if action.type not in (None, Path) or action.choices:
            found.add(action.option_strings[-1] if action.option_strings else action.dest)
    return found


@pytest.mark.parametrize("module", scripts())
def test_every_checked_flag_of_every_script_is_in_the_table(module, monkeypatch):
    in_table = {case.flag for case in CASES if case.module == module}
    assert checked_flags(module, monkeypatch) <= in_table


# --- one rule for queues that are consumed (producers and consumers alike) ------------------


def stretch(name: str, length: int) -> str:
    """`name`, made exactly `length` characters long (still unique, still valid)."""
    return (name + "-" + "x" * length)[:length]


def test_a_56_character_queue_works_end_to_end_poison_queue_and_all(start, env, service, qname):
    name = stretch(qname, 56)
    produced = run_script(
        "patterns.competing_consumers.producer", "--queue", name, "--count", "2", "--failing", "1",
        env=env,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    consumer = start(
        "patterns.competing_consumers.consumer",
        *("--queue", name, "--work-seconds", "0", "--max-attempts", "1"),
    )
    consumer.wait_for(rf"moved message .* to '{name}-poison'")
    consumer.wait_for(r"done task-002-")
    assert consumer.stop() == 0
    assert message_count(service, name + "-poison") == 1  # a 63-character poison queue


@pytest.mark.parametrize(
    ("module", "args", "too_long"),
    [
        # 41 + "-normal-priority" = 57; "-high-priority" (55) alone would have been created
        ("patterns.priority.producer", ["--priority", "high"], "{p}-normal-priority"),
        ("patterns.priority.consumer", [], "{p}-normal-priority"),
        (
            "patterns.fanout.producer",
            ["--subscribers", "a,bbbbbbbbbbbbbbbb"],
            "{p}bbbbbbbbbbbbbbbb",
        ),
        ("patterns.fanout.consumer", ["--subscriber", "bbbbbbbbbbbbbbbb"], "{p}bbbbbbbbbbbbbbbb"),
    ],
)
def test_composed_queue_names_follow_the_same_rule_and_nothing_is_created(
    env, service, qname, module, args, too_long
):
    prefix = stretch(qname, 41)
    result = run_script(module, "--prefix", prefix, *args, env=env)
    assert_refused(result, f"queue name '{too_long.format(p=prefix)}' is 57 characters")
    assert list(service.list_queues(name_starts_with=prefix)) == []


# --- a huge --count is made as it is sent, never built first --------------------------------


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("patterns.competing_consumers.producer", ["--queue", "{q}"]),
        ("patterns.pipes_and_filters.producer", ["--output", "{q}"]),
        ("patterns.priority.producer", ["--prefix", "{q}", "--priority", "low"]),
        ("patterns.request_reply.requestor", ["--queue", "{q}"]),
    ],
)
def test_a_billion_tasks_start_at_once_in_little_memory_and_ctrl_c_stops_them(
    start, qname, module, args
):
    producer = start(module, "--count", str(10**9), *(a.format(q=qname) for a in args))
    producer.wait_for(r"\] sent (task-200-|ORD-\w+-200 |request 200 )", timeout=30)
    status = Path(f"/proc/{producer.pid}/status").read_text()
    rss_kib = int(re.search(r"VmRSS:\s+(\d+)", status)[1])
    assert rss_kib < 150_000, f"{rss_kib} KiB after 200 sends"
    producer.send_signal(signal.SIGINT)
    assert producer.wait(15) == 130  # interrupted: the job was not done
    assert "Traceback" not in producer.text


# --- numbers are ASCII digits (in-process: each script's own parser, nothing run) -----------

ARABIC_INDIC = str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")
FULLWIDTH = str.maketrans("0123456789", "０１２３４５６７８９")


@pytest.mark.parametrize("module", scripts())
def test_numeric_flags_take_ascii_digits_only(module, monkeypatch):
    """int() and float() also read '٣' (Arabic-Indic 3), '３' (fullwidth) and '5_0' (50): a
    flag takes only what --help shows. Each numeric flag's default, written those ways."""

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Parsed(self)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(Parsed) as parsed:
        importlib.import_module(module).main()
    for action in parsed.value.args[0]._actions:
        if not isinstance(action.type, Range) or action.default is None:
            continue
        text = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
        assert action.type(text) == action.default  # as written in ASCII: taken
        for other in (text.translate(ARABIC_INDIC), text.translate(FULLWIDTH), "0_" + text):
            with pytest.raises(argparse.ArgumentTypeError, match="expected"):
                action.type(other)
