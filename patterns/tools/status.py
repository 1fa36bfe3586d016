"""Status: every queue, how many messages it holds and its poison count, grouped by pattern.

Keep it open in a terminal of its own and watch the depths rise and fall while producers and
consumers run (Ctrl+C stops it):

    python patterns/tools/status.py --watch          # or: make status ARGS=--watch
    python -m patterns.tools.status --prefix fanout  # only queues whose names start so

`messages` is the service's approximate message count: it includes the invisible ones, held
by a consumer or delayed (--delay). `visible` is what a peek sees now (up to 32): the ones a
consumer could take at once. Below the queues: the blobs the claim-check lesson keeps, and the
orphans among them (patterns/tools/blobs.py says what counts as one); then the lessons' tables
(balances per account, the next event each order waits for). Works against Azurite and a real
account alike.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueMessage, QueueServiceClient

from patterns.helper import Fatal, cli, connect
from patterns.helper.support import outage, tables
from patterns.helper.support.blobs import service as blob_service
from patterns.helper.support.lines import printable
from patterns.tools import blobs
from patterns.tools.queues import classify, is_poison, sort_key, source_queue, tutorial_tables

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen
MAX_TABLE_ROWS = 5000  # rows read per table: a summary, not an export
SHOWN = 6  # accounts or orders named in a summary line


@dataclass
class Row:
    group: str  # the pattern's title, or "other"
    queue: str
    messages: int | None  # None: the queue does not exist (only its poison queue does)
    visible: int | None  # peeked now, up to 32 (None: no queue, or the peek failed)
    poison: int | None  # None: no poison queue


def counts(svc: QueueServiceClient, prefix: str) -> dict[str, tuple[int, int | None]]:
    """(approximate message count, visible now) of every queue whose name starts with
    `prefix`. A peek cannot see invisible messages (held, or delayed): the difference."""
    return {
        name: (total, None if peeked is None else len(peeked))
        for name, (total, peeked) in survey(svc, prefix).items()
    }


def survey(
    svc: QueueServiceClient, prefix: str
) -> dict[str, tuple[int, list[QueueMessage] | None]]:
    """(approximate message count, the messages a peek sees now: up to 32) of every queue
    whose name starts with `prefix`; None for a peek that failed. The dashboard reads the
    poison records' reasons from the same peeks (patterns/tools/dashboard.py)."""
    names = [q.name for q in svc.list_queues(name_starts_with=prefix or None)]

    def count(name: str) -> tuple[int, list[QueueMessage] | None] | None:
        queue = svc.get_queue_client(name)
        try:
            total = queue.get_queue_properties().approximate_message_count
        except ResourceNotFoundError:
            return None  # deleted since it was listed
        try:
            peeked: list[QueueMessage] | None = list(
                queue.peek_messages(max_messages=connect.MAX_BATCH)
            )
        except HttpResponseError:  # e.g. a message the service cannot hand out (Azurite, \x00)
            peeked = None  # shown as '?': the count still stands
        return total, peeked

    with ThreadPoolExecutor(max_workers=8) as pool:
        found = dict(zip(names, pool.map(count, names), strict=True))
    return {name: n for name, n in found.items() if n is not None}


def rows(found: dict[str, tuple[int, int | None]], prefix: str = "") -> list[Row]:
    """One row per queue, its poison queue's count beside it, in the tutorial's order."""
    table: dict[str, Row] = {}
    for name in sorted(found, key=lambda n: sort_key(n, prefix)):
        poison = is_poison(name)
        queue = source_queue(name) if poison else name
        if queue not in table:
            pattern = classify(queue, prefix)
            group = pattern[0].title if pattern else "other"
            table[queue] = Row(group, queue, None, None, None)
        if poison:
            table[queue].poison = found[name][0]
        else:
            table[queue].messages, table[queue].visible = found[name]
    return sorted(table.values(), key=lambda r: sort_key(r.queue, prefix))


def render(table: list[Row], endpoint: str, prefix: str) -> str:
    scope = f" starting with '{prefix}'" if prefix else ""
    stamp = datetime.now().strftime("%H:%M:%S")
    if not table:
        return f"{stamp}  no queues{scope} at {endpoint} yet\n"
    head = ("pattern", "queue", "messages", "visible", "poison")
    lines: list[tuple[str, ...]] = []
    previous = ""
    for row in table:
        lines.append(
            (
                row.group if row.group != previous else "",
                row.queue,
                "-" if row.messages is None else str(row.messages),
                _visible(row),
                "-" if row.poison is None else str(row.poison),
            )
        )
        previous = row.group
    w = [max(len(line[i]) for line in [head, *lines]) for i in range(5)]
    out = [
        f"{a:<{w[0]}}  {b:<{w[1]}}  {c:>{w[2]}}  {d:>{w[3]}}  {e:>{w[4]}}"
        for a, b, c, d, e in [head, *lines]
    ]
    out.append(
        f"{stamp}  {len(table)} queue(s){scope} at {endpoint}  (visible: a peek sees them now; "
        f"poison: in <queue>{connect.POISON_SUFFIX}; -: no queue)"
    )
    return "\n".join(out) + "\n"


def _visible(row: Row) -> str:
    if row.messages is None:
        return "-"  # no such queue
    if row.visible is None:
        return "?"  # the peek failed
    return f"{row.visible}+" if row.visible == connect.MAX_BATCH else str(row.visible)


def blob_lines(svc: QueueServiceClient, prefix: str, orphan_age: float) -> str:
    """A line per blob container in use (count, bytes, orphans), a line per orphan; "" when
    there are none, or no blob service is configured (e.g. a queue-only SAS)."""
    try:
        found = blobs.tutorial_blobs(blob_service(), svc, prefix, orphan_age)
    except (Fatal, *connect.FAILED):
        return ""
    out = []
    for container in blobs.CONTAINERS:
        mine = [blob for blob in found if blob.container == container]
        if mine:
            orphans = [blob for blob in mine if blob.state == "orphan"]
            unknown = sum(blob.state == "unknown" for blob in mine)
            out.append(
                f"blobs in {container}: {len(mine)} ({sum(b.size for b in mine)} bytes), "
                f"{len(orphans)} orphan(s)" + (f", {unknown} not sure" if unknown else "")
            )
            out += [  # a blob name is anyone's text: escaped
                f"  orphan: {printable(b.name)}  {b.size} bytes, {b.age:.0f} s old" for b in orphans
            ]
    if out:
        out.append(
            f"(orphan: no message refers to it, over {orphan_age:g} s old; not sure: younger, "
            "or its queue holds messages a peek cannot see; `cleanup --orphans` removes orphans)"
        )
    return "".join(line + "\n" for line in out)


@dataclass
class TableRow:
    lesson: str  # the pattern's title
    table: str  # its name in the account (with the prefix)
    rows: int  # entities read (at most MAX_TABLE_ROWS)
    summary: str  # what the rows say: balances, the next event per order


def _natural(text: str) -> list[object]:
    """Sort key: acct-2 before acct-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _named(items: dict[str, str]) -> str:
    shown = [f"{key} {items[key]}" for key in sorted(items, key=_natural)[:SHOWN]]
    more = f", ... {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(shown) + more


def _payments(entities: list[dict[str, object]]) -> str:
    """The exactly-once lesson's table: balances per account, payments applied."""
    balances = {
        str(e["PartitionKey"]): str(getattr(e["balance"], "value", e["balance"]))
        for e in entities
        if e["RowKey"] == "balance" and "balance" in e
    }
    applied = sum(str(e["RowKey"]).startswith("payment-") for e in entities)
    return f"{applied} payment record(s); balances: {_named(balances) or 'none yet'}"


def _ordered(entities: list[dict[str, object]]) -> str:
    """The per-key order lesson's table: the event each order waits for next."""
    following = {str(e["PartitionKey"]): f"#{e['next']}" for e in entities if e["RowKey"] == "next"}
    applied = sum(str(e["RowKey"]).startswith("event-") for e in entities)
    return (
        f"{len(following)} order(s), {applied} event(s) applied; next: "
        f"{_named(following) or 'none yet'}"
    )


SUMMARIES = {"payments": _payments, "ordered": _ordered}  # by the table's tutorial name


def table_rows(prefix: str = "") -> list[TableRow]:
    """One row per lesson table that exists (prefixed as the queues are, see queues.py), with
    its row count and what its rows say; [] when no table service is configured. The
    dashboard shows these too."""
    try:
        existing = {t.name for t in tables.service().list_tables()}
    except Fatal:
        return []
    found = []
    for pattern, name, table in tutorial_tables(prefix):
        if table not in existing:
            continue
        client = tables.service().get_table_client(table)
        entities = []
        for entity in client.list_entities(results_per_page=1000):
            entities.append(entity)
            if len(entities) >= MAX_TABLE_ROWS:
                break
        summary = SUMMARIES[name](entities) if name in SUMMARIES else ""
        found.append(TableRow(pattern.title, table, len(entities), summary))
    return found


def table_lines(prefix: str) -> str:
    """A line per lesson table: `table payments (exactly-once effects): 24 rows; ...`."""
    try:
        found = table_rows(prefix)
    except connect.FAILED as error:
        return f"tables: the table service cannot be read ({outage.in_short(error)})\n"
    return "".join(
        f"table {row.table} ({row.lesson}): {row.rows}{'+' if row.rows >= MAX_TABLE_ROWS else ''}"
        f" row(s); {row.summary}\n"
        for row in found
    )


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watch", action="store_true", help="redraw every second until Ctrl+C")
    parser.add_argument(
        "--prefix",
        default="",
        metavar="TEXT",
        help="only queues whose names start with TEXT (tutorial names may follow it)",
    )
    parser.add_argument(
        "--interval",
        type=cli.seconds(least=0.1, most=3600),
        default=1.0,
        metavar="SECONDS",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--orphan-age", type=cli.seconds(most=7 * 24 * 3600), default=blobs.ORPHAN_AGE,
        metavar="SECONDS", help="a blob no message refers to is an orphan once this old",
    )  # fmt: skip
    args = parser.parse_args()
    cli.logger("status")  # where the settings came from, if not the obvious place
    # A failing peek is shown as '?'; the SDK would also print its multi-line traceback.
    logging.getLogger("azure.storage.queue").setLevel(logging.ERROR)
    svc = connect.service()
    endpoint = outage.endpoint()  # without a SAS token
    found = rows(counts(svc, args.prefix), args.prefix)
    print(
        render(found, endpoint, args.prefix)
        + blob_lines(svc, args.prefix, args.orphan_age)
        + table_lines(args.prefix),
        end="",
    )
    if not args.watch:
        return 0

    if os.name == "nt":
        os.system("")  # lets the Windows console understand the clear-screen sequence
    clear = CLEAR if sys.stdout.isatty() else "\n"
    stop = cli.Shutdown()
    while not stop.wait(args.interval):
        try:
            frame = render(rows(counts(svc, args.prefix), args.prefix), endpoint, args.prefix)
            frame += blob_lines(svc, args.prefix, args.orphan_age) + table_lines(args.prefix)
        except connect.FAILED as error:
            if isinstance(error, connect.UNREACHABLE):
                reason = outage.unreachable_message(error)
            else:
                reason = str(error).splitlines()[0]
            frame = f"{datetime.now():%H:%M:%S}  {reason}; trying again\n"
        print(clear + frame, end="", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
