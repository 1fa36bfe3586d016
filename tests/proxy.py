"""A fault-injecting HTTP proxy in front of the real Azurite, for the tests: every request is
passed on as it came (the Shared Key signature does not cover the host), except the receives
it was told to refuse (`refuse(n)`), which get the answer Azure gives a throttled queue: 503
Server Busy, with its error code; and message updates (a release, a lease renewal) are slowed
down by `slow_updates` seconds, as on a distant or busy service. It counts the receives and
the messages each one asked for."""

from __future__ import annotations

import http.client
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from patterns.emulator import Azurite
from patterns.helper.support.settings import azurite_connection_string

BUSY = (
    b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ServerBusy</Code>'
    b"<Message>The server is busy.</Message></Error>"
)
RECEIVE = re.compile(r"^/[^/]+/[^/?]+/messages\?(?:.*&)?numofmessages=(\d+)")
UPDATE = re.compile(r"^/[^/]+/[^/?]+/messages/[^/?]+\?(?:.*&)?popreceipt=")


class FaultyProxy:
    """`with FaultyProxy(azurite) as proxy:` -> proxy.port (127.0.0.1, a free port)."""

    def __init__(self, azurite: Azurite) -> None:
        self.azurite = azurite
        self._refuse = 0  # receives still to answer 503 Server Busy
        self.slow_updates = 0.0  # seconds each message update waits before it is passed on
        self.updates = 0  # message updates seen (releases, renewals, retries)
        self.receives: list[tuple[int, int]] = []  # (numofmessages asked, status answered)
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _pass(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                asked = RECEIVE.match(self.path) if self.command == "GET" else None
                if asked and proxy._refused(int(asked.group(1))):
                    self.send_response(503, "Server Busy")
                    self.send_header("x-ms-request-id", str(uuid.uuid4()))
                    self.send_header("x-ms-error-code", "ServerBusy")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(BUSY)))
                    self.end_headers()
                    self.wfile.write(BUSY)
                    return
                if self.command == "PUT" and UPDATE.match(self.path):
                    with proxy._lock:
                        proxy.updates += 1
                    time.sleep(proxy.slow_updates)
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.azurite.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    content = answer.read()
                finally:
                    upstream.close()
                if asked:
                    proxy._count(int(asked.group(1)), answer.status)
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _pass

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def refuse(self, receives: int) -> None:
        """Answer the next `receives` receives 503 Server Busy (0: none from now on)."""
        with self._lock:
            self._refuse = receives

    def _refused(self, asked: int) -> bool:
        with self._lock:
            if self._refuse > 0:
                self._refuse -= 1
                self.receives.append((asked, 503))
                return True
            return False

    def _count(self, asked: int, status: int) -> None:
        with self._lock:
            self.receives.append((asked, status))

    def counted(self) -> list[tuple[int, int]]:
        with self._lock:
            return list(self.receives)

    @property
    def connection_string(self) -> str:
        """The emulator's connection string, its queue service reached through us."""
        return azurite_connection_string(
            self.port, blob_port=self.azurite.blob_port, table_port=self.azurite.table_port
        )

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
