"""What every benchmark section gets: the endpoint, its queues, the scripts' environment, and
the requests the server logged per queue."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from azure.storage.queue import QueueClient, QueueServiceClient

from patterns.emulator import Azurite
from patterns.helper import settings
from patterns.runner import Proc

# `"GET /devstoreaccount1/<queue>/messages?numofmessages=32 HTTP/1.1"` in Azurite's access log
REQUEST = re.compile(r'"[A-Z]+ /[^/\s]+/([a-z0-9-]+)(/messages)?[?/\s]')


@dataclass
class Setup:
    service: QueueServiceClient
    env: dict[str, str]
    prefix: str  # every queue of this run starts with it: unique, and deleted at the end
    azurite: Azurite | None  # None: a real account, whose requests nobody here can count
    count: int = 2000  # messages per throughput run
    samples: int = 8  # latency samples after idle
    made: list[str] = field(default_factory=list)

    @classmethod
    @contextmanager
    def open(cls, connection_string: str, prefix: str, azurite: Azurite | None) -> Iterator[Setup]:
        service = QueueServiceClient.from_connection_string(connection_string)
        env = {**os.environ, settings.CONNECTION_STRING_VAR: connection_string}
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

    def requests(self) -> Counter[tuple[str, bool]]:
        """Requests served so far, by (queue, to its messages?), from Azurite's access log:
        counted at the server, so nothing a script does is missed."""
        assert self.azurite is not None and self.azurite.log_path is not None
        text = Path(self.azurite.log_path).read_text(errors="replace")
        return Counter((m[1], bool(m[2])) for m in REQUEST.finditer(text))
