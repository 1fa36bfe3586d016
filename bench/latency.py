"""Measure pipes-and-filters end-to-end latency and request/reply round trips (p50/p95).

    python -m bench.latency                # own in-memory Azurite, ~3 minutes
    python -m bench.latency --samples 10

The real scripts run as subprocesses (validate, enrich, finalize; replier) with their
default settings. "Idle" samples are sent after a random 2.5-4 s pause, when every script has
backed off to its slowest poll; "busy" samples are taken while a steady stream of other work
flows through the same queues.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

from azure.storage.queue import QueueServiceClient

from patterns.emulator import Azurite
from patterns.helper import cli, consume, settings
from patterns.runner import Proc, echo


def percentiles(values: list[float]) -> str:
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {cuts[18] * 1000:.0f} ms"


def order(tag: str) -> dict[str, object]:
    return {
        "order_id": f"ORD-{tag}-{uuid.uuid4().hex[:8]}",
        "amount": 25000,
        "items": ["item-A"],
        "sent_at": datetime.now(timezone.utc).isoformat(),
    }


def pipeline(env: dict[str, str], client: QueueServiceClient, samples: int, *opts: str) -> None:
    roles = ("finalize", "enrich", "validate")
    procs = [Proc(f"patterns.pipes_and_filters.{role}", *opts, env=env) for role in roles]
    try:
        for proc in procs:
            proc.wait_for(r"orders (from|on) ")
        final, inbox = procs[0], client.get_queue_client("queue-validate")

        def latency(order_id: str) -> float:
            line = final.wait_for(rf"finished {order_id} after (\S+) s", timeout=30)[0]
            return float(line.group(1))

        idle = []
        for _ in range(samples):
            time.sleep(random.uniform(2.5, 4.0))
            body = order("idle")
            inbox.send_message(json.dumps(body))
            idle.append(latency(str(body["order_id"])))
        echo(f"pipeline, one order after idle: {percentiles(idle)} ({samples} orders)")

        stop = threading.Event()

        def load() -> None:  # about 10 orders/s of background traffic
            while not stop.wait(0.1):
                inbox.send_message(json.dumps(order("load")))

        feeder = threading.Thread(target=load, daemon=True)
        feeder.start()
        time.sleep(2)
        busy = []
        for _ in range(samples * 3):
            body = order("busy")
            inbox.send_message(json.dumps(body))
            busy.append(latency(str(body["order_id"])))
            time.sleep(0.1)
        stop.set()
        feeder.join()
        echo(f"pipeline, while busy (~10 orders/s): {percentiles(busy)} ({len(busy)} orders)")
    finally:
        for proc in procs:
            proc.stop()


def round_trips(env: dict[str, str], client: QueueServiceClient, samples: int, *opts: str) -> None:
    replier = Proc("patterns.request_reply.replier", *opts, env=env)
    requests = client.get_queue_client("request-queue")
    mine, others = f"reply-{uuid.uuid4()}", f"reply-{uuid.uuid4()}"
    client.create_queue(mine)
    client.create_queue(others)
    replies = client.get_queue_client(mine)
    never = cli.Shutdown()

    def ask(reply_to: str) -> str:
        correlation_id = str(uuid.uuid4())
        body = {"correlation_id": correlation_id, "reply_to": reply_to, "payload": "hi"}
        requests.send_message(json.dumps(body), time_to_live=30)
        return correlation_id

    def round_trip() -> float:  # polls the way requestor.py does
        began = time.perf_counter()
        correlation_id = ask(mine)
        idle = consume.Backoff(initial=0.02, maximum=0.1)
        while True:
            for message in replies.receive_messages(max_messages=32):
                replies.delete_message(message)
                if json.loads(message.content).get("correlation_id") == correlation_id:
                    return time.perf_counter() - began
            idle.wait(never)

    try:
        replier.wait_for("waiting for requests")
        idle = []
        for _ in range(samples):
            time.sleep(random.uniform(2.5, 4.0))
            idle.append(round_trip())
        echo(f"request round trip, replier idle: {percentiles(idle)} ({samples} requests)")

        stop = threading.Event()

        def load() -> None:  # about 10 requests/s from someone else
            while not stop.wait(0.1):
                ask(others)

        feeder = threading.Thread(target=load, daemon=True)
        feeder.start()
        time.sleep(1)
        busy = [round_trip() for _ in range(samples * 3)]
        stop.set()
        feeder.join()
        echo(f"request round trip, replier busy: {percentiles(busy)} ({len(busy)} requests)")
    finally:
        replier.stop()
        client.delete_queue(mine)
        client.delete_queue(others)


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--samples", type=cli.whole_number(least=1), default=20, help="idle samples (busy: 3x)"
    )
    parser.add_argument(
        "--only", choices=("pipeline", "request-reply"), help="measure just one pattern"
    )
    parser.add_argument(
        "--idle-max",
        type=cli.idle_max,
        metavar="SECONDS",
        help="passed to the filters and the replier",
    )
    args = parser.parse_args()
    opts = ("--idle-max", f"{args.idle_max:g}") if args.idle_max else ()
    with tempfile.TemporaryDirectory() as tmp, Azurite(log_path=Path(tmp) / "az.log") as az:
        env = {**os.environ, settings.CONNECTION_STRING_VAR: az.connection_string}
        client = QueueServiceClient.from_connection_string(az.connection_string)
        if args.only != "request-reply":
            pipeline(env, client, args.samples, *opts)
        if args.only != "pipeline":
            round_trips(env, client, args.samples, *opts)
    return 0


if __name__ == "__main__":
    cli.run(main)
