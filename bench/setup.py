"""What every benchmark section gets: the endpoint, its queues, the scripts' environment, and
the requests the server logged per queue."""

from __future__ import annotations

import itertools
import math
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from azure.storage.queue import QueueClient, QueueServiceClient

from patterns.emulator import Azurite
from patterns.helper import Fatal
from patterns.helper.support import settings
from patterns.runner import Proc

# `"GET /devstoreaccount1/<queue>/messages?numofmessages=32 HTTP/1.1"` in Azurite's access log
REQUEST = re.compile(r'"([A-Z]+) /[^/\s]+/([a-z0-9-]+)(/messages)?[?/\s]')


@dataclass
class Setup:
    """One endpoint: an in-memory Azurite of its own, or the configured account."""

    service: QueueServiceClient
    env: dict[str, str]
    prefix: str  # every queue of this run starts with it: unique, and deleted at the end
    azurite: Azurite | None  # None: a real account, whose requests nobody here can count

    @classmethod
    @contextmanager
    def open(cls, connection_string: str, prefix: str, azurite: Azurite | None) -> Iterator[Setup]:
        service = QueueServiceClient.from_connection_string(connection_string)
        # Plain-text messages whatever the shell or .env says: the raw SDK sends text.
        env = {
            **os.environ,
            settings.CONNECTION_STRING_VAR: connection_string,
            settings.MESSAGE_ENCODING_VAR: "text",
        }
        setup = cls(service, env, prefix, azurite)
        try:
            yield setup
        finally:  # the scripts' poison and output queues too: everything named prefix-...
            for queue in service.list_queues(name_starts_with=prefix):
                service.delete_queue(queue.name)

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def queue(self, role: str) -> QueueClient:
        """A new, empty queue of this run."""
        queue = self.service.get_queue_client(self.name(role))
        queue.create_queue()
        return queue

    def start(self, module: str, *args: str) -> Proc:
        return Proc(module, *args, env=self.env)

    def server_cpu(self) -> float:
        """CPU seconds the emulator has used so far (NaN: an account, or no /proc)."""
        if self.azurite is None or self.azurite.process is None:
            return math.nan
        return cpu_seconds(self.azurite.process.pid)

    def requests(self) -> Counter[tuple[str, str]]:
        """Requests served so far, by queue and kind: `receive` (GET .../messages), `message`
        (any other request on its messages: send, delete, update) or `queue` (properties,
        create...). From Azurite's access log: counted at the server, nothing is missed."""
        assert self.azurite is not None and self.azurite.log_path is not None
        text = Path(self.azurite.log_path).read_text(errors="replace")
        return Counter(
            (m[2], ("receive" if m[1] == "GET" else "message") if m[3] else "queue")
            for m in REQUEST.finditer(text)
        )


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) a running process has used so far; NaN without /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Endpoints:
    """Opens a new endpoint for each measurement that needs a clean server: Azurite's
    in-memory store sweeps deleted messages every 60 s, and after some ten thousand messages
    that sweep has stalled every request for over a minute on this machine. With `account`,
    the configured account every time (its queues are this run's, deleted after each use)."""

    account: bool
    run: str  # this run's id: queues are named bench-<run>-...
    folder: Path  # for the emulators' access logs
    count: int  # messages per throughput run
    samples: int  # latency samples after idle, per setting

    @contextmanager
    def open(self) -> Iterator[Setup]:
        prefix = f"bench-{self.run}"
        if self.account:
            config = settings.load_settings()
            if config.source == "default":
                raise Fatal(
                    f"--account needs {settings.CONNECTION_STRING_VAR} (environment or .env)"
                )
            with Setup.open(config.connection_string, prefix, None) as setup:
                yield setup
            return
        log = self.folder / f"azurite-{next(_opened)}.log"
        with (
            Azurite(log_path=log) as azurite,
            Setup.open(azurite.connection_string, prefix, azurite) as setup,
        ):
            yield setup


_opened = itertools.count(1)
