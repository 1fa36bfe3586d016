"""The helper: what every pattern script needs besides the pattern. The core, top to bottom:
connect.py (client, queue names, send), codec.py (bodies), consume.py (Inbox: receive, settle,
back off), cli.py (log, Ctrl+C, flags, run); support/: one file per concern (docs/helper.md)."""


class Fatal(Exception):
    """An expected failure: `cli.run()` prints it as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class BadMessage(Exception):
    """A message that can never be processed (not JSON, wrong shape): it goes to poison."""
