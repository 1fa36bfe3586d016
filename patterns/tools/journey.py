"""Journey: draws where each message went and where its time went, from the traced spans.

    OTEL_TRACES_EXPORTER=jsonl python -m patterns.pipes_and_filters.validate   # (and the others)
    python -m patterns.tools.journey                          # every journey in traces.jsonl
    python -m patterns.tools.journey --id ORD-1a2b3c4d-001    # one order's journey
    python -m patterns.tools.journey --slowest 3 --mermaid    # as sequence diagrams for GitHub

Reads the spans the scripts wrote with tracing on (patterns/helper/support/tracing.py). One
journey per trace; one row per hop: the producer's send, then each consumer's receive -> work
-> settle, with the time the message waited in the queue before it and the time it was worked on
('#'), on one time axis. Of the wait, '.' is the part when its consumer was asleep between
polls of an empty queue (the cost of polling after idle) and '-' the part it waited behind
other messages while the consumer was busy (the cost of too few consumers). Poison, retries and
releases are named at the end of their row.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patterns.helper import Fatal, cli
from patterns.helper.support import tracing
from patterns.helper.support.lines import printable

WIDTH = 40  # characters of the time axis


@dataclass
class Hop:
    """One row: who, on which queue, waited from `queued` to `start`, worked until `end` (ns)."""

    role: str
    action: str  # "send" or "process"
    queue: str
    queued: int
    start: int
    end: int
    outcome: str = ""
    poll_ms: float | None = None  # of the wait: the consumer asleep between polls
    notes: list[str] = field(default_factory=list)
    sends: list[tuple[int, str]] = field(default_factory=list)  # (time, queue) sent while working

    @property
    def wait_ms(self) -> float:
        return (self.start - self.queued) / 1e6

    @property
    def work_ms(self) -> float:
        return (self.end - self.start) / 1e6


@dataclass
class Journey:
    trace_id: str
    app_id: str
    hops: list[Hop]

    @property
    def begin(self) -> int:
        return min(hop.queued for hop in self.hops)

    @property
    def total_ms(self) -> float:
        return (max(hop.end for hop in self.hops) - self.begin) / 1e6


def read_spans(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The spans in a traces file, and how many lines were skipped: a line cut short (kill -9
    in the middle of a write), or anything else that is not a span as tracing.py writes it."""
    spans, skipped = [], 0
    with path.open("rb") as lines:  # bytes: a line that is not UTF-8 is skipped, not fatal
        for line in lines:
            if not line.strip():
                continue
            span = span_of(line)
            if span is None:
                skipped += 1
            else:
                spans.append(span)
    return spans, skipped


def span_of(line: bytes) -> dict[str, Any] | None:
    """The span on one line of a traces file; None if the line is not one (the dashboard reads
    the file as it grows, a line at a time)."""
    try:
        span = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep or too big
        return None
    return span if is_span(span) else None


NS_MAX = 2**63  # nanoseconds since 1970 fit in 63 bits until the year 2262
MS_MAX = 1e12  # no wait lasts 30 years


def is_span(span: Any) -> bool:
    """A span with every field the drawing reads, each of the type it needs."""
    if not isinstance(span, dict):
        return False
    attributes, events = span.get("attributes", {}), span.get("events", [])
    if not (isinstance(attributes, dict) and isinstance(events, list)):
        return False
    start, end = span.get("start_ns"), span.get("end_ns")
    return (
        all(isinstance(span.get(key), str) for key in ("trace_id", "span_id"))
        and all(isinstance(span.get(key), str | None) for key in ("parent_id", "kind", "service"))
        and type(start) is int and type(end) is int and 0 <= start <= end < NS_MAX
        and all(
            isinstance(attributes.get(key, ""), str)
            for key in ("app.id", "messaging.destination.name", "outcome")
        )
        and all(_is_ms(attributes.get(key, 0)) for key in ("queue.wait_ms", "queue.poll_wait_ms"))
        and all(
            isinstance(event, dict)
            and isinstance(event.get("name"), str)
            and isinstance(event.get("attributes", {}), dict)
            and isinstance(event.get("attributes", {}).get("reason", ""), str)
            for event in events
        )
    )  # fmt: skip


def _is_ms(value: Any) -> bool:
    return type(value) in (int, float) and 0 <= value <= MS_MAX  # NaN compares false


def journeys(spans: list[dict[str, Any]]) -> list[Journey]:
    """The spans grouped by trace, as rows of hops, in the order the journeys began."""
    by_trace: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for span in spans:
        by_trace[span["trace_id"]].append(span)
    found = []
    for trace_id, members in by_trace.items():
        by_id = {span["span_id"]: span for span in members}
        hops = []
        app_id = ""
        for span in sorted(members, key=lambda s: s["start_ns"]):
            attributes = span.get("attributes", {})
            app_id = app_id or printable(attributes.get("app.id", ""))
            queue = printable(attributes.get("messaging.destination.name", "?"))
            parent = by_id.get(span.get("parent_id") or "")
            if span.get("kind") == "producer" and parent and parent.get("kind") == "consumer":
                continue  # a forward or reply: drawn as part of its consumer's work
            hop = Hop(
                role=printable(span.get("service") or "?"),
                action="process" if span.get("kind") == "consumer" else "send",
                queue=queue,
                queued=span["start_ns"],
                start=span["start_ns"],
                end=span["end_ns"],
                outcome=printable(attributes.get("outcome", "")),
            )
            if "queue.wait_ms" in attributes:
                hop.queued = span["start_ns"] - round(attributes["queue.wait_ms"] * 1e6)
                hop.poll_ms = attributes.get("queue.poll_wait_ms")
            for event in span.get("events", []):
                reason = event.get("attributes", {}).get("reason")
                note = f"{event['name']}: {reason}" if reason else event["name"]
                hop.notes.append(printable(note))
            for child in members:
                if child.get("parent_id") == span["span_id"] and child.get("kind") == "producer":
                    child_queue = child.get("attributes", {}).get("messaging.destination.name")
                    hop.sends.append((child["start_ns"], printable(child_queue or "?")))
            hops.append(hop)
        if hops:
            hops.sort(key=lambda hop: hop.start)
            found.append(Journey(printable(trace_id), app_id, hops))
    return sorted(found, key=lambda journey: journey.begin)


LEGEND = "in the queue: '.' its consumer asleep between polls, '-' behind others;  '#' work"


def timeline(journey: Journey, width: int = WIDTH) -> str:
    """Rows aligned like a Gantt chart: the wait in the queue, then the work."""
    begin, total = journey.begin, max(journey.total_ms, 0.001)

    def column(ns: int) -> int:
        return min(width - 1, int((ns - begin) / 1e6 / total * width))

    q = max(14, *(len(hop.queue) for hop in journey.hops)) + 2  # the queue column's width
    lines = [
        f"{journey.app_id or '(no id)'}  trace {journey.trace_id}  {journey.total_ms:.1f} ms",
        f"  {'hop':<9} {'queue':<{q}} {'wait ms':>8} {'(poll)':>8} {'work ms':>8}  |{'':<{width}}|",
    ]
    for hop in journey.hops:
        bar = [" "] * width
        woke = hop.queued + round((hop.poll_ms or 0) * 1e6)  # the poll part comes first
        for c in range(column(hop.queued), column(hop.start)):
            bar[c] = "-"
        for c in range(column(hop.queued), column(woke)):
            bar[c] = "."
        for c in range(column(hop.start), column(hop.end) + 1):
            bar[c] = "#"
        wait = f"{hop.wait_ms:8.1f}" if hop.action == "process" else f"{'':>8}"
        wait += f" {hop.poll_ms:8.1f}" if hop.poll_ms is not None else f" {'':>8}"
        what = hop.role if hop.action == "process" else f"{hop.role}"
        line = f"  {what:<9} {hop.queue:<{q}} {wait} {hop.work_ms:8.1f}  |{''.join(bar)}|"
        extra = [hop.outcome] if hop.outcome and hop.outcome != "done" else []
        lines.append(" ".join([line, *[n for n in hop.notes if n not in extra], *extra]).rstrip())
    return "\n".join(lines)


def mermaid(journey: Journey) -> str:
    """A Mermaid sequence diagram of the journey (paste it in a ```mermaid block on GitHub)."""
    names: dict[str, str] = {}

    def alias(name: str) -> str:
        return names.setdefault(name, f"P{len(names)}")

    def plain(text: str) -> str:  # without the characters Mermaid reads as syntax (line
        # breaks are escaped already: no text from the file can add a line to the diagram)
        return printable(text).replace(";", ",").replace("#", "")

    begin, app_id = journey.begin, plain(journey.app_id)
    events: list[tuple[int, int, str]] = []  # (time, order, line)
    for hop in journey.hops:
        role, queue = alias(hop.role), alias(hop.queue)
        at = f"+{(hop.start - begin) / 1e6:.1f} ms"
        why = f", {hop.poll_ms:.1f} ms of it for a poll" if hop.poll_ms is not None else ""
        if hop.action == "send":
            events.append((hop.start, 0, f"    {role}->>{queue}: send {app_id} ({at})"))
            continue
        events.append(
            (hop.start, 1, f"    {queue}->>{role}: {at}, waited {hop.wait_ms:.1f} ms{why}")
        )
        for sent, target in hop.sends:
            events.append((sent, 2, f"    {role}->>{alias(target)}: send"))
        outcome = hop.outcome or "done"
        note = f"work {hop.work_ms:.1f} ms, {outcome}"
        reasons = [n for n in hop.notes if n != outcome]
        if reasons:
            note += " - " + "; ".join(reasons)
        note = plain(note)
        events.append((hop.end, 3, f"    Note over {role}: {note}"))
    lines = ["sequenceDiagram", f"    title {app_id or plain(journey.trace_id)}: "
             f"{journey.total_ms:.1f} ms"]  # fmt: skip
    lines += [f"    participant {a} as {plain(name)}" for name, a in names.items()]
    lines += [line for _, _, line in sorted(events)]
    return "\n".join(lines)


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--file",
        type=Path,
        default=tracing.traces_file(),
        help=f"the traces file (default ${tracing.FILE_VAR} or {tracing.DEFAULT_FILE})",
    )
    parser.add_argument("--id", help="only the journey of this application id (e.g. an order id)")
    parser.add_argument(
        "--slowest",
        type=cli.whole_number(least=1),
        metavar="N",
        help="only the N journeys that took longest",
    )
    parser.add_argument(
        "--mermaid", action="store_true", help="print Mermaid sequence diagrams instead"
    )
    args = parser.parse_args()
    if not args.file.is_file():
        raise Fatal(
            f"no traces file at {args.file}: "
            f"run the scripts with {tracing.EXPORTER_VAR}=jsonl first"
        )
    try:
        spans, skipped = read_spans(args.file)
    except OSError as error:  # e.g. not readable
        raise Fatal(f"cannot read {args.file}: {error.strerror}") from None
    not_spans = f"{skipped} line(s) skipped: not spans as the scripts write them" if skipped else ""
    found = journeys(spans)
    if args.id is not None:
        found = [j for j in found if j.app_id == args.id]
        if not found:
            also = f" ({not_spans})" if not_spans else ""
            raise Fatal(f"no journey of {args.id!r} in {args.file}{also}", exit_code=1)
    if args.slowest:
        found = sorted(found, key=lambda j: j.total_ms, reverse=True)[: args.slowest]
    if args.mermaid:
        print("\n\n".join(mermaid(journey) for journey in found))
    else:
        print("\n\n".join([LEGEND, *(timeline(journey) for journey in found)]))
    if not_spans:  # on stderr: a Mermaid diagram on stdout stays a diagram
        print(f"{args.file}: {not_spans}", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
