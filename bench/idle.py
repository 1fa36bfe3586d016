"""Idle cost: requests per second per queue for every consuming script with nothing to do,
counted at the server (Azurite's access log), all scripts at once on queues of their own."""

from __future__ import annotations

import time
from typing import NamedTuple

from bench import report
from bench.setup import Endpoints, Setup
from patterns.runner import Proc, echo, stop_all

WARM_UP = 3.0  # s: every backoff has reached its ceiling (0.1 + 0.2 + 0.4 + 0.8 s at default)
WINDOW = 12.0  # s counted
LOWER_IDLE_MAX = "0.2"  # the lower --idle-max of the latency rows: what it costs when idle
READY = r"waiting|subscribed|validating|enriching|watching"
P = "patterns"


class Script(NamedTuple):
    what: str
    module: str
    args: list[str]
    queues: list[str]  # whose requests count (the requestor's reply queue: named when it runs)


def scripts(setup: Setup) -> list[Script]:
    """Every consuming script, each on queues of its own."""
    q = setup.name
    low = ["--idle-max", LOWER_IDLE_MAX]
    levels = [f"{q('prio')}-{level}-priority" for level in ("high", "normal", "low")]
    found = [Script(*script) for script in [
        ("competing_consumers/consumer.py", f"{P}.competing_consumers.consumer",
         ["--queue", q("cc")], [q("cc")]),
        ("competing_consumers/consumer.py --concurrency 4", f"{P}.competing_consumers.consumer",
         ["--queue", q("cc4"), "--concurrency", "4"], [q("cc4")]),
        ("competing_consumers/consumer_bare.py", f"{P}.competing_consumers.consumer_bare",
         ["--queue", q("bare")], [q("bare")]),
        ("fanout/consumer.py (a subscriber)", f"{P}.fanout.consumer",
         ["--prefix", q("fan-"), "--subscriber", "a"], [q("fan-a")]),
        ("priority/consumer.py", f"{P}.priority.consumer",
         ["--prefix", q("prio")], levels),
        ("claim_check/consumer.py", f"{P}.claim_check.consumer",
         ["--queue", q("claim")], [q("claim")]),
        ("load_leveling/autoscaler.py with --min 1 consumer", f"{P}.load_leveling.autoscaler",
         ["--queue", q("level")], [q("level")]),
        ("request_reply/requestor.py, its reply queue while it waits",
         f"{P}.request_reply.requestor", ["--queue", q("nobody"), "--timeout", "60"], []),
    ]]  # fmt: skip
    for flags, label in (([], ""), (low, f" --idle-max {LOWER_IDLE_MAX}")):
        tag = "low" if flags else "def"
        found += [Script(*script) for script in [
            (f"pipes_and_filters/validate.py{label}", f"{P}.pipes_and_filters.validate",
             ["--input", q(f"{tag}-v"), "--output", q(f"{tag}-e"),
              "--rejected", q(f"{tag}-r"), *flags], [q(f"{tag}-v")]),
            (f"pipes_and_filters/enrich.py{label}", f"{P}.pipes_and_filters.enrich",
             ["--input", q(f"{tag}-e"), "--output", q(f"{tag}-f"), *flags], [q(f"{tag}-e")]),
            (f"pipes_and_filters/finalize.py{label}", f"{P}.pipes_and_filters.finalize",
             ["--input", q(f"{tag}-f"), *flags], [q(f"{tag}-f")]),
            (f"request_reply/replier.py{label}", f"{P}.request_reply.replier",
             ["--queue", q(f"{tag}-req"), *flags], [q(f"{tag}-req")]),
        ]]  # fmt: skip
    return found


def rows(endpoints: Endpoints) -> tuple[list[report.Row], list[str]]:
    with endpoints.open() as setup:
        return measure(setup)


def measure(setup: Setup) -> tuple[list[report.Row], list[str]]:
    listed = scripts(setup)
    if setup.azurite is None:
        return [
            report.Row(f"idle: {what}", None, "req/s", note="not measured (no server log)")
            for what, *_ in listed
        ], ["Idle rates need Azurite's access log: not measured against an account."]
    procs: list[Proc] = []
    try:
        procs = [setup.start(script.module, *script.args) for script in listed]
        for proc, script in zip(procs, listed, strict=True):
            proc.wait_for(READY, timeout=60)
            if script.module.endswith(".requestor"):  # its reply queue: reply-<uuid>
                script.queues.append(proc.wait_for(r"on '(reply-[^']+)'")[0].group(1))
        time.sleep(WARM_UP)
        before = setup.requests()
        time.sleep(WINDOW)
        after = setup.requests()
    finally:
        stop_all(procs)
    found = []
    for what, module, _, queues in listed:
        for queue in queues:
            rate, watch = (
                sum(after[queue, kind] - before[queue, kind] for kind in kinds) / WINDOW
                for kinds in (("receive", "message"), ("queue",))
            )
            # The target is for the defaults: a lower --idle-max buys latency with requests,
            # and a requestor waiting for its replies is not idle.
            target = None if "requestor" in module or "idle-max" in what else report.IDLE
            label = f"idle: {what}"
            if len(queues) > 1:
                label += f", queue {queue.removeprefix(setup.prefix + '-')}"
            note = ""
            if watch:  # the autoscaler's length checks are on the queue, not its messages
                note = f"+ {watch:.2f} req/s of the autoscaler's length checks"
            found.append(report.Row(label, rate, "req/s", None, target, note))
        echo(f"bench: idle {what}: {found[-1].cells()[1]}")
    return found, [
        f"Idle: every consuming script started at once on queues of its own, {WARM_UP:g} s to "
        f"reach its slowest poll, then the requests Azurite served in {WINDOW:g} s, per queue "
        "(receives, plus anything else on the queue's messages). The requestor is not idle: "
        "it polls its reply queue every 0.1 s while a reply it asked for is due (no target).",
    ]
