"""OpenTelemetry tracing of a message's journey across the queues (optional, off by default).

Switched on by one environment variable, OpenTelemetry's own:

    OTEL_TRACES_EXPORTER=jsonl   spans go to the file traces.jsonl (OTEL_TRACES_FILE says where);
                                 `python -m patterns.tools.journey` draws them
    OTEL_TRACES_EXPORTER=otlp    spans go to the OTLP/HTTP collector at
                                 OTEL_EXPORTER_OTLP_ENDPOINT (default http://localhost:4318)
    OTEL_TRACES_EXPORTER=console spans are printed to stderr

Setting only OTEL_EXPORTER_OTLP_ENDPOINT means otlp. Unset (or `none`), nothing is traced and
opentelemetry is never imported: tracing costs nothing unless asked for. It needs the extra:
pip install -e '.[trace]'. OTEL_SERVICE_NAME names the process (default: the script's name).

Switched on wrongly, it must not break the pattern: `start()` (called once, before the first
request) refuses settings that cannot work in one line (an unknown exporter, OpenTelemetry
not installed, a traces file that cannot be opened) and says where spans go; a span that
cannot be written or sent later (disk full, file removed, no collector) is warned about once
and dropped: the work goes on.

Queue Storage messages have no headers, so the W3C trace context travels in the JSON body:
`"traceparent"` (and `"queued_at"`, the send time, so each hop's wait in the queue is known).
One trace per journey: the producer's send starts it, each consumer's receive -> work ->
settle is a span in it, and what a consumer sends while working (a filter's forward, a reply)
continues it. A message without a traceparent starts a new trace; it is never refused.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from patterns.helper.support import encoding, settings
from patterns.helper.support.lines import id_in

EXPORTER_VAR = "OTEL_TRACES_EXPORTER"
FILE_VAR = "OTEL_TRACES_FILE"  # ours: where the jsonl exporter writes
DEFAULT_FILE = "traces.jsonl"
EXPORTERS = ("jsonl", "otlp", "console")
# An OTLP export waits at most this long (the SDK's default, 10 s, retried with backoff, was
# added to every exit when no collector listened); OTEL_EXPORTER_OTLP_TIMEOUT overrides it.
OTLP_TIMEOUT = 1.0
OTLP_PAUSE = 5.0  # after a failed export, batches are dropped unsent for this long


def exporter_name(environ: Mapping[str, str] = os.environ) -> str | None:
    """Which exporter the environment asks for; None: tracing is off."""
    name = environ.get(EXPORTER_VAR, "").strip().lower()
    if not name and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        name = "otlp"
    return name if name and name != "none" else None


def traces_file(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get(FILE_VAR, "").strip() or DEFAULT_FILE)


def otlp_endpoint(environ: Mapping[str, str] = os.environ) -> str:
    """Where the otlp exporter posts spans (OpenTelemetry's own variables and default)."""
    if url := environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip():
        return url
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.rstrip("/") + "/v1/traces"


ENABLED = exporter_name() is not None
_tracer: Any = None  # made at start (or on first use), so that an unused switch imports nothing
_lock = threading.Lock()  # the producer's send threads all ask for it at once
_log = logging.getLogger("patterns")
_warned = False  # a span that cannot be written or sent is warned about once per process


def start() -> None:
    """Check the tracing settings before the script sends a request: what cannot work is a
    Fatal, said in one line (exit 2). When tracing is on, say where spans go."""
    if not ENABLED:
        return
    with _lock:
        if _tracer is not None:
            return  # already started: said once
        destination = _make_tracer()
    _log.info(f"tracing: spans go to {destination} ({EXPORTER_VAR}={exporter_name()})")


def _dropped(why: str) -> None:
    """One warning for the first span that could not be written or sent; the rest are
    dropped silently: tracing never stops the work."""
    global _warned
    if not _warned:
        _warned = True
        _log.warning(f"tracing: {why}; spans are dropped, the work goes on")


def _service_name() -> str:
    """OTEL_SERVICE_NAME, else the script's own name: validate, enrich, replier, ..."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec else Path(sys.argv[0] or "python").stem
    return os.environ.get("OTEL_SERVICE_NAME", "").strip() or name.rsplit(".", 1)[-1]


def _get_tracer() -> Any:
    if _tracer is None:
        with _lock:
            if _tracer is None:
                _make_tracer()
    return _tracer


def _make_tracer() -> str:
    """Set up the exporter the environment asks for; where its spans go, for the start line."""
    global _tracer
    from patterns.helper import Fatal

    name = exporter_name()
    if name not in EXPORTERS:
        raise Fatal(f"{EXPORTER_VAR}={name!r} is not one of {', '.join(EXPORTERS)}, none")
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        raise Fatal(
            f"{EXPORTER_VAR} is set but OpenTelemetry is not installed: "
            "pip install -e '.[trace]' (or unset the variable)"
        ) from None
    resource = Resource.create({"service.name": _service_name(), "process.pid": os.getpid()})
    provider = TracerProvider(resource=resource)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # Our one warning replaces the SDK's retry lines (a traceback's worth per batch).
        logging.getLogger("opentelemetry.exporter").setLevel(logging.CRITICAL)
        endpoint = otlp_endpoint()
        if problem := settings.endpoint_problem(endpoint):
            var = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
            var = var if os.environ.get(var, "").strip() else "OTEL_EXPORTER_OTLP_ENDPOINT"
            raise Fatal(f"tracing: the OTLP collector's address in {var} {problem}")
        timeout = None if _otlp_timeout_set() else OTLP_TIMEOUT
        shown = settings.printable_url(endpoint)  # no user or password, should it have one
        exporter = _Otlp(OTLPSpanExporter(endpoint=endpoint, timeout=timeout), shown)
        provider.add_span_processor(BatchSpanProcessor(exporter))
        destination = f"the OTLP collector at {shown}"
    elif name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        destination = "stderr"
    else:  # one line per span, written when the span ends: nothing lost to kill -9
        path = traces_file()
        try:
            exporter = _JsonLines(path)
        except OSError as error:  # a missing folder, a directory, no permission
            raise Fatal(
                f"tracing: cannot open the traces file {str(path)!r} for appending "
                f"({error.strerror}); set {FILE_VAR} to a file in a folder that exists, or "
                f"unset {EXPORTER_VAR}"
            ) from None
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        destination = repr(str(path))
    trace.set_tracer_provider(provider)  # flushed at exit by the SDK's own atexit hook
    _tracer = trace.get_tracer("azure-queue-patterns")
    return destination


def _otlp_timeout_set() -> bool:
    names = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
    return any(os.environ.get(name, "").strip() for name in names)


class _JsonLines:
    """A SpanExporter writing one JSON object per span, appended by every process alike."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = self._open()
        self.lock = threading.Lock()  # a consumer's workers end spans at once: one fd swap

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        try:
            with self.lock:
                if os.fstat(self.fd).st_nlink == 0:  # removed while we ran (to start afresh?)
                    self.fd, removed = self._open(), self.fd
                    os.close(removed)
                for span in spans:
                    line = json.dumps(span_record(span), ensure_ascii=False) + "\n"
                    # One write per line: lines never interleave. Half a surrogate pair (an id
                    # sent as "\ud800") is written as its JSON escape, not refused.
                    os.write(self.fd, line.encode(errors="backslashreplace"))
        except Exception as error:  # disk full, the folder removed, ...
            reason = getattr(error, "strerror", None) or type(error).__name__
            _dropped(f"cannot write spans to {str(self.path)!r} ({reason})")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        os.close(self.fd)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class _Otlp:
    """The SDK's OTLP exporter, with one warning instead of its retry lines, and a pause
    after a failure: while no collector answers, batches are dropped at once instead of
    each waiting out the timeout (at exit, too)."""

    def __init__(self, exporter: Any, endpoint: str) -> None:
        self.exporter, self.endpoint = exporter, endpoint
        self.paused_until = 0.0

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        if time.monotonic() < self.paused_until:
            return SpanExportResult.FAILURE
        try:
            result = self.exporter.export(spans)
        except Exception:  # whatever the SDK meets: one warning below, not its traceback
            result = SpanExportResult.FAILURE
        if result != SpanExportResult.SUCCESS:
            self.paused_until = time.monotonic() + OTLP_PAUSE
            _dropped(f"no OTLP collector took the spans at {self.endpoint} (is one running?)")
        return result

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def span_record(span: Any) -> dict[str, Any]:
    """What the journey renderer reads of a finished span."""
    context, parent = span.get_span_context(), span.parent
    return {
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "name": span.name,
        "kind": span.kind.name.lower(),
        "service": span.resource.attributes.get("service.name"),
        "pid": span.resource.attributes.get("process.pid"),
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": e.name, "time_ns": e.timestamp, "attributes": dict(e.attributes or {})}
            for e in span.events
        ],
    }


# --- the hooks the helper calls; each one does nothing when tracing is off ------------------


def sending(queue: str, body: Mapping[str, Any]) -> Any:
    """`with sending(queue, body) as body:` a send span (a child of the span in progress, if
    any: that is how a forward or a reply stays in its journey's trace) and the body to send,
    carrying the span's traceparent and the time it was queued."""
    return _sending(queue, body) if ENABLED else nullcontext(body)


@contextmanager
def _sending(queue: str, body: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    tracer = _get_tracer()  # first: says what is missing if the extra is not installed
    from opentelemetry import propagate, trace

    attributes = {"messaging.system": "azure_queue_storage", "messaging.destination.name": queue}
    if found := id_in(body):
        attributes["app.id"] = found[1]
    kind = trace.SpanKind.PRODUCER
    with tracer.start_as_current_span(f"send {queue}", kind=kind, attributes=attributes):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        queued_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        yield {**body, "traceparent": carrier.get("traceparent"), "queued_at": queued_at}


_last_empty: dict[str, int] = {}  # queue -> when its consumer last found it empty (ns)
_slept: dict[str, tuple[int, int]] = {}  # queue -> the consumer's last sleep: (from, to) in ns


def received(messages: list[Any], queue: str) -> None:
    """Note when each message was received (its span starts there, its queue wait ends) and
    when this consumer last slept between polls of an empty queue: the part of a message's
    wait that fell in that sleep was waiting for a poll, the rest waiting in line."""
    if not ENABLED:
        return
    now = time.time_ns()
    if not messages:
        _last_empty.setdefault(queue, now)  # the sleep starts at the first empty receive
        return
    if queue in _last_empty:  # woke up: this receive ended a sleep
        _slept[queue] = (_last_empty.pop(queue), now)
    for message in messages:
        message.received_ns = now
        message.slept = _slept.get(queue)


def begin(message: Any, queue: str) -> Any:
    """Start the span of one message's receive -> work -> settle, in its journey's trace."""
    if not ENABLED:
        return None
    tracer = _get_tracer()
    from opentelemetry import propagate, trace

    # Never fail a message over its trace context: without one it starts a new trace.
    parsed = encoding.json_of(message.content or "")
    body: dict[str, Any] = parsed if isinstance(parsed, dict) else {}
    carrier = (
        {"traceparent": body["traceparent"]} if isinstance(body.get("traceparent"), str) else {}
    )
    start = getattr(message, "received_ns", None) or time.time_ns()
    attributes: dict[str, Any] = {
        "messaging.system": "azure_queue_storage",
        "messaging.destination.name": queue,
        "messaging.message.id": message.id,
        "messaging.azure.dequeue_count": message.dequeue_count,
    }
    if found := id_in(body):
        attributes["app.id"] = found[1]
    try:
        queued = datetime.fromisoformat(str(body.get("queued_at")))
        attributes["queue.wait_ms"] = round(max(0.0, start / 1e6 - queued.timestamp() * 1e3), 3)
        queued_ns = start - attributes["queue.wait_ms"] * 1e6
        slept = getattr(message, "slept", None)  # (from, to): this consumer's last sleep
        polling = max(0.0, min(slept[1], start) - max(queued_ns, slept[0])) if slept else 0.0
        attributes["queue.poll_wait_ms"] = round(polling / 1e6, 3)
    except (ValueError, TypeError, OverflowError):
        pass  # not sent with tracing on: the wait is unknown
    return tracer.start_span(
        f"process {queue}",
        context=propagate.extract(carrier),
        kind=trace.SpanKind.CONSUMER,
        attributes=attributes,
        start_time=start,
    )


def active(span: Any) -> Any:
    """`with active(span):` the work, so that what it sends belongs to the same trace."""
    if span is None:
        return nullcontext()
    from opentelemetry import trace

    return trace.use_span(span, end_on_exit=False, record_exception=False)


def end(span: Any, outcome: str, reason: str | None = None) -> None:
    """End a message's span: outcome done / poisoned / retry / released / outage; for anything
    but done, an event of that name with the reason."""
    if span is None:
        return
    span.set_attribute("outcome", outcome)
    if outcome != "done":
        span.add_event(outcome, {"reason": reason} if reason else {})
    if outcome in ("poisoned", "retry"):
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, reason))
    span.end()


def event(name: str, **attributes: Any) -> None:
    """An event on the span in progress (e.g. validate's "rejected"); nothing when off."""
    if ENABLED:
        from opentelemetry import trace

        trace.get_current_span().add_event(name, attributes)
