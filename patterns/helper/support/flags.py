"""Flags: the argument parser, with a usage error in one line; a numeric flag's range stated
once (ASCII digits only), shown in --help beside its default; queue names checked - all before
the script sends a single request; and the consumer flags, one per option of consume.Inbox.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from patterns.helper import Fatal, connect, consume


class HelpFormatter(argparse.HelpFormatter):
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


@dataclass(frozen=True)
class Range:
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


def whole_number(*, least: int, most: int | None = None) -> Range:
    """A whole number from `least` to `most` (no upper limit if None)."""
    if most is None:
        return Range(int, f"a whole number of {least} or more", "", lambda v: v >= least)
    between = f"from {least} to {most}"
    return Range(int, f"a whole number {between}", f"{least}-{most}", lambda v: least <= v <= most)


def seconds(*, most: float, least: float = 0, above: float | None = None) -> Range:
    """A duration in seconds: from `least` (or more than `above`) up to `most`."""
    if above is not None:
        expected = f"seconds above {above:g}, at most {most:g}"
        return Range(float, expected, "", lambda v: above < v <= most)
    expected = f"seconds from {least:g} to {most:g}"
    return Range(float, expected, f"{least:g}-{most:g}", lambda v: least <= v <= most)


WEEK = 7 * 24 * 3600  # the longest visibility timeout or delay the service allows
# --idle-max: the backoff starts at 0.1 s, so a lower ceiling would only poll faster.
idle_max = seconds(least=0.1, most=60)
# --delay: a message's initial visibility timeout.
delay = whole_number(least=0, most=WEEK)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a usage error as one line like every other expected failure
    (`error: argument --count: expected ...`, exit 2) instead of the whole usage first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def _name_type(consumed: bool = False, kind: str = "queue") -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            return connect.queue_name(text, consumed=consumed, kind=kind)
        except Fatal as error:  # the error line names the flag
            raise argparse.ArgumentTypeError(str(error)) from None

    return check


any_queue = _name_type()  # `type=` for a queue name
consumed_queue = _name_type(consumed=True)  # a queue someone consumes: room for -poison
blob_container = _name_type(kind="blob container")  # the same rules as a queue name's


def add_queue_argument(
    parser: argparse.ArgumentParser, flag: str, default: str, help: str, consumed: bool = True
) -> None:
    """A flag that names a queue, checked before any request; a queue someone `consumed` needs
    room for its -poison queue (producers check their queues by the same rule)."""
    parser.add_argument(flag, type=consumed_queue if consumed else any_queue, default=default,
                        help=help)  # fmt: skip


def add_concurrency_argument(
    parser: argparse.ArgumentParser, default: int = 8, help: str = "sends in flight at once"
) -> None:
    """--concurrency: for producers, sends in flight (Queue Storage has no batch send, so sends
    overlap); for a consumer, messages in work at once (its own default and help)."""
    parser.add_argument(
        "--concurrency", type=whole_number(least=1, most=64), default=default, metavar="N",
        help=help,
    )  # fmt: skip


CONSUMER_FLAGS = {  # flag: (its range, default, metavar, help)
    "--batch-size": (whole_number(least=1, most=connect.MAX_BATCH), consume.BATCH_SIZE, "N",
                     "messages per receive call"),
    "--visibility-timeout": (whole_number(least=1, most=WEEK), consume.VISIBILITY_TIMEOUT,
                             "SECONDS", "how long a received message stays hidden from others"),
    "--max-attempts": (whole_number(least=1), consume.MAX_ATTEMPTS, "N",
                       "deliveries before a failing message moves to the poison queue"),
    "--retry-backoff": (whole_number(least=0, most=3600), consume.RETRY_BACKOFF, "SECONDS",
                        "wait before retrying a failed task, doubled per failure (0: wait out "
                        "the visibility timeout)"),
    "--retry-backoff-max": (whole_number(least=1, most=WEEK), consume.RETRY_BACKOFF_MAX,
                            "SECONDS", "longest wait between two attempts"),
    "--idle-max": (idle_max, consume.IDLE_MAX, "SECONDS",
                   "longest wait between polls of an empty queue"),
}  # fmt: skip


def add_consumer_arguments(
    parser: argparse.ArgumentParser, *, work_seconds: float | None = None
) -> None:
    """The options every consumer has (and --work-seconds for those that simulate work)."""
    if work_seconds is not None:
        parser.add_argument("--work-seconds", type=seconds(most=3600), default=work_seconds,
                            metavar="SECONDS", help="simulated work per message")  # fmt: skip
    for flag, (kind, default, metavar, help) in CONSUMER_FLAGS.items():
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)


def inbox_options(args: argparse.Namespace) -> dict[str, Any]:
    """The consumer flags as consume.Inbox's options."""
    return {name: getattr(args, name) for name in (f[2:].replace("-", "_") for f in CONSUMER_FLAGS)}
