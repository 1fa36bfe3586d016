"""Peek: show the next messages of a queue without taking them.

    python patterns/tools/peek.py tasks-queue              # the next message
    python -m patterns.tools.peek tasks-queue-poison -n 5  # the next 5 (at most 32)

This is the service's peek: nothing is received, hidden, deleted or counted as a delivery, so
the queue is exactly as it was. Messages a consumer holds right now (invisible) are not shown.
JSON bodies are pretty-printed; a poison record's `body` is unpacked too. Base64 text (as an
Azure Functions queue trigger expects) is shown decoded, and the header says so.
"""

from __future__ import annotations

import json
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueMessage

from patterns.helper import Fatal, cli, connect
from patterns.helper.support import encoding, flags
from patterns.helper.support.lines import printable


def pretty(text: str) -> str:
    """JSON pretty-printed (a poison record's JSON body as well); anything else as it is.
    Control characters are escaped either way: a message cannot clear or add to the screen."""
    try:
        body: Any = json.loads(text)
        record = isinstance(body, dict) and "source_queue" in body
        if record and (inner := encoding.json_of(body.get("body") or "")) is not None:
            body = {**body, "body": inner}  # a poison record: its original body, readably
        shown = json.dumps(body, indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON, or too deep or big a number for Python
        return printable(text)
    return "\n".join(printable(line) for line in shown.split("\n"))


def describe(n: int, message: QueueMessage) -> str:
    inserted = message.inserted_on.isoformat(timespec="seconds") if message.inserted_on else "?"
    expires = message.expires_on.isoformat(timespec="seconds") if message.expires_on else "?"
    text, was_base64 = encoding.readable(message.content or "")
    head = (
        f"--- {n}: message {message.id}  dequeue count {message.dequeue_count}  "
        f"inserted {inserted}  expires {expires}"
        + ("  (Base64, shown decoded)" if was_base64 else "")
    )
    return head + "\n" + pretty(text)


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("queue", type=flags.any_queue, help="queue to look into")
    parser.add_argument(
        "-n", "--count", type=cli.whole_number(least=1, most=connect.MAX_BATCH), default=1,
        metavar="N", help="how many messages to show",
    )  # fmt: skip
    args = parser.parse_args()
    cli.logger("peek")  # where the settings came from, if not the obvious place
    queue = connect.service().get_queue_client(args.queue)  # not open_queue: create nothing
    try:
        total = queue.get_queue_properties().approximate_message_count
        messages = list(queue.peek_messages(max_messages=args.count))
    except ResourceNotFoundError:
        raise Fatal(f"queue '{args.queue}' does not exist") from None
    for n, message in enumerate(messages, 1):
        print(describe(n, message))
    print(
        f"{len(messages)} message(s) shown of about {total} in '{args.queue}' "
        "(peeked: nothing was taken)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
