"""Exactly-once effects - the producer: sends payments, some of them twice.

It sends some twice as a client that retries would.

    python patterns/exactly_once/producer.py                   # 20 payments to payments-queue
    python -m patterns.exactly_once.producer --duplicates 4    # 4 of them sent a second time

A payment is {"payment_id", "account", "amount"} (amount in cents: money is counted in whole
numbers, never in floats that round). A copy sent again carries the same payment_id: that is
how the consumer tells that it was applied already. The last line gives the balances the
accounts must end with: each unique payment counted once.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator

from patterns.helper import cli, connect
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "payments-queue", "queue to send to")
    parser.add_argument("--count", type=cli.whole_number(least=1), default=20, help="payments")
    parser.add_argument(
        "--accounts", type=cli.whole_number(least=1, most=1000), default=4,
        help="accounts the payments go to, in turn (acct-1, acct-2, ...)",
    )  # fmt: skip
    parser.add_argument(
        "--duplicates", type=cli.whole_number(least=0), default=0, metavar="N",
        help="send N of the payments a second time, as a client whose first send timed out",
    )  # fmt: skip
    cli.add_concurrency_argument(parser)
    args = parser.parse_args()
    if args.duplicates > args.count:
        parser.error(
            f"argument --duplicates: at most --count ({args.count}) can be sent twice, "
            f"got {args.duplicates}"
        )
    log = cli.logger("producer")
    queue = connect.open_queue(args.queue)
    run_id = uuid.uuid4().hex[:8]
    payments = [
        {
            "payment_id": f"pay-{n:03d}-{run_id}",  # the application id: the same in every copy
            "account": f"acct-{(n - 1) % args.accounts + 1}",
            "amount": random.randint(1, 99) * 100,  # cents
        }
        for n in range(1, args.count + 1)
    ]
    again = random.sample(payments, args.duplicates)  # the client's retries, sent after the rest

    def sends() -> Iterator[tuple[dict[str, object], str]]:
        yield from ((payment, "sent") for payment in payments)
        yield from ((payment, "sent again") for payment in again)

    def send(item: tuple[dict[str, object], str]) -> tuple[dict[str, object], str]:
        connect.send_json(queue, item[0])
        return item

    for payment, what in workers.concurrently(send, sends(), args.concurrency):
        log.info(f"{what} {payment['payment_id']}: {payment['account']} +{payment['amount']}")
    owed = Counter[str]()
    for payment in payments:  # each unique payment once: what the balances must be
        owed[str(payment["account"])] += int(payment["amount"])  # type: ignore[call-overload]
    twice = f" ({args.duplicates} of them twice)" if args.duplicates else ""
    log.info(f"sent {args.count} payments{twice} to '{args.queue}'")
    log.info("balances must end at: " + ", ".join(f"{a} {n}" for a, n in owed.items()))
    return 0


if __name__ == "__main__":
    cli.run(main)
