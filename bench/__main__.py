"""Benchmark every script against the raw SDK on the same endpoint; write BENCHMARKS.md.

    make bench                               # or: python -m bench (about 5 minutes)
    python -m bench --only idle,latency      # some sections (a partial run writes no file)
    python -m bench --account                # the configured account instead of Azurite

Each measurement runs on a fresh in-memory Azurite (or, with --account, on the account in
AZURE_STORAGE_CONNECTION_STRING / .env, in queues named bench-<run>-..., deleted at the end).
Nothing here is asserted by the tests; the targets are in the table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

from bench import idle, latency, report, tables, throughput
from bench.setup import Endpoints
from patterns.emulator import ROOT
from patterns.helper import cli
from patterns.helper.support import settings
from patterns.runner import echo

SECTIONS: dict[str, Callable[[Endpoints], tuple[list[report.Row], list[str]]]] = {
    "throughput": throughput.rows,
    "concurrency": throughput.concurrency_rows,
    "idle": idle.rows,
    "latency": latency.rows,
    "tables": tables.rows,
}
OUTPUT = ROOT / "BENCHMARKS.md"


def sections(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",")]
    if not chosen or any(name not in SECTIONS for name in chosen):
        raise argparse.ArgumentTypeError(f"list some of {', '.join(SECTIONS)}, got {text!r}")
    return chosen


def main() -> int:
    parser = cli.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--account", action="store_true",
        help=f"run against the account in {settings.CONNECTION_STRING_VAR} (not Azurite)",
    )  # fmt: skip
    parser.add_argument(
        "--only", type=sections, default=list(SECTIONS), metavar="A,B",
        help=f"sections to run, of {', '.join(SECTIONS)}",
    )  # fmt: skip
    parser.add_argument(
        "--count", type=cli.whole_number(least=100), default=throughput.COUNT,
        help="messages per throughput run",
    )  # fmt: skip
    parser.add_argument(
        "--samples", type=cli.whole_number(least=2), default=latency.SAMPLES,
        help="latency samples after idle per setting (while busy: 3x)",
    )  # fmt: skip
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    kind = (
        "the configured account"
        if args.account
        else "in-memory Azurite, a fresh one per measurement"
    )
    command = "make bench" if sys.argv[1:] == [] else "python -m bench " + shlex.join(sys.argv[1:])
    header = report.machine(kind, command, azurite=not args.account)
    echo(f"bench: against {kind}; sections {', '.join(args.only)}")
    rows: list[report.Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        endpoints = Endpoints(args.account, run, Path(tmp), args.count, args.samples)
        for name in args.only:
            found, said = SECTIONS[name](endpoints)
            rows += found
            notes += said
    text = report.document(header, rows, notes)
    print("\n" + report.markdown_table(rows), flush=True)
    if args.only == list(SECTIONS):
        OUTPUT.write_text(text, encoding="utf-8")
        echo(f"bench: wrote {OUTPUT.name}")
    else:
        echo(f"bench: a partial run; {OUTPUT.name} left as it was")
    return 0


if __name__ == "__main__":
    cli.run(main)
