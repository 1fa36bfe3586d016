"""The shared helper: what every script needs that is *not* the pattern itself.

One concern a file; each reads alone and imports only the ones above it in this list:

    settings.py  where the connection comes from (environment, .env, the local Azurite) and
                 what is wrong with a connection string, said without any of its values
    codec.py     message bodies: the one place a body is written (encode) and read
                 (parse_json, app_id, describe), as plain text or Base64 (Azure Functions)
    tracing.py   optional OpenTelemetry tracing of a message's journey: hooks that connect
                 and consume call, doing nothing (importing nothing) unless switched on
    connect.py   the one client per process, queues and their names, sending, and what a
                 script says when the service is unreachable, refuses it, or is away; the
                 blob client beside it (claim-check payloads), from the same settings
    cli.py       script plumbing: the log format, Ctrl+C, the argument parser with its range
                 types, the consumer flags and their defaults, run() for one-line errors
    consume.py   receiving and settling: Inbox (receive, settle = delete / retry / poison /
                 release), lease renewal, idle backoff, Workers (several messages at once)

Scripts import the files, not their contents (`from patterns.helper import cli, consume`), so
every call names its home: `consume.Inbox(...)`, `connect.open_queue(...)`, `cli.run(main)`.
The two exceptions below are what every file raises.
"""


class Fatal(Exception):
    """An expected failure: `cli.run()` prints it as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadMessage(Exception):
    """A message that can never be processed (not JSON, wrong shape): it goes to poison."""
