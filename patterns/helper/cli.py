"""CLI: a script's log, Ctrl+C and flags, each from its home in support/; and run(main), which
turns an expected failure into one line and an exit code."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from patterns.helper import Fatal
from patterns.helper.support import flags, lines, outage, signals

logger = lines.logger  # one line per event: `HH:MM:SS.mmm role[pid] text`
Shutdown = signals.Shutdown  # Ctrl+C: stop taking messages, release the one in hand
Interrupted = signals.Interrupted  # raised by Shutdown.sleep() when Ctrl+C cuts work short
interruptible = signals.interruptible  # a request Ctrl+C may cut short
ArgumentParser = flags.ArgumentParser  # a usage error in one line; ranges shown in --help
add_queue_argument = flags.add_queue_argument  # a queue's name, checked before any request
add_concurrency_argument = flags.add_concurrency_argument  # sends (or messages) at once
add_consumer_arguments = flags.add_consumer_arguments  # --batch-size, --max-attempts, ...
inbox_options = flags.inbox_options  # those flags as consume.Inbox's options
whole_number, seconds, delay = flags.whole_number, flags.seconds, flags.delay  # flag types
blob_container = flags.blob_container  # a blob container's name, checked like a queue's


def run(main: Callable[[], int | None]) -> NoReturn:
    """Run a script's main() and turn expected failures into one line and an exit code."""
    try:
        sys.exit(main() or 0)
    except Fatal as error:
        message, code = str(error), error.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
    except Exception as error:
        explained = outage.explain(error)  # unreachable, refusing us, or not a queue service
        if explained is None:
            raise
        message, code = explained
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(code)
