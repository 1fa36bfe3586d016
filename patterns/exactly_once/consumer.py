"""Exactly-once effects - the consumer: applies each payment to its balance exactly once.

Each payment goes to its account's balance in a table once, however often the queue delivers it.

    python patterns/exactly_once/consumer.py            # start two or three: they compete
    python -m patterns.exactly_once.consumer --naive    # without the record: see a double charge

The queue delivers at least once: a consumer killed between its work and its delete, a lost
answer, a client that sent the same payment twice - each brings a payment back. So beside each
account's balance (table `payments`, PartitionKey = the account, RowKey "balance") the consumer
writes the record "payment X applied" (RowKey "payment-X"), in ONE transaction with the balance.
A payment that comes back finds its record: the consumer only deletes the message.

A message is input from anyone who can write to the queue: the table comes from --table, never
from the message; account and payment_id are checked before they become keys, the amount must
be a whole number of cents. Anything else goes to the poison queue with the reason.
"""

from __future__ import annotations

from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables import (
    EdmType,
    EntityProperty,
    TableClient,
    TableTransactionError,
    UpdateMode,
)

from patterns.helper import BadMessage, cli, codec, consume
from patterns.helper.support import outage, tables  # this lesson's concern: a table

MAX_AMOUNT = 100_000_000  # cents: a bigger payment is not one this lesson's producer sends
RACES = 10  # times in a row another consumer may change the balance first before we give up


def payment_of(body: dict[str, Any]) -> tuple[str, str, int]:
    """(payment_id, account, amount) of a message, checked; BadMessage (to poison) if not."""
    payment_id = codec.app_id(body, "payment_id")
    tables.key(body, "payment_id")  # it becomes part of a RowKey: / \ # ? are not allowed there
    account = tables.key(body, "account")  # the PartitionKey
    amount = body.get("amount")
    if type(amount) is not int or not 0 < amount <= MAX_AMOUNT:  # not 1.5, not "7", not True
        raise BadMessage(f"amount must be a whole number of cents from 1 to {MAX_AMOUNT}")
    return payment_id, account, amount


def apply(
    table: TableClient, payment_id: str, account: str, amount: int, naive: bool
) -> int | None:
    """Add `amount` to the account's balance; the new balance, or None if this payment was
    applied before (only with its record: the --naive consumer keeps none, and adds it again)."""
    for _ in range(RACES):
        try:
            row = table.get_entity(account, "balance")
            balance, etag = row["balance"].value, row.metadata["etag"]
        except ResourceNotFoundError:
            balance, etag = 0, None  # the account's first payment
        new = {"PartitionKey": account, "RowKey": "balance",
               "balance": EntityProperty(balance + amount, EdmType.INT64)}  # fmt: skip
        # If-Match: only if nobody changed the balance since we read it (else: read again).
        write = ("update", new, {"mode": UpdateMode.REPLACE, "etag": etag,
                                 "match_condition": MatchConditions.IfNotModified})  # fmt: skip
        if etag is None:
            write = ("create", new)  # fails if another consumer created it meanwhile
        record = {"PartitionKey": account, "RowKey": f"payment-{payment_id}", "amount": amount}
        # The record and the balance in ONE entity-group transaction (same PartitionKey, the
        # account): both are written or neither. Two separate writes would leave a gap: killed
        # after the balance and before the record, the payment comes back, finds no record and
        # is charged again; killed after the record and before the balance, it is never charged.
        # Creating the record fails if it exists: that is the check for "applied before".
        try:
            table.submit_transaction([write] if naive else [("create", record), write])
        except TableTransactionError as error:
            if not naive and error.index == 0 and error.error_code == "EntityAlreadyExists":
                return None  # its record is there: applied before (a redelivery, a duplicate)
            if error.error_code in ("UpdateConditionNotSatisfied", "EntityAlreadyExists"):
                continue  # another consumer changed the balance first: read it again
            raise
        return balance + amount
    raise RuntimeError(f"the balance of {account} changed under us {RACES} times in a row")


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "payments-queue", "queue to consume")
    parser.add_argument("--table", type=tables.table_flag, default="payments",
                        help="the table of balances and applied payments")  # fmt: skip
    parser.add_argument(
        "--naive", action="store_true",
        help="apply without the record: a payment delivered twice is charged twice",
    )  # fmt: skip
    cli.add_consumer_arguments(parser, work_seconds=0.0)
    args = parser.parse_args()
    log = cli.logger("consumer")
    table = tables.table(args.table)  # created if missing; no table service: one line, exit 2
    stop = cli.Shutdown()
    applied = repeats = 0

    with consume.Inbox(args.queue, **cli.inbox_options(args)) as inbox:
        how = "--naive: no record of applied payments" if args.naive else "each one once"
        log.info(f"applying payments from '{args.queue}' to table '{args.table}' ({how})")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    payment_id, account, amount = payment_of(codec.parse_json(message))
                    log.info(f"took {payment_id} (attempt {message.dequeue_count})")
                    stop.sleep(args.work_seconds)  # e.g. calling the bank; Ctrl+C interrupts it
                    with outage.table_service.watch():  # the table service away: it comes back
                        balance = apply(table, payment_id, account, amount, args.naive)
                    if balance is None:
                        repeats += 1
                        log.info(f"already applied {payment_id}: only deleting the message")
                    else:
                        applied += 1
                        log.info(f"applied {payment_id} to {account}: +{amount}, balance {balance}")
                    # Only now: deleted before the transaction, a crash in between would lose
                    # the payment; deleted after it, a crash in between only brings it back,
                    # and its record makes that harmless.
                    inbox.delete(message)
    log.info(f"stopped: applied {applied} payment(s), {repeats} repeat(s) only deleted")
    return 0


if __name__ == "__main__":
    cli.run(main)
