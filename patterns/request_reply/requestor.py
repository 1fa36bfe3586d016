"""Request/reply - the requestor: asks questions over a queue and waits for the answers.

    python patterns/request_reply/requestor.py                       # one "hello world"
    python -m patterns.request_reply.requestor --count 10 --timeout 5

Creates its own reply queue, `reply-<uuid>`, sends --count requests to request-queue (each
with its own correlation id and a time-to-live of --timeout seconds, so nobody answers it
after we stopped waiting), then polls its reply queue and matches each reply to its request
by correlation id. Exit 0 when every reply arrived, 1 on timeout (or an error reply), 130
when Ctrl+C stopped it first. The reply queue is deleted on every way out: success, timeout,
error, Ctrl+C (if the service is down by then, the warning says how to remove it later).
"""

from __future__ import annotations

import itertools
import math
import time
import uuid

from azure.core.exceptions import ResourceNotFoundError

from patterns.helper import BadMessage, cli, codec, connect, consume
from patterns.helper.support import workers


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    cli.add_queue_argument(parser, "--queue", "request-queue", "queue to send requests to")
    parser.add_argument("--count", type=cli.whole_number(least=1), default=1, help="how many")
    parser.add_argument("--payload", default="hello world", help="what to ask")
    parser.add_argument(
        "--timeout", type=cli.seconds(above=0, most=7 * 24 * 3600), default=30.0,
        metavar="SECONDS", help="how long to wait for the replies; also the requests' time-to-live",
    )  # fmt: skip
    cli.add_concurrency_argument(parser)
    args = parser.parse_args()
    log = cli.logger("requestor")
    stop = cli.Shutdown()
    requests = connect.open_queue(args.queue)

    reply_queue = f"reply-{uuid.uuid4()}"  # ours alone: no one else's replies land in it
    # A reply is deleted the moment it arrives; a short visibility timeout means one whose
    # receive was lost (say, in an outage) is back in seconds, not after the default 30 s.
    replies = consume.Inbox(connect.open_queue(reply_queue), visibility_timeout=5)
    try:
        pending: dict[str, tuple[int, float]] = {}  # correlation id -> (request number, sent)
        ttl = max(1, math.ceil(args.timeout))  # an unanswered request expires with our wait
        started = time.monotonic()

        def payload(n: int) -> str:  # several requests: "hello world 1", "... 2", ...
            return args.payload if args.count == 1 else f"{args.payload} {n}"

        def send(n: int) -> str:
            correlation_id = str(uuid.uuid4())
            request = {"correlation_id": correlation_id, "reply_to": reply_queue}
            pending[correlation_id] = (n, time.monotonic())
            connect.send_json(requests, {**request, "payload": payload(n)}, time_to_live=ttl)
            return correlation_id

        # Made one by one as there is room to send; Ctrl+C stops the sending too.
        numbers = itertools.takewhile(lambda n: not stop.requested, range(1, args.count + 1))
        sending = workers.concurrently(send, numbers, args.concurrency)
        for n, correlation_id in enumerate(sending, 1):
            log.info(f"sent request {n} ({correlation_id}): {payload(n)!r}")
        asked = len(pending)  # all of them, unless Ctrl+C stopped the sending
        log.info(f"waiting up to {args.timeout:g} s for {asked} reply(ies) on '{reply_queue}'")

        idle = consume.Backoff(initial=0.02, maximum=0.1)  # short polls: someone is waiting
        errors = strays = 0
        while pending and not stop.requested and time.monotonic() - started < args.timeout:
            messages = replies.receive_batch(connect.MAX_BATCH)  # one call; [] in an outage
            if not messages:
                idle.wait(stop)
                continue
            idle.reset()
            for message in messages:
                replies.delete(message)  # taken: the reply is ours, whatever it says
                try:
                    reply = codec.parse_json(message)
                except BadMessage:
                    reply = {}
                correlation_id = reply.get("correlation_id")
                # The correlation check: is this the answer to one of *our* open requests?
                if not isinstance(correlation_id, str) or correlation_id not in pending:
                    strays += 1
                    log.warning(f"ignored a stray reply: {(message.content or '')[:100]!r}")
                    continue
                n, sent = pending.pop(correlation_id)
                ms = (time.monotonic() - sent) * 1000
                if "error" in reply:
                    errors += 1
                    log.warning(f"request {n} failed after {ms:.0f} ms: {reply['error']}")
                else:
                    log.info(f"reply to request {n}: {reply.get('result')!r} after {ms:.0f} ms")

        missing = len(pending) + args.count - asked
        if stop.requested and missing:  # interrupted before the job was done
            log.info(f"stopped by Ctrl+C with {missing} reply(ies) still missing")
            return 130
        for correlation_id, (n, _) in sorted(pending.items(), key=lambda item: item[1]):
            log.warning(f"no reply to request {n} ({correlation_id})")
        if pending:
            log.warning(f"timed out after {args.timeout:g} s: {len(pending)} reply(ies) missing")
            return 1
        seconds = time.monotonic() - started
        extra = f", ignored {strays} stray(s)" if strays else ""
        log.info(f"all {args.count} reply(ies) received in {seconds:.2f} s{extra}")
        return 1 if errors else 0
    finally:
        try:
            connect.service().delete_queue(reply_queue)
            log.info(f"deleted reply queue '{reply_queue}'")
        except ResourceNotFoundError:
            pass
        except connect.FAILED as error:  # say how to remove it
            why = "service unreachable" if isinstance(error, connect.UNREACHABLE) else error.reason
            log.warning(
                f"could not delete reply queue '{reply_queue}' ({why}); it is left over: "
                f"remove it later with python patterns/tools/cleanup.py --prefix {reply_queue}"
            )


if __name__ == "__main__":
    cli.run(main)
