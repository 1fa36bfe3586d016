"""Request/reply - the replier: answers each request on the queue its requestor named.

    python patterns/request_reply/replier.py
    python -m patterns.request_reply.replier --idle-max 0.2

Reads request-queue. A request is {"correlation_id", "reply_to", "payload"}; the answer is
{"correlation_id", "result": PAYLOAD UPPERCASED}, sent to `reply_to`. A request with a bad or
missing field gets {"correlation_id", "error"} instead. Replies go only to queues named
`reply-...`, and never to a queue that does not exist (the requestor gave up and deleted it):
the replier does not create queues on anyone's behalf. A request that cannot be answered at
all (no usable reply address, not JSON) goes to request-queue-poison with the reason.
"""

from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError

from patterns.helper import BadMessage, cli, codec, connect, consume

REPLY_PREFIX = "reply-"


def reply_address(request: dict[str, object]) -> str:
    """The request's reply queue, or BadMessage (to poison) if we must not reply there."""
    reply_to = request.get("reply_to")
    if not isinstance(reply_to, str) or not reply_to:
        raise BadMessage("no reply_to: nowhere to send the answer")
    valid_name = len(reply_to) <= 63 and connect.NAME.match(reply_to)
    if not (reply_to.startswith(REPLY_PREFIX) and valid_name):
        raise BadMessage(
            f"refused reply_to {reply_to!r}: replies go only to queues named '{REPLY_PREFIX}...'"
        )
    return reply_to


def answer(request: dict[str, object]) -> dict[str, object]:
    """The service itself: uppercase the payload (or explain what is wrong with the request)."""
    correlation_id, payload = request.get("correlation_id"), request.get("payload")
    if not isinstance(correlation_id, str) or not correlation_id:
        return {"correlation_id": correlation_id, "error": "correlation_id is missing"}
    if not isinstance(payload, str):
        return {"correlation_id": correlation_id, "error": "payload is missing or not a string"}
    return {"correlation_id": correlation_id, "result": payload.upper()}


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "request-queue", "queue to read requests from")
    cli.add_consumer_arguments(parser)
    args = parser.parse_args()
    log = cli.logger("replier")
    stop = cli.Shutdown()
    answered = 0

    with consume.Inbox(args.queue, **cli.inbox_options(args)) as inbox:
        log.info(f"waiting for requests on '{args.queue}'")
        while not stop.requested:
            for message in inbox.receive(stop):  # one receive call; backs off when empty
                with inbox.settle(message):  # fails: retried later or poisoned
                    request = codec.parse_json(message)
                    reply_to = reply_address(request)
                    reply = answer(request)
                    # get_queue_client() does not create the queue: if the requestor is gone,
                    # the send fails with "not found" and the reply is dropped.
                    try:
                        connect.send_json(connect.service().get_queue_client(reply_to), reply)
                    except ResourceNotFoundError:
                        log.warning(
                            f"reply queue '{reply_to}' no longer exists (its requestor gave up); "
                            f"reply to {reply['correlation_id']} dropped"
                        )
                    else:
                        answered += 1
                        outcome = reply.get("result", f"error: {reply.get('error')}")
                        log.info(f"answered {reply['correlation_id']} on '{reply_to}': {outcome!r}")
                    inbox.delete(message)  # replied (or no one waits any more): delete it
    log.info(f"stopped: answered {answered} request(s)")
    return 0


if __name__ == "__main__":
    cli.run(main)
