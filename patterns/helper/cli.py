"""Script plumbing: the log format, Ctrl+C, the argument parser with its range types and the
consumer flags, and run(), which turns an expected failure into one line and an exit code.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

from patterns.helper import Fatal, connect

# A consumer's defaults, in one place: consume.Inbox's, and the flags' below (--help shows them).
VISIBILITY_TIMEOUT = 30  # seconds
MAX_ATTEMPTS = 5
BATCH_SIZE = 1
IDLE_MAX = 1.0  # seconds
RETRY_BACKOFF = 1  # seconds before the 2nd attempt; doubling per failure (2, 4, 8...)
RETRY_BACKOFF_MAX = 60  # seconds: the longest wait between two attempts


# --- output and Ctrl+C ----------------------------------------------------------------------


# Control characters (C0, DEL, C1) and the Unicode line separators: what a message could use
# to clear the screen, recolour it, or add lines to the output. And half surrogate pairs
# ("\ud800" in JSON), which no terminal can be sent.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def printable(text: str) -> str:
    """`text` with its control characters escaped as Python writes them (\\n, \\x1b,
    \\u2028): for anything from a message that reaches a terminal."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # One event, one line: a line break inside a value (an id, a reason) is shown as \n,
        # an escape sequence as \x1b.
        text = printable(super().format(record))
        if record.levelno >= logging.WARNING:
            head, _, tail = text.partition("] ")
            return f"{head}] {record.levelname.lower()}: {tail}"
        return text


def logger(role: str) -> logging.Logger:
    """One log format for every script: `HH:MM:SS.mmm role[pid] text`, flushed per line."""
    log = logging.getLogger(f"patterns.{role}")
    if not log.handlers:
        # A message can carry text stdout cannot encode (half a surrogate pair, sent as "\ud800"
        # in JSON): print it escaped rather than lose the line to a "Logging error" traceback.
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")
        handler = logging.StreamHandler(sys.stdout)  # StreamHandler flushes after every line
        handler.setFormatter(
            _LineFormatter(f"%(asctime)s.%(msecs)03d {role}[%(process)d] %(message)s", "%H:%M:%S")
        )
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    return log


class Interrupted(Exception):
    """Raised by `Shutdown.sleep()` when Ctrl+C arrives in the middle of work."""


class Shutdown:
    """Ctrl+C / SIGTERM: the first asks the script to stop taking messages and to release the
    one in hand (and cuts short a receive under way: see interruptible()); a second Ctrl+C
    stops at once. SIGTERM only ever asks: a process may be sent it more than once for one
    stop (Linux sends a parent-death signal once per thread of the dying parent)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        if self._event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self._event.set()
        if _cut_short:
            raise Interrupted

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop was requested meanwhile."""
        return self._event.wait(seconds)

    def sleep(self, seconds: float) -> None:
        """Sleep as part of the work: Ctrl+C interrupts it (raises Interrupted)."""
        if self._event.wait(seconds):
            raise Interrupted


_cut_short = False  # the main thread is in an interruptible() block


@contextmanager
def interruptible() -> Iterator[None]:
    """The first Ctrl+C cuts the block short (Interrupted), in the main thread: for a request
    that loses nothing if never answered, a receive (whatever it took comes back when its
    visibility timeout ends), so that a frozen service cannot hold a stop up for seconds."""
    global _cut_short
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers run in the main thread only: nothing to cut short here
        return
    _cut_short = True
    try:
        yield
    finally:
        _cut_short = False


# --- arguments ------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Each option's help ends with its range and default, taken from the option itself
    (`sends in flight at once (1-64, default 8)`): no help text types them a second time."""

    def _get_help_string(self, action: argparse.Action) -> str:
        notes = [getattr(action.type, "shown", "")]
        default = action.default
        if default not in (None, "", argparse.SUPPRESS) and not isinstance(default, bool):
            if isinstance(default, float):
                default = f"{default:g}"  # 1.0 -> 1
            elif isinstance(default, list):
                default = ",".join(default)
            notes.append(f"default {default}")
        notes = [note.replace("%", "%%") for note in notes if note]  # argparse formats help with %
        return f"{action.help} ({', '.join(notes)})" if notes else str(action.help)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other expected failure
    (`error: argument --count: expected ...`, exit 2) instead of the whole usage first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=_HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


@dataclass(frozen=True)
class _Range:
    """The `type=` of a numeric flag: its range, stated once. A value outside it stops the
    script before it sends a single request; --help shows it (`shown`)."""

    kind: type[int] | type[float]
    expected: str  # 'a whole number from 1 to 64', for the error line
    shown: str  # '1-64', for --help ('' when there is no upper end)
    fits: Callable[[Any], bool]

    def __call__(self, text: str) -> Any:
        try:
            # int() and float() also take other scripts' digits ('٣') and underscores ('5_0'):
            # a flag takes what it shows, ASCII digits.
            value = self.kind(text) if text.isascii() and "_" not in text else math.nan
        except ValueError:
            value = math.nan
        if not self.fits(value):  # nan never fits
            raise argparse.ArgumentTypeError(f"expected {self.expected}, got {text!r}")
        return value


def whole_number(*, least: int, most: int | None = None) -> _Range:
    """A whole number from `least` to `most` (no upper limit if None)."""
    if most is None:
        return _Range(int, f"a whole number of {least} or more", "", lambda v: v >= least)
    between = f"from {least} to {most}"
    return _Range(int, f"a whole number {between}", f"{least}-{most}", lambda v: least <= v <= most)


def seconds(*, most: float, least: float = 0, above: float | None = None) -> _Range:
    """A duration in seconds: from `least` (or more than `above`) up to `most`."""
    if above is not None:
        expected = f"seconds above {above:g}, at most {most:g}"
        return _Range(float, expected, "", lambda v: above < v <= most)
    expected = f"seconds from {least:g} to {most:g}"
    return _Range(float, expected, f"{least:g}-{most:g}", lambda v: least <= v <= most)


def _queue_type(consumed: bool) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            return connect.queue_name(text, consumed=consumed)
        except Fatal as error:  # the error line names the flag
            raise argparse.ArgumentTypeError(str(error)) from None

    return check


any_queue = _queue_type(consumed=False)  # `type=` for a queue name
consumed_queue = _queue_type(consumed=True)  # a queue someone consumes: room for -poison


def blob_container(text: str) -> str:
    """`type=` for a blob container name (the same rules as a queue name's)."""
    try:
        return connect.container_name(text)
    except Fatal as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# --idle-max: the backoff starts at 0.1 s, so a lower ceiling would only poll faster.
idle_max = seconds(least=0.1, most=60)
# --delay: a message's initial visibility timeout; the service allows up to 7 days.
delay = whole_number(least=0, most=7 * 24 * 3600)


def add_queue_argument(
    parser: argparse.ArgumentParser, flag: str, default: str, help: str, consumed: bool = True
) -> None:
    """A flag that names a queue, checked before any request; a queue someone `consumed` needs
    room for its -poison queue (producers check their queues by the same rule)."""
    kind = consumed_queue if consumed else any_queue
    parser.add_argument(flag, type=kind, default=default, help=help)


def add_concurrency_argument(
    parser: argparse.ArgumentParser, default: int = 8, help: str = "sends in flight at once"
) -> None:
    """--concurrency: for producers, sends in flight (Queue Storage has no batch send, so sends
    overlap); for a consumer, messages in work at once (its own default and help)."""
    parser.add_argument(
        "--concurrency", type=whole_number(least=1, most=64), default=default, metavar="N",
        help=help,
    )  # fmt: skip


def add_consumer_arguments(
    parser: argparse.ArgumentParser, *, work_seconds: float | None = None
) -> None:
    """The options every consumer has (and --work-seconds for those that simulate work)."""
    if work_seconds is not None:
        parser.add_argument(
            "--work-seconds", type=seconds(most=3600), default=work_seconds, metavar="SECONDS",
            help="simulated work per message",
        )  # fmt: skip
    parser.add_argument(
        "--batch-size", type=whole_number(least=1, most=connect.MAX_BATCH), default=BATCH_SIZE,
        metavar="N", help="messages per receive call",
    )  # fmt: skip
    parser.add_argument(
        "--visibility-timeout", type=whole_number(least=1, most=7 * 24 * 3600),  # the limit
        default=VISIBILITY_TIMEOUT, metavar="SECONDS",
        help="how long a received message stays hidden from others",
    )  # fmt: skip
    parser.add_argument(
        "--max-attempts", type=whole_number(least=1), default=MAX_ATTEMPTS, metavar="N",
        help="deliveries before a failing message moves to the poison queue",
    )  # fmt: skip
    parser.add_argument(
        "--retry-backoff", type=whole_number(least=0, most=3600), default=RETRY_BACKOFF,
        metavar="SECONDS",
        help="wait before retrying a failed task, doubled per failure (0: wait out the "
        "visibility timeout)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-backoff-max", type=whole_number(least=1, most=7 * 24 * 3600),
        default=RETRY_BACKOFF_MAX, metavar="SECONDS", help="longest wait between two attempts",
    )  # fmt: skip
    parser.add_argument(
        "--idle-max", type=idle_max, default=IDLE_MAX, metavar="SECONDS",
        help="longest wait between polls of an empty queue",
    )  # fmt: skip


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's main() and turn expected failures into one line and an exit code."""
    try:
        sys.exit(main() or 0)
    except Fatal as error:
        message, code = str(error), error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as error:
        explained = connect.explain(error)  # unreachable, refusing us, or not a queue service
        if explained is None:
            raise
        message, code = explained
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
