"""Per-key order - a consumer of a sequential convoy: each order's events in sequence.

It applies each order's events strictly in sequence, while different orders go on in
parallel. Start three: they compete.

    python patterns/ordered/consumer.py
    python -m patterns.ordered.consumer --gap-timeout 10

The next sequence number each order expects lives in a table (`ordered`, PartitionKey = the
order, RowKey "next"). An event is applied only when its turn has come: its record (RowKey
"event-<seq>", the effect) and "next" moved on by one, in ONE transaction, on condition that
nobody moved "next" since we read it (its ETag). So two consumers never apply the same order's
events at once, and nothing is applied twice or out of turn. An event that is early is put back
(visible again in 1, 2, 4 s...); a duplicate of one applied is dropped; an event still early
after --gap-timeout seconds of waiting goes to the poison queue, naming the event it waits for.
"""

from __future__ import annotations

from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import TableClient, TableTransactionError, UpdateMode

from patterns.helper import BadMessage, cli, codec, consume
from patterns.helper.support import outage, tables  # this lesson's concern: a table

MAX_SEQ = 999_999  # six digits: the records' RowKeys (event-000001) sort in sequence
RACES = 10  # times in a row another consumer may move an order on first before we give up


def event_of(body: dict[str, Any]) -> tuple[str, int, str]:
    """(key, seq, event name) of a message, checked; BadMessage (to poison) if not."""
    key = tables.key(body, "key")  # the PartitionKey: / \ # ? are not allowed there
    seq, name = body.get("seq"), body.get("event")
    if type(seq) is not int or not 1 <= seq <= MAX_SEQ:  # not 1.0, not "2", not True
        raise BadMessage(f"seq must be a whole number from 1 to {MAX_SEQ}")
    if not isinstance(name, str) or not 0 < len(name) <= 100:
        raise BadMessage("event must be a name of 1 to 100 characters")
    return key, seq, name


def waits(args: Any) -> list[float]:
    """The put-backs an early event gets: retry_later's waits (1, 2, 4, 8 s..., doubled up to
    --retry-backoff-max), until together they reach --gap-timeout. They are counted from its
    dequeue count, which the service keeps across consumers and restarts, so time while no
    consumer runs (the gap's event may be in the queue right behind) is not held against it."""
    found: list[float] = []
    while sum(found) < args.gap_timeout:
        wait = min(args.retry_backoff * 2 ** len(found), args.retry_backoff_max)
        found.append(wait or args.visibility_timeout)  # --retry-backoff 0: its timeout
    return found


def apply(table: TableClient, key: str, seq: int, name: str) -> int:
    """Apply event `seq` of order `key` if its turn has come. Returns the seq the order
    expected: == seq, applied now; > seq, a duplicate (applied before); < seq, early."""
    for _ in range(RACES):
        try:
            row = table.get_entity(key, "next")
            expected, etag = row["next"], row.metadata["etag"]
        except ResourceNotFoundError:
            expected, etag = 1, None  # the order's first event
        if seq != expected:
            return expected
        new = {"PartitionKey": key, "RowKey": "next", "next": seq + 1, "last_event": name}
        write = ("update", new, {"mode": UpdateMode.REPLACE, "etag": etag,
                                 "match_condition": MatchConditions.IfNotModified})  # fmt: skip
        if etag is None:
            write = ("create", new)  # fails if another consumer created it meanwhile
        record = {"PartitionKey": key, "RowKey": f"event-{seq:06d}", "seq": seq, "event": name}
        # The effect and "next" in ONE transaction (same PartitionKey, the order), and only if
        # "next" is as we read it: if another consumer moved it first, the whole is refused,
        # and we read again and decide again.
        try:
            table.submit_transaction([("create", record), write])
        except TableTransactionError as error:
            if error.error_code in ("UpdateConditionNotSatisfied", "EntityAlreadyExists"):
                continue
            raise
        return seq
    raise RuntimeError(f"order {key} moved on under us {RACES} times in a row")


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "order-events", "queue to consume")
    parser.add_argument(
        "--table", type=tables.table_flag, default="ordered",
        help="the table of each order's next sequence number and its events",
    )  # fmt: skip
    parser.add_argument(
        "--gap-timeout", type=cli.seconds(least=1, most=7 * 24 * 3600), default=30.0,
        metavar="SECONDS", help="how long an early event waits for its turn before it is poisoned",
    )  # fmt: skip
    cli.add_consumer_arguments(parser, work_seconds=0.0)
    args = parser.parse_args()
    log = cli.logger("consumer")
    table = tables.table(args.table)  # created if missing; no table service: one line, exit 2
    stop = cli.Shutdown()
    put_backs = waits(args)
    options = cli.inbox_options(args)
    options["max_attempts"] += len(put_backs)  # a put-back is a delivery too: not a failure
    applied = 0

    with consume.Inbox(args.queue, **options) as inbox:
        log.info(f"applying events from '{args.queue}' in order, per key (table '{args.table}')")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    key, seq, name = event_of(codec.parse_json(message))
                    stop.sleep(args.work_seconds)
                    with outage.table_service.watch():  # the table service away: it comes back
                        expected = apply(table, key, seq, name)
                    if expected == seq:
                        applied += 1
                        log.info(f"applied {key} #{seq} {name}")
                    elif expected > seq:
                        log.info(f"duplicate {key} #{seq} dropped (already applied)")
                    elif message.dequeue_count > len(put_backs):  # waited past --gap-timeout
                        raise BadMessage(
                            f"{key} #{seq} waited {sum(put_backs):g} s for #{expected}, which "
                            f"never came (--gap-timeout {args.gap_timeout:g})"
                        )
                    else:  # early: put back, visible again in 1, 2, 4 s... (update_message)
                        later = inbox.retry_later(message)
                        log.info(f"early {key} #{seq} (waiting for #{expected}): {later}")
                        continue  # not deleted: it comes back
                    inbox.delete(message)  # applied, or a duplicate: only now delete it
    log.info(f"stopped: applied {applied} event(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
