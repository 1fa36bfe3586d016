"""Several messages at once: Workers runs a consumer's work on N threads (--concurrency), and
concurrently() keeps N sends in flight for a producer (Queue Storage has no batch send).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import SimpleQueue
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Workers:
    """Up to `n` messages' work at once, each on one of `n` threads (I/O-bound work: waiting on
    the network, or our simulated work; CPU-bound work needs processes, see the README).

    free() waits, without polling, until a worker is free and says how many are, so that the
    loop receives no message that would wait unworked while its visibility timeout runs out.
    With n = 1 there is no thread: submit() does the work in the caller's thread, as a plain
    loop would, and free() sets no limit (a --batch-size batch is worked through in turn).

    A context manager: leaving waits for the work in progress (Ctrl+C interrupts it, and each
    worker releases its message); after an error or a second Ctrl+C it does not wait.
    """

    def __init__(self, n: int) -> None:
        self.n, self._busy = n, 0
        self._changed = threading.Condition()
        self._error: BaseException | None = None  # a worker's unexpected error, for the loop
        self._tasks: SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None]
        self._tasks = SimpleQueue()
        # Daemon threads: a second Ctrl+C ends the process even if some work ignores the first.
        # With n = 1, none: the caller's thread does the work.
        workers = range(n) if n > 1 else range(0)
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in workers]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        for _ in self._threads:
            self._tasks.put(None)  # each worker ends after its current task
        if kind is None:
            for thread in self._threads:
                thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def free(self) -> int | None:
        """How many workers are free, waiting until one is (None: n = 1, no limit)."""
        if self.n == 1:
            return None
        with self._changed:
            while self._busy == self.n and self._error is None:
                self._changed.wait()  # a finishing worker wakes us; Ctrl+C still gets through
            if self._error is not None:
                raise self._error
            return self.n - self._busy

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        """Start work(*args) on a free worker (call free() first)."""
        if self.n == 1:
            work(*args)
            return
        with self._changed:
            self._busy += 1
        self._tasks.put((work, args))

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            work, args = task
            try:
                work(*args)
            except BaseException as error:  # settle() handles the expected ones: a bug
                with self._changed:
                    self._error = self._error or error
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify()


def concurrently(work: Callable[[T], R], items: Iterable[T], concurrency: int) -> Iterator[R]:
    """work(item) for every item, `concurrency` at a time; the results in the items' order.

    Unlike ThreadPoolExecutor.map, it takes the next item only when there is room, so
    `--count 10000000` never builds ten million tasks in memory. Stopped early (an error,
    Ctrl+C), it sends nothing more: only the few already started finish."""
    window: deque[Future[R]] = deque()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        try:
            for item in items:
                window.append(pool.submit(work, item))
                if len(window) >= 2 * concurrency:  # a few queued: no thread waits for us
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for future in window:
                future.cancel()
