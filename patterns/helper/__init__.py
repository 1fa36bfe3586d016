"""The shared helper: what every script needs that is *not* the pattern itself.

Four files, each readable alone; each imports only the ones listed above it:

    settings.py  where the connection comes from (environment, .env, the local Azurite) and
                 what is wrong with a connection string, said without any of its values
    connect.py   the one client per process, queues and their names, sending JSON, and what
                 a script says when the service is unreachable or refuses it
    consume.py   receiving and settling: Inbox (receive, settle = delete / retry / poison /
                 release), lease renewal, outage notes, idle backoff, Ctrl+C
    cli.py       script plumbing: the log format, the argument parser with its range types
                 and the consumer flags, run() for one-line errors and exit codes

Scripts import the files, not their contents (`from patterns.helper import cli, consume`),
so every call says where it is defined: `consume.Inbox(...)`, `connect.open_queue(...)`.
The two exceptions below are what every part raises.
"""


class Fatal(Exception):
    """An expected failure: `cli.run()` prints it as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadMessage(Exception):
    """A message that can never be processed (not JSON, wrong shape): it goes to poison."""
