"""Dashboard: every lesson's queues, poison records, blobs and journeys, live in the browser.

    python -m patterns.tools.dashboard            # or: make dashboard; open the URL it prints
    python -m patterns.tools.dashboard --prefix alice-   # only queues whose names start so

One thread here polls the storage service about once a second, with the requests
`status --watch` makes: list the queues, then each queue's count and a peek (and the
claim-check blobs). It keeps the latest snapshot and the last few minutes of counts in
memory; every open tab fetches them from this server, so a second tab costs the storage
service nothing more. It only lists, counts and peeks: it never receives, deletes or changes
anything. With a traces file (OTEL_TRACES_EXPORTER=jsonl), it also draws the latest
journeys, as `python -m patterns.tools.journey` reads them.

The page is served on 127.0.0.1 only and shows what messages say as text, never as HTML: a
message is input from anyone who can write to the queue. Ctrl+C stops it.
"""

from __future__ import annotations

import errno
import json
import logging
import re
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from azure.storage.queue import QueueMessage, QueueServiceClient

from patterns.helper import Fatal, cli, codec, connect
from patterns.helper.support import encoding, outage, tracing
from patterns.helper.support.blobs import service as blob_service
from patterns.helper.support.lines import printable
from patterns.tools import blobs, journey, status
from patterns.tools.queues import is_poison

PORT = 8642  # not Azurite's (10000-10002), Functions' (7071) nor a usual dev server's
INTERVAL = 1.0  # seconds from one poll of the storage service to the next
WINDOW = 180  # seconds of history the graphs show
POISON_SHOWN = 10  # the newest poison records on the page
JOURNEYS_SHOWN = 20  # the latest journeys on the page
TRACES_KEPT = 200  # traces held in memory (the file may hold millions)
TRACES_TAIL = 4 * 1024 * 1024  # bytes read of a big traces file's end, at start
TEXT_MAX = 300  # characters of a reason, a body, a note on the page
STATIC = ("index.html", "app.js", "style.css", "favicon.svg")
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# The page's scripts, styles and data come from this server and nowhere else; no inline
# script or style runs (a message's text could never become one), nothing frames the page.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
TAB_ID = re.compile(r"^[a-z0-9]{1,16}$")


def shown(text: Any, limit: int = TEXT_MAX) -> str:
    """Text from a message or a record, fit for the page: control characters escaped (as the
    terminal tools show them), cut to `limit` characters. The page adds it as text, not HTML."""
    text = printable(str(text))
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- what the poller reads ------------------------------------------------------------------


def poison_record(queue: str, message: QueueMessage) -> dict[str, Any]:
    """A poison record as the page shows it: its reason, the id of the message it holds and a
    piece of its body. A message that is not a record (sent there by hand) is shown too."""
    text, _ = encoding.readable(message.content or "")
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        record = None
    inserted = message.inserted_on.isoformat() if message.inserted_on else ""
    if not (isinstance(record, dict) and "reason" in record):
        return {"queue": queue, "reason": "(not a poison record: no reason given)", "id": "",
                "at": inserted, "attempts": None, "body": shown(text)}  # fmt: skip
    body = record.get("body", "")
    if isinstance(record.get("body_blob"), dict):
        body = f"(kept in blob {record['body_blob'].get('container')}/"
        body += f"{record['body_blob'].get('blob')})"
    inner, _ = encoding.readable(body if isinstance(body, str) else json.dumps(body))
    try:
        parsed = json.loads(inner)
    except (ValueError, RecursionError):
        parsed = None
    app_id = ""
    if isinstance(parsed, dict):
        app_id = next((parsed[k] for k in codec.ID_KEYS if isinstance(parsed.get(k), str)), "")
    at = record.get("poisoned_at")
    return {
        "queue": queue,
        "reason": shown(record.get("reason")),
        "id": shown(app_id, 80),
        "at": at if isinstance(at, str) and len(at) < 40 else inserted,
        "attempts": count if type(count := record.get("dequeue_count")) is int else None,
        "body": shown(inner),
    }


def blob_section(svc: QueueServiceClient, prefix: str, orphan_age: float) -> dict[str, Any]:
    """The claim-check blobs (status's "blobs in ..." lines): per container, how many, their
    bytes, the orphans among them; or why they cannot be seen."""
    try:
        found = blobs.tutorial_blobs(blob_service(), svc, prefix, orphan_age)
    except Fatal as error:  # e.g. a connection string without a BlobEndpoint
        return {"error": shown(error), "containers": []}
    except connect.FAILED as error:
        return {"error": f"the blob service: {outage.in_short(error)}", "containers": []}
    containers = []
    for container in blobs.CONTAINERS:
        mine = [blob for blob in found if blob.container == container]
        if mine:
            containers.append(
                {
                    "name": container,
                    "count": len(mine),
                    "bytes": sum(blob.size for blob in mine),
                    "unknown": sum(blob.state == "unknown" for blob in mine),
                    "orphans": [
                        {"name": shown(b.name), "bytes": b.size, "age": round(b.age)}
                        for b in mine
                        if b.state == "orphan"
                    ],
                }
            )
    return {"error": None, "containers": containers}


def tables_section(prefix: str) -> list[dict[str, Any]]:
    """The Table lessons' tables that exist (balances per account, the next event per order),
    as `status` reads them: each {"name", "lesson", "columns", "rows", "more"}. A table
    service that cannot be read is one row saying so; the queues' part goes on."""
    try:
        found = status.table_rows(prefix)
    except connect.FAILED as error:
        why = f"the table service cannot be read ({outage.in_short(error)})"
        return [{"name": "-", "lesson": "tables", "columns": ["error"], "rows": [[why]],
                 "more": 0}]  # fmt: skip
    return [
        {
            "name": shown(row.table, 100),
            "lesson": row.lesson,
            "columns": ["rows", "what they say"],
            "rows": [
                [
                    f"{row.rows}{'+' if row.rows >= status.MAX_TABLE_ROWS else ''}",
                    shown(row.summary, 1000),
                ]
            ],
            "more": 0,
        }
        for row in found
    ]


class Traces:
    """The latest journeys in a traces file that the scripts append to while we watch: read a
    line at a time from where the last read ended, so a file of any size costs one read of
    its new lines; the last TRACES_KEPT traces are kept."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.inode = 0
        self.spans: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self.skipped = 0
        self.cut = False  # the next read starts in the middle of a line: skip to its end
        # queue -> second -> [sent to it, taken off it (done or poisoned)]: what counts alone
        # cannot tell (a count shows only their difference), for the last WINDOW seconds
        self.moves: dict[str, dict[int, list[int]]] = {}

    def read(self) -> bool:
        """Read what was added since the last call; True if anything changed."""
        try:
            info = self.path.stat()
        except OSError:
            changed = bool(self.spans)
            self.inode, self.offset, self.spans, self.moves = 0, 0, OrderedDict(), {}
            return changed
        if info.st_ino != self.inode or info.st_size < self.offset:  # a new file
            self.inode, self.offset, self.spans, self.skipped = info.st_ino, 0, OrderedDict(), 0
            self.moves = {}
            self.cut = info.st_size > TRACES_TAIL
            if self.cut:
                self.offset = info.st_size - TRACES_TAIL  # only its end: the latest journeys
        if info.st_size == self.offset:
            return False
        try:
            with self.path.open("rb") as file:
                file.seek(self.offset)
                data = file.read(min(info.st_size - self.offset, TRACES_TAIL))
        except OSError:
            return False
        complete = data[: data.rfind(b"\n") + 1]  # a line being written waits for the next read
        if not complete and len(data) >= TRACES_TAIL:  # a line longer than we ever read
            self.offset, self.cut, self.skipped = self.offset + len(data), True, self.skipped + 1
            return False
        self.offset += len(complete)
        if self.cut:
            complete, self.cut = complete[complete.find(b"\n") + 1 :], False
        for line in complete.splitlines():
            span = journey.span_of(line) if line.strip() else None
            if span is None:
                self.skipped += bool(line.strip())
                continue
            self.spans.setdefault(span["trace_id"], []).append(span)
            self._count(span)
            self.spans.move_to_end(span["trace_id"])
            while len(self.spans) > TRACES_KEPT:
                self.spans.popitem(last=False)
        return bool(complete)

    def _count(self, span: dict[str, Any]) -> None:
        attributes = span.get("attributes", {})
        queue = attributes.get("messaging.destination.name")
        if not queue:
            return
        if span.get("kind") == "producer":
            which, second = 0, span["start_ns"] // 10**9
        elif span.get("kind") == "consumer" and attributes.get("outcome") in ("done", "poisoned"):
            which, second = 1, span["end_ns"] // 10**9
        else:
            return  # a retry or a release: the message is still in its queue
        if second >= time.time() - WINDOW:
            self.moves.setdefault(queue, {}).setdefault(second, [0, 0])[which] += 1

    def traffic(self) -> dict[str, list[list[int]]]:
        """Per queue, [second (ms), messages sent to it, taken off it] of the last WINDOW s."""
        oldest = time.time() - WINDOW
        for queue, seconds in list(self.moves.items()):
            for second in [s for s in seconds if s < oldest]:
                del seconds[second]
            if not seconds:
                del self.moves[queue]
        return {
            shown(queue, 80): [[second * 1000, *moved] for second, moved in sorted(seconds.items())]
            for queue, seconds in self.moves.items()
        }

    def journeys(self) -> list[dict[str, Any]]:
        """The latest journeys, newest first, each hop in milliseconds from the journey's start."""
        found = journey.journeys([span for spans in self.spans.values() for span in spans])
        latest = found[-JOURNEYS_SHOWN:][::-1]
        consumed = {hop.queue for j in found for hop in j.hops if hop.action == "process"}
        return [
            {
                "trace": shown(j.trace_id, 40),
                "id": shown(j.app_id, 80),
                "began": datetime.fromtimestamp(j.begin / 1e9, timezone.utc).isoformat(),
                "total_ms": round(j.total_ms, 1),
                "waiting": _waiting_in(j, consumed),
                "hops": [
                    {
                        "role": shown(hop.role, 60),
                        "action": hop.action,
                        "queue": shown(hop.queue, 80),
                        "at_ms": round((hop.queued - j.begin) / 1e6, 1),
                        "wait_ms": round(hop.wait_ms, 1) if hop.action == "process" else 0,
                        "poll_ms": round(min(hop.poll_ms, hop.wait_ms), 1) if hop.poll_ms else 0,
                        "work_ms": round(hop.work_ms, 1),
                        "outcome": shown(hop.outcome, 40),
                        "notes": [shown(note) for note in hop.notes[:5]],
                    }
                    for hop in j.hops[:20]
                ],
            }
            for j in latest
        ]


def _waiting_in(j: journey.Journey, consumed: set[str]) -> str:
    """The queue a journey's message waits in now ('' if none): sent there, not taken since.
    Only queues that a traced consumer takes from (`consumed`) count: a reply is taken by its
    requestor, untraced, and nobody takes from queue-rejected."""
    sent = [(hop.start, hop.queue) for hop in j.hops if hop.action == "send"]
    sent += [moved for hop in j.hops for moved in hop.sends]  # forwards and replies
    for at, queue in sent:
        taken = any(h.action == "process" and h.queue == queue and h.start >= at for h in j.hops)
        if queue in consumed and not taken:
            return queue
    return ""


# --- the poller -----------------------------------------------------------------------------


class Poller:
    """The one thread that asks the storage service, about once a second, whatever the number
    of open tabs. The page reads `snapshot` and `history`; both are replaced, never changed
    in place, so a reader needs no lock beyond picking them up."""

    def __init__(
        self, svc: QueueServiceClient, prefix: str, orphan_age: float, traces: Path,
        log: logging.Logger, interval: float = INTERVAL,
    ) -> None:  # fmt: skip
        self.svc, self.prefix, self.orphan_age, self.log = svc, prefix, orphan_age, log
        self.interval = interval
        self.traces = Traces(traces)
        self.outage = outage.Outage("queue")  # one warning when it goes, one when it is back
        self.lock = threading.Lock()
        self.history: dict[str, deque[tuple[int, int | None, int | None, int | None]]] = {}
        self.polls = 0
        self.journeys: list[dict[str, Any]] = []
        self.snapshot: dict[str, Any] = {
            "polls": 0, "service": {"ok": None, "error": None}, "groups": [], "poison": [],
            "blobs": {"error": None, "containers": []}, "tables": [], "updated": None,
            "traces": {"file": shown(traces, 200), "present": traces.is_file(), "skipped": 0,
                       "journeys": [], "traffic": {}},
        }  # fmt: skip

    def run(self) -> None:
        while True:
            try:
                self.poll()
            except Exception as error:  # a bug of ours must not freeze the page on "live"
                self.log.warning(f"the dashboard failed to read a poll: {_why(error)}")
                with self.lock:
                    self.snapshot = {
                        **self.snapshot,
                        "service": {
                            "ok": False,
                            "error": f"the dashboard failed: {shown(_why(error))}",
                        },
                    }
            time.sleep(self.interval)  # after the poll, as `status --watch` waits: its pace

    def poll(self) -> None:
        now = int(time.time() * 1000)
        snapshot = dict(self.snapshot)
        try:
            found = status.survey(self.svc, self.prefix)
            blob_part = blob_section(self.svc, self.prefix, self.orphan_age)
        except Exception as error:  # the page says what is wrong; the thread goes on
            why = shown(_why(error), 500)
            if not self.outage.warn_if_away(error) and why != self.snapshot["service"].get("error"):
                self.log.warning(f"{why}; trying again")  # once, until it changes
            snapshot["service"] = {"ok": False, "error": why, "at": now}
        else:
            self.outage.over()
            table = status.rows({n: (t, _count(p)) for n, (t, p) in found.items()}, self.prefix)
            snapshot.update(
                service={"ok": True, "error": None, "at": now},
                updated=now,
                groups=_groups(table),
                poison=_poison(found),
                blobs=blob_part,
                tables=tables_section(self.prefix),
            )
            self._remember(now, table)
        if self.traces.read():
            self.journeys = self.traces.journeys()
        snapshot["traces"] = {
            "file": shown(self.traces.path, 200),
            "present": self.traces.path.is_file(),
            "skipped": self.traces.skipped,
            "journeys": self.journeys,
            "traffic": self.traces.traffic(),
        }
        with self.lock:
            self.polls += 1
            snapshot["polls"] = self.polls
            self.snapshot = snapshot

    def _remember(self, now: int, table: list[status.Row]) -> None:
        """The counts of this poll, added to each queue's history; a queue gone (a reply queue
        deleted, cleanup) is forgotten, so memory stays bounded however many come and go."""
        history = {}
        for row in table:
            samples = self.history.get(row.queue) or deque(maxlen=int(WINDOW / self.interval) + 5)
            samples.append((now, row.messages, row.visible, row.poison))
            history[row.queue] = samples
        with self.lock:
            self.history = history

    def state(self, since: int) -> dict[str, Any]:
        """The latest snapshot and the counts sampled after `since` (ms since 1970)."""
        with self.lock:
            snapshot, history = self.snapshot, self.history
        samples = {
            name: [list(sample) for sample in list(samples) if sample[0] > since]
            for name, samples in history.items()
        }
        return {**snapshot, "history": samples}


def _count(peeked: list[QueueMessage] | None) -> int | None:
    return None if peeked is None else len(peeked)


def _why(error: Exception) -> str:
    """One line for a poll that failed, as a script would say it."""
    if isinstance(error, Fatal):
        return str(error)
    explained = outage.explain(error)
    if explained is not None:
        return explained[0]
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _groups(table: list[status.Row]) -> list[dict[str, Any]]:
    """status's rows, grouped by lesson in the tutorial's order."""
    groups: list[dict[str, Any]] = []
    for row in table:
        if not groups or groups[-1]["title"] != row.group:
            groups.append({"title": row.group, "queues": []})
        in_flight = None  # held by a consumer or delayed: counted, but no peek sees them
        if row.messages is not None and row.visible is not None and row.visible < connect.MAX_BATCH:
            in_flight = max(0, row.messages - row.visible)  # (32 seen: maybe more visible)
        groups[-1]["queues"].append(
            {
                "name": row.queue,
                "messages": row.messages,
                "visible": row.visible,
                "in_flight": in_flight,
                "poison": row.poison,
            }
        )
    return groups


def _poison(found: dict[str, tuple[int, list[QueueMessage] | None]]) -> list[dict[str, Any]]:
    """The newest poison records among those the peeks saw (the first 32 of each queue)."""
    records = [
        poison_record(name, message)
        for name, (_, peeked) in found.items()
        if is_poison(name)
        for message in peeked or []
    ]
    return sorted(records, key=lambda r: r["at"], reverse=True)[:POISON_SHOWN]


# --- the web server -------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True  # Ctrl+C does not wait for a tab's request

    def __init__(self, port: int, poller: Poller, endpoint: str, prefix: str) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.poller, self.endpoint, self.prefix = poller, endpoint, prefix
        self.started = int(time.time() * 1000)
        port = self.server_address[1]
        # DNS rebinding: a page from elsewhere whose name now points at 127.0.0.1 reaches us
        # with its own name in Host. Only our own address is answered.
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.static = {
            name: resources.files("patterns.tools").joinpath("dashboard_static", name).read_bytes()
            for name in STATIC
        }
        self.tabs: dict[str, float] = {}  # tab id -> when it last asked
        self.tabs_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a tab closed mid-answer
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # HEAD too (without the body)
        if self.headers.get("Host") not in self.server.hosts:
            self._send(421, b"this dashboard answers only to its own address\n", "text/plain")
            return
        url = urlsplit(self.path)
        if url.path == "/api/state":
            query = parse_qs(url.query)
            since = (query.get("since") or ["0"])[0]
            tabs = self._count_tab((query.get("tab") or [""])[0])
            state = self.server.poller.state(
                int(since) if re.fullmatch(r"[0-9]{1,15}", since) else 0
            )
            state.update(
                started=self.server.started, endpoint=self.server.endpoint,
                prefix=self.server.prefix, interval=self.server.poller.interval, window=WINDOW,
                tabs=tabs, now=int(time.time() * 1000),
            )  # fmt: skip
            body = json.dumps(state, ensure_ascii=True, separators=(",", ":")).encode()
            self._send(200, body, "application/json")
            return
        name = "index.html" if url.path == "/" else url.path.lstrip("/")
        if name in self.server.static:
            self._send(200, self.server.static[name], TYPES[Path(name).suffix])
        else:
            self._send(404, b"not found\n", "text/plain")

    do_HEAD = do_GET

    def _count_tab(self, tab: str) -> int:
        """How many tabs asked in the last few seconds (each sends an id it made up)."""
        now = time.monotonic()
        with self.server.tabs_lock:
            if TAB_ID.match(tab):
                self.server.tabs[tab] = now
            for old in [t for t, seen in self.server.tabs.items() if now - seen > 5]:
                del self.server.tabs[old]
            return len(self.server.tabs)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """A bad request line, an unknown method: plain text with the same headers."""
        self._send(code, f"{code} {message or ''}\n".encode(), "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.send_header("Content-Type", f"{content_type}; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per tab per second would bury what matters


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--port", type=cli.whole_number(least=0, most=65535), default=PORT,
        help="the port on 127.0.0.1 to serve the page on (0: any free one)",
    )  # fmt: skip
    parser.add_argument(
        "--prefix", default="", metavar="TEXT",
        help="only queues whose names start with TEXT (tutorial names may follow it)",
    )  # fmt: skip
    parser.add_argument(
        "--traces", type=Path, default=tracing.traces_file(), metavar="FILE",
        help=f"the traces file to draw journeys from (${tracing.FILE_VAR} when set)",
    )  # fmt: skip
    parser.add_argument(
        "--orphan-age", type=cli.seconds(most=7 * 24 * 3600), default=blobs.ORPHAN_AGE,
        metavar="SECONDS", help="a blob no message refers to is an orphan once this old",
    )  # fmt: skip
    args = parser.parse_args()
    log = cli.logger("dashboard")
    logging.getLogger("azure.storage.queue").setLevel(logging.ERROR)  # a failing peek: '?'
    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl+C, even if started in the background
        signal.signal(stop, signal.default_int_handler)  # (where a shell ignores it for us)
    svc = connect.service()  # settings that cannot work stop here, before serving
    poller = Poller(svc, args.prefix, args.orphan_age, args.traces, log)
    try:
        server = Server(args.port, poller, outage.endpoint(), args.prefix)
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise Fatal(
                f"port {args.port} on 127.0.0.1 is already in use (a dashboard already "
                "running?): open that one, or choose another port with --port"
            ) from None
        raise Fatal(f"cannot serve on port {args.port}: {error.strerror}") from None
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    log.info(
        f"dashboard at {url} - open it in a browser. It shows {outage.endpoint()}, reading "
        "only (lists, counts, peeks) about once a second; Ctrl+C stops it"
    )
    threading.Thread(target=poller.run, name="poller", daemon=True).start()
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        log.info("stopped")
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    cli.run(main)
