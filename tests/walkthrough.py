"""Walk the lesson pages as a learner does: every command in page order, in its terminal, on one
emulator, and check each expected-output block against what the programs print.

A page says what a learner does in HTML comments (GitHub does not show them), each before the
code block it is about:

    <!-- walk: T1 start -->      the block's command runs in terminal T1 and keeps running
    <!-- walk: T1,T2,T3 start -->   the same command in each of them
    <!-- walk: T2 run -->        the block's commands run in T2, one after another, to the end
    <!-- walk: T1 expect -->     the block is what T1 prints (its lines in this order; `...`
                                 and lines of the other terminals may come between them)
    <!-- walk: T1 expect loose -->   the same, words only: counts and bars vary from run to run
    <!-- walk: T1 expect unordered -->  its lines in any order (two tasks, whichever comes first)
    <!-- walk: T1 expect within 200 -->  it may take up to 200 s (the default is 60)
    <!-- walk: stop T1 T2 -->    Ctrl+C in those terminals; they must end
    <!-- walk: wait 11 -->       the learner waits 11 s
    <!-- walk: quiet T1,T2 2 --> ... until T1 and T2 have printed nothing for 2 s (idle again)
    ...; test: ARGS              the in-order test only: appended to each command (a shorter
                                 --work-seconds, say), or NAME=VALUE to set a script's
                                 constant, or the seconds of a wait. What the scripts print
                                 stays the same; only when they print it changes.
    `export NAME=VALUE` lines in a start or run block set the terminal's environment;
    `NAME=VALUE python ...` sets it for that command only.

Compared after normalising what differs on every run: times, process ids, run ids and uuids,
dates, ports, decimals and rates. A run id or uuid that the page's output shows and a later
command uses (`journey.py --id ORD-7ae6281c-001`) is replaced by the one this run printed.

    python tests/walkthrough.py                # every page, real terminals (tmux), real speed
    python tests/walkthrough.py --update       # ... and write the lines it saw into the pages
    python tests/walkthrough.py fanout         # only the pages whose path has `fanout`
tests/test_walkthrough.py runs the same steps fast: each command a process of its own, forked from
an interpreter that has the SDK imported (class Warm), its output read from a pipe.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- walk: (.+?) -->$")
FENCE = re.compile(r"^ *```")
NOTICE = "AZURE_STORAGE_CONNECTION_STRING is not set"  # absent when the emulator is configured


@dataclass
class Step:
    page: Path
    line: int  # of its marker, 1-based
    kind: str  # start | run | expect | stop | wait
    terminals: list[str]
    block: list[str] = field(default_factory=list)
    block_line: int = 0  # the code block's first line, 0-based (for --update)
    loose: bool = False
    unordered: bool = False
    within: float = 60  # seconds an expected block may take to appear (at the page's speed)
    test: str = ""  # the test's own arguments (see the docstring)

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def steps(page: Path) -> list[Step]:
    lines = page.read_text(encoding="utf-8").splitlines()
    found: list[Step] = []
    pending: Step | None = None
    index = 0
    while index < len(lines):
        marker = MARKER.match(lines[index].strip())
        if marker:
            spec, _, test = marker[1].partition("; test:")
            words = spec.split()
            if words[0] in ("stop", "wait"):
                step = Step(page, index + 1, words[0], words[1:], test=test.strip())
                found.append(step)
            elif words[0] == "quiet":
                step = Step(page, index + 1, "quiet", words[1].split(","), test=test.strip())
                step.within = float(words[2])
                found.append(step)
            else:
                terminals, kind, *options = words
                assert kind in ("start", "run", "expect"), f"{page}:{index + 1}: {kind}?"
                pending = Step(page, index + 1, kind, terminals.split(","), test=test.strip())
                pending.loose = "loose" in options
                pending.unordered = "unordered" in options
                if "within" in options:
                    pending.within = float(options[options.index("within") + 1])
        elif FENCE.match(lines[index]) and pending is not None:
            end = index + 1
            while not FENCE.match(lines[end]):
                end += 1
            pending.block, pending.block_line = lines[index + 1 : end], index + 1
            found.append(pending)
            pending, index = None, end
        index += 1
    assert pending is None, f"{page}: a marker without its code block"
    return found


# --- comparing ------------------------------------------------------------------------------

IDS = re.compile(
    r"(?<![0-9a-z])(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{64}|[0-9a-f]{32}|[0-9a-f]{16}|[0-9a-f]{8})(?![0-9a-z])"
)
VOLATILE = [
    (re.compile(r"(?<!9999-12-31T)\b\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00)?"), "D"),
    (re.compile(r"\b\d\d:\d\d:\d\d(?:\.\d{3})?\b(?!\+)"), "T"),
    (re.compile(r"\[\d+\]"), "[P]"),
    (re.compile(r"\bpid \d+"), "pid P"),
    (IDS, "H"),
    (re.compile(r"\b127\.0\.0\.1:\d+"), "127.0.0.1:PORT"),
    (re.compile(r"\b\d+\.\d+\b"), "N.N"),
    (re.compile(r"\(\d+/s\)"), "(N/s)"),
    (re.compile(r"\b(after|waited) \d+ (ms|s)\b"), r"\1 N \2"),
    (re.compile(r"\b\d+ s old\b"), "N s old"),
]


def normal(line: str, loose: bool = False) -> str:
    """The line with what differs on every run replaced; loose: its words, `->` and a token
    for each number (sparklines, bars and counts vary)."""
    line = line.replace("9999-12-31T23:59:59", "NEVER")
    for pattern, replacement in VOLATILE:
        line = pattern.sub(replacement, line)
    if loose:
        line = line.replace("N.N", "0")
        return " ".join(re.sub(r"\d+", "N", w) for w in re.findall(r"[A-Za-z]+|\d+|->", line))
    return " ".join(line.split())


def expected_lines(block: list[str], notice: bool = False) -> list[str]:
    """The lines a block expects; the notice that no connection string is set only where none
    is (a learner's terminal; the tests set one)."""
    return [
        line
        for line in block
        if line.strip() and line.strip() not in ("...", "…") and (notice or NOTICE not in line)
    ]


def match(
    expected: list[str],
    actual: list[str],
    start: int,
    loose: bool,
    ids: dict[str, str],
    unordered: bool = False,
) -> tuple[int, list[int], dict[str, str]] | None:
    """Where each expected line is found in actual[start:], in order (unordered: anywhere, each
    line once); None if one is not. An id the page shows stands for one id of this run
    throughout (`ids`: those already seen)."""
    at, where, ids = start, [], dict(ids)

    def same(line: str, real: str) -> bool:
        if normal(real, loose) != normal(line, loose):
            return False
        pairs = list(zip(IDS.findall(line), IDS.findall(real), strict=False))
        if any(ids.get(page, real_id) != real_id for page, real_id in pairs):
            return False
        ids.update(pairs)
        return True

    for line in expected:
        if unordered:
            at = start
        while at < len(actual) and (at in where or not same(line, actual[at])):
            at += 1
        if at == len(actual):
            return None
        where.append(at)
        at += 1
    return max(where, default=start - 1) + 1, where, ids


# --- terminals --------------------------------------------------------------------------------


# The fast test starts about 85 processes; most of each start is importing the Azure SDK (half a
# second on a busy 2-core machine). A warm interpreter that has imported it forks each command:
# still a process of its own (its pid, its signals, its stdout), running the script as __main__,
# only without paying for the imports again. The tmux walk starts every command for real.
WARM = r"""
import io, json, os, runpy, signal, socket, sys, traceback
import argparse, logging, dotenv, azure.storage.queue, azure.storage.blob  # the slow imports
sock = socket.socket(fileno=int(sys.argv[1]))
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped at once; their end is EOF
while True:
    message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
    if not message:
        os._exit(0)
    request = json.loads(message)
    pid = os.fork()
    if pid:
        os.close(fds[0])
        sock.sendall(f"{pid}\n".encode())
        continue
    sock.close()
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.dup2(fds[0], 1), os.dup2(fds[0], 2), os.close(fds[0])
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    # new streams on the pipe, as `python -u` makes them (the old ones knew another file)
    out = open(1, "wb", 0, closefd=False)
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(out, write_through=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        open(2, "wb", 0, closefd=False), write_through=True, errors="backslashreplace")
    os.environ.clear(), os.environ.update(request["env"]), os.chdir(request["cwd"])
    sys.argv, code = request["argv"], 0
    try:
        if sys.argv[0] == "-m":
            sys.argv = sys.argv[1:]
            runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
        elif sys.argv[0] == "-c":  # a script with constants set (see Piped.argv)
            sys.argv = request["argv"][2:]
            exec(request["argv"][1], {"__name__": "__main__"})
        else:
            sys.path[0] = os.path.dirname(sys.argv[0])
            runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as end:
        code = end.code if isinstance(end.code, int) else (end.code is not None)
        if isinstance(end.code, str):
            print(end.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush(), sys.stderr.flush()
    os._exit(code)
"""


class Warm:
    """The warm interpreter: one per walk, `spawn` returns the pid and a pipe of its output."""

    def __init__(self, env: dict[str, str]) -> None:
        self.sock, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", WARM, str(theirs.fileno())], pass_fds=[theirs.fileno()],
            env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        theirs.close()
        self.lock = threading.Lock()

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, int]:
        read, write = os.pipe()
        request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd)}).encode()
        with self.lock:
            socket.send_fds(self.sock, [request], [write])
            os.close(write)
            pid = int(self.sock.recv(64).decode().strip())
        return pid, read

    def close(self) -> None:
        self.sock.close()  # the server reads nothing more and ends
        self.proc.wait(10)


class Piped:
    """A terminal as a process forked by the warm interpreter, its output read from a pipe."""

    def __init__(self, name: str, env: dict[str, str], cwd: Path, warm: Warm) -> None:
        self.name, self.env, self.cwd, self.warm = name, dict(env), cwd, warm
        self.lines: list[str] = []
        self.pid = 0
        self._reader: threading.Thread | None = None

    def argv(self, command: str, test: str) -> list[str]:
        words = shlex.split(command)
        assert words[0] == "python", f"not a python command: {command}"
        script = [w for w in shlex.split(test) if re.match(r"^[A-Z_]+=", w)]
        extra = [w for w in shlex.split(test) if w not in script]
        if words[1] == "-m":
            return [*words[1:], *extra]
        path = str(ROOT / words[1])
        if not script:
            return [path, *words[2:], *extra]
        patch = "; ".join(f"module.{w.split('=')[0]} = {w.split('=', 1)[1]}" for w in script)
        code = (
            "import importlib.util, sys; "
            "spec = importlib.util.spec_from_file_location('walked', sys.argv[0]); "
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            f"{patch}; sys.exit(module.main())"
        )
        return ["-c", code, path, *words[2:], *extra]

    def start(self, command: str, test: str, env: dict[str, str] | None = None) -> None:
        assert not self.running(), f"{self.name} is still running"
        self.pid, read = self.warm.spawn(
            self.argv(command, test), {**self.env, **(env or {})}, self.cwd
        )
        self._reader = threading.Thread(target=self._read, args=(read,), daemon=True)
        self._reader.start()

    def _read(self, read: int) -> None:
        with open(read, encoding="utf-8", errors="replace") as output:
            for line in output:
                self.lines.append(line.rstrip("\n"))

    def run(self, command: str, test: str, env: dict[str, str] | None = None) -> None:
        self.start(command, test, env)
        assert self._reader is not None
        self._reader.join(60)
        assert not self.running(), f"{self.name}: {command} did not end within 60 s"

    def running(self) -> bool:  # its output is open until it (and any child of it) ends
        return self._reader is not None and self._reader.is_alive()

    def stop(self, timeout: float = 15) -> bool:
        if not self.running():
            return True
        assert self._reader is not None
        with contextlib.suppress(ProcessLookupError):  # ended, its children not yet
            os.kill(self.pid, signal.SIGINT)
        self._reader.join(timeout)
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._reader.join(5)
            return False
        return True

    def output(self) -> list[str]:
        return list(self.lines)


class Tmux:
    """A terminal as a tmux window: the commands typed as the page shows them, Ctrl+C as a key."""

    def __init__(self, session: str, name: str) -> None:
        self.target, self.name = f"{session}:{name}", name
        self.tmux("new-window", "-d", "-t", session, "-n", name)
        self.tmux("send-keys", "-t", self.target, "export PS1='$ '; clear", "Enter")
        time.sleep(0.5)

    @staticmethod
    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", *args], check=True, capture_output=True, text=True).stdout

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", self.target, "-l", text)
        self.tmux("send-keys", "-t", self.target, "Enter")

    def start(self, command: str, test: str, env: dict[str, str] | None = None) -> None:
        assert not self.running(), f"{self.name} is still running"
        prefix = " ".join(f"{name}={value}" for name, value in (env or {}).items())
        self.type(f"{prefix} {command}".strip())

    def run(self, command: str, test: str, env: dict[str, str] | None = None) -> None:
        self.start(command, test, env)
        time.sleep(0.3)
        deadline = time.monotonic() + 120
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)

    def running(self) -> bool:
        shown = self.tmux("display", "-p", "-t", self.target, "#{pane_current_command}").strip()
        return shown not in ("bash", "sh", "zsh")

    def stop(self, timeout: float = 15) -> bool:
        if self.running():
            self.tmux("send-keys", "-t", self.target, "C-c")
        deadline = time.monotonic() + timeout
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.1)
        return not self.running()

    def output(self) -> list[str]:
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", self.target)
        # a terminal echoes Ctrl+C as ^C before the program's last lines; the prompt lines are
        # the commands typed; the empty rows below the last line are not output yet
        lines = [line.removeprefix("^C").rstrip() for line in text.splitlines()]
        while lines and not lines[-1]:
            lines.pop()
        prompt = re.compile(r"^(\(\.venv\) )?\$( |$)|\(\.venv\) \$ ")  # a prompt, or typed ahead
        return [line for line in lines if not prompt.search(line)]


# --- walking ----------------------------------------------------------------------------------


class Walk:
    def __init__(self, make_terminal, fast: bool, expect_timeout: float = 0) -> None:
        """expect_timeout: how long every expected block may take (0: as its page says)."""
        self.make_terminal = make_terminal
        self.fast = fast
        self.expect_timeout = expect_timeout
        self.dump = False  # on a mismatch, take what the terminal printed (for --update)
        self.notice = False  # no connection string set: the scripts say so
        self.terminals: dict[str, object] = {}
        self.read_to: dict[str, int] = {}
        self.ids: dict[str, str] = {}  # page's run id or uuid -> this run's
        # expect steps: the actual lines matched, and where in the terminal's output
        self.matched: list[tuple[Step, list[str], list[list[str]] | None]] = []

    def terminal(self, name: str):
        if name not in self.terminals:
            self.terminals[name] = self.make_terminal(name)
            self.read_to[name] = 0
        return self.terminals[name]

    def commands(self, step: Step) -> list[str]:
        found = []
        for line in step.block:
            line = re.split(r"\s+# ", line)[0].strip()
            if line:
                found.append(IDS.sub(lambda m: self.ids.get(m[0], m[0]), line))
        return found

    def type_in(self, term, step: Step) -> None:
        for command in self.commands(step):
            if command.startswith("export "):
                name, _, value = command.removeprefix("export ").partition("=")
                if isinstance(term, Piped):
                    term.env[name] = value.strip('"')
                else:
                    term.run(command, "")
                continue
            test = step.test if self.fast else ""
            env = {}
            while re.match(r"^[A-Z_]+=\S*\s", command):
                setting, command = command.split(None, 1)
                env[setting.split("=")[0]] = setting.split("=", 1)[1]
            (term.start if step.kind == "start" else term.run)(command, test, env)

    def do(self, step: Step) -> None:
        if step.kind in ("start", "run"):
            for name in step.terminals:
                self.type_in(self.terminal(name), step)
        elif step.kind == "expect":
            self.expect(step)
        elif step.kind == "stop":
            for name in step.terminals:
                assert self.terminal(name).stop(), f"{step.where()}: {name} did not stop"
        elif step.kind == "quiet":
            self.quiet(step)
        elif step.kind == "wait":
            time.sleep(
                float(step.test or step.terminals[0]) if self.fast else float(step.terminals[0])
            )

    def quiet(self, step: Step) -> None:
        """Wait until none of the terminals has printed a line for `within` seconds (at most a
        minute): what a learner waits for before pressing Ctrl+C in an idle consumer."""
        quiet_for = float(step.test) if self.fast and step.test else step.within
        deadline = time.monotonic() + 60
        seen, since = None, time.monotonic()
        while time.monotonic() < deadline:
            now = [len(self.terminal(name).output()) for name in step.terminals]
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet_for:
                return
            time.sleep(0.1)
        raise AssertionError(f"{step.where()}: {step.terminals} never went quiet")

    def expect(self, step: Step) -> None:
        name = step.terminals[0]
        term = self.terminal(name)
        want = expected_lines(step.block, self.notice)
        deadline = time.monotonic() + (self.expect_timeout or step.within)
        while True:
            actual = term.output()
            found = match(want, actual, self.read_to[name], step.loose, self.ids, step.unordered)
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if not found and self.dump:
            print(f"MISMATCH {step.where()}: took what {name} printed")
            self.matched.append((step, actual[self.read_to[name] :], None))
            self.read_to[name] = len(actual)
            return
        if not found:
            shown = "\n".join(actual[self.read_to[name] :][-40:])
            raise AssertionError(
                f"{step.where()}: {name} did not print the page's block\n--- page:\n"
                + "\n".join(want)
                + f"\n--- {name} printed (after its last matched block):\n{shown}"
            )
        self.read_to[name], where, self.ids = found
        # where the page leaves lines out, and which: for --update
        skipped = [actual[a + 1 : b] for a, b in itertools.pairwise(where)]
        self.matched.append((step, [actual[at] for at in where], skipped))

    def page(self, page: Path) -> None:
        for step in steps(page):
            self.do(step)
        left = [name for name, term in self.terminals.items() if term.running()]
        assert not left, f"{page.relative_to(ROOT)} ends with {left} still running"
        self.terminals.clear()
        self.read_to.clear()

    def close(self) -> None:
        for term in self.terminals.values():
            term.stop(5)


def pages() -> list[Path]:
    """The lesson pages in the hub's order: every page its table links to that has steps."""
    hub = (ROOT / "README.md").read_text(encoding="utf-8")
    table = hub.split("<!-- BEGIN lessons -->")[1].split("<!-- END lessons -->")[0]
    linked = re.findall(r"\]\(((?:docs|patterns)/[^)#]+\.md)\)", table)
    unique = list(dict.fromkeys(ROOT / link for link in linked))
    return [page for page in unique if steps(page)]


def update(
    matched: list[tuple[Step, list[str], list[list[str]] | None]], ids: dict[str, str], notice: bool
) -> None:
    """Write each matched actual line over the page line it matched (the `...` lines stay, and
    one is added where the terminal printed lines the page leaves out); a block that did not
    match is replaced by all its terminal printed, to be cut by hand. The page's ids become
    this run's everywhere on the page (a command that names one too)."""
    by_page: dict[Path, list[str]] = {}
    for step, lines, where in sorted(matched, key=lambda m: -m[0].block_line):  # bottom up
        # where: for each matched line after the first, the lines printed before it and left out
        text = by_page.setdefault(step.page, step.page.read_text(encoding="utf-8").splitlines())
        indent = step.block[0][: len(step.block[0]) - len(step.block[0].lstrip())]
        end = step.block_line + len(step.block)
        if where is None:  # it did not match: all the terminal printed
            text[step.block_line : end] = [indent + line for line in lines]
            continue
        new, real, gaps, marked = [], iter(lines), iter([[], *where]), True
        for line in step.block:
            if not expected_lines([line], notice):
                new.append(line)
                marked = marked or line.strip() in ("...", "…")
                continue
            left_out = [g for g in next(gaps) if g.strip() and NOTICE not in g]
            if left_out and not marked:
                new.append(indent + "...")
            new.append(indent + next(real))
            marked = False
        text[step.block_line : end] = new
    for page, text in by_page.items():
        whole = "\n".join(text) + "\n"
        whole = IDS.sub(lambda m: ids.get(m[0], m[0]), whole)
        page.write_text(whole, encoding="utf-8")


def main() -> int:
    from patterns.emulator import Azurite

    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    session = f"walk{os.getpid()}"
    # --default-ports: the emulator where `make emulator` puts it, and no connection string set,
    # exactly as a learner's terminals (the ports must be free)
    ports = {"port": 10001, "blob_port": 10000} if "--default-ports" in sys.argv else {}
    with Azurite(**ports) as azurite:
        Tmux.tmux("new-session", "-d", "-s", session, "-x", "250", "-y", "50")
        Tmux.tmux("set-option", "-t", session, "history-limit", "100000")
        if not ports:
            Tmux.tmux("set-environment", "-t", session, "AZURE_STORAGE_CONNECTION_STRING",
                      azurite.connection_string)  # fmt: skip

        def terminal(name: str) -> Tmux:
            term = Tmux(session, name)
            names = "AZURE_STORAGE_CONNECTION_STRING AZURE_STORAGE_ACCOUNT_URL"
            names += " AZURE_QUEUE_MESSAGE_ENCODING OTEL_TRACES_EXPORTER"
            unset = f"unset {names} && " if ports else ""
            term.type(f"cd {ROOT} && source .venv/bin/activate && {unset}clear")
            time.sleep(0.5)
            return term

        walk = Walk(terminal, fast=False)
        walk.dump = "--update" in sys.argv
        walk.notice = bool(ports)
        try:
            for page in pages():
                if only and not any(o in str(page) for o in only):
                    continue
                started = time.monotonic()
                walk.page(page)
                print(f"ok  {page.relative_to(ROOT)}  {time.monotonic() - started:.0f} s")
                # a new set of windows for the next page, as a learner's terminals are reused
                for window in Tmux.tmux("list-windows", "-t", session, "-F", "#W").split():
                    if window.startswith("T"):
                        Tmux.tmux("kill-window", "-t", f"{session}:{window}")
        finally:
            walk.close()
            if "--update" in sys.argv:
                update(walk.matched, walk.ids, walk.notice)
            Tmux.tmux("kill-session", "-t", session)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
