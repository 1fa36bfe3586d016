"""Short timeouts and retries, so that a dead endpoint is named in seconds, not minutes.

The one set of client options, for every client of the account (queue, blob, table): the SDK's
defaults take about two minutes to give up on a hung service. Queue operations are small: a
healthy service answers in milliseconds, a busy emulator in well under a second. A read timeout
of a few seconds (not the SDK's 30) with one retry reports a hung service within ~11 s.
"""

from __future__ import annotations

from typing import Any

from azure.storage.queue import LinearRetry

from patterns.helper import Fatal

CONNECT_TIMEOUT = 3  # seconds
READ_TIMEOUT = 5  # seconds
RETRY = {"backoff": 0.5, "random_jitter_range": 0.2, "retry_total": 3, "retry_read": 1}


def options(retry: type[Any] = LinearRetry, **more: Any) -> dict[str, Any]:
    """Keyword arguments for a client: `retry` is the client package's own LinearRetry (each
    Azure Storage package has its copy) or a subclass, made with our numbers."""
    return {
        "retry_policy": retry(**RETRY),
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
        **more,
    }


def table_options() -> dict[str, Any]:
    """The same numbers for the table client (azure-data-tables has no LinearRetry of its own:
    its retry policy takes them as keyword arguments, with a fixed backoff)."""
    return {
        "retry_total": RETRY["retry_total"],
        "retry_read": RETRY["retry_read"],
        "retry_backoff_factor": RETRY["backoff"],
        "retry_mode": "fixed",
        "connection_timeout": CONNECT_TIMEOUT,
        "read_timeout": READ_TIMEOUT,
    }


class FirstRequestProbe(LinearRetry):
    """The queue client's retry, plus a start-up probe: the process's first request is not
    retried when nothing answers in time, and its answer must come from a queue service. So a
    script whose endpoint is down, hung or something else says so within seconds, and the
    probe costs no request."""

    def __init__(self, **numbers: Any) -> None:
        super().__init__(**numbers)
        self.probed = False

    def send(self, request: Any) -> Any:
        if self.probed:
            return super().send(request)
        request.context.options.update(retry_connect=0, retry_read=0)  # 5xx: retried as usual
        response = super().send(request)
        answer = response.http_response
        if "x-ms-request-id" not in answer.headers:  # every Azure Storage answer has one
            from patterns.helper.support import outage  # (it needs the client made first)

            raise Fatal(
                outage.not_a_queue_service(answer.status_code, answer.headers.get("Server"))
            )
        self.probed = True
        return response
