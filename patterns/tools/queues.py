"""Which queue names belong to which pattern: the one table that status.py and cleanup.py read.

A pattern owns exact names (`tasks-queue`) and name prefixes (`fanout-queue-<subscriber>`,
`reply-<uuid>`); every one of them may have a poison queue, `<name>-poison`. A lesson on Table
Storage owns its tables too (`payments`). When a pattern gets a new queue or table, add it here
and both tools know it. Its `lesson` is the name a page uses to start clean
(`cleanup.py --lesson competing-consumers --yes`).
"""

from __future__ import annotations

from dataclasses import dataclass

from patterns.helper import connect


@dataclass(frozen=True)
class Pattern:
    title: str
    lesson: str  # cleanup --lesson NAME: the page's folder name, with hyphens
    names: tuple[str, ...] = ()  # exact queue names, in the order a learner meets them
    prefixes: tuple[str, ...] = ()  # a queue named <prefix><something> belongs here too
    tables: tuple[str, ...] = ()  # its tables in Table Storage (the lesson's state)

    def owns(self, name: str) -> bool:
        return name in self.names or any(
            name.startswith(prefix) and len(name) > len(prefix) for prefix in self.prefixes
        )


PATTERNS: tuple[Pattern, ...] = (
    Pattern("competing consumers", "competing-consumers", names=("tasks-queue",)),
    Pattern("fan-out", "fanout", prefixes=("fanout-queue-",)),
    Pattern(
        "priority",
        "priority",
        names=("tasks-high-priority", "tasks-normal-priority", "tasks-low-priority"),
    ),
    Pattern(
        "pipes and filters",
        "pipes-and-filters",
        names=("queue-validate", "queue-enrich", "queue-finalize", "queue-rejected"),
    ),
    Pattern("request/reply", "request-reply", names=("request-queue",), prefixes=("reply-",)),
    Pattern("load levelling", "load-leveling", names=("tasks-leveling",)),
    Pattern("claim check", "claim-check", names=("claim-check-queue",)),
    Pattern(
        "exactly-once effects", "exactly-once", names=("payments-queue",), tables=("payments",)
    ),
    Pattern("per-key order", "ordered", names=("order-events",), tables=("ordered",)),
)
LESSONS: tuple[str, ...] = tuple(pattern.lesson for pattern in PATTERNS)


def source_queue(name: str) -> str:
    """The queue a poison queue belongs to (`tasks-queue-poison` -> `tasks-queue`)."""
    return name.removesuffix(connect.POISON_SUFFIX)


def is_poison(name: str) -> bool:
    return name.endswith(connect.POISON_SUFFIX) and len(name) > len(connect.POISON_SUFFIX)


def classify(name: str, prefix: str = "") -> tuple[Pattern, str] | None:
    """(pattern, tutorial name of its source queue) for queue `name`, or None when the tutorial
    does not use it. A poison queue belongs to its source queue's pattern.

    `prefix` lets several learners (or tests) share one account: with prefix `alice-`,
    `alice-tasks-queue` is alice's `tasks-queue`."""
    candidates = [name]
    if prefix and name.startswith(prefix):
        candidates.append(name[len(prefix) :])
    for candidate in candidates:
        base = source_queue(candidate)
        for pattern in PATTERNS:
            if pattern.owns(base):
                return pattern, base
    return None


def sort_key(name: str, prefix: str = "") -> tuple[int, int, str]:
    """Tutorial order: lessons as in the hub (README.md), each lesson's names in its own order,
    queues no pattern uses last."""
    found = classify(name, prefix)
    if found is None:
        return (len(PATTERNS), 0, name)
    pattern, base = found
    rank = pattern.names.index(base) if base in pattern.names else len(pattern.names)
    return (PATTERNS.index(pattern), rank, name)


def table_prefix(prefix: str) -> str:
    """A queue prefix as a table name's: tables hold letters and digits only, so with prefix
    `alice-`, `alicepayments` is alice's `payments`."""
    return "".join(c for c in prefix if c.isalnum())


def tutorial_tables(prefix: str = "") -> list[tuple[Pattern, str, str]]:
    """(pattern, tutorial name, table name with the prefix) of every lesson's table, in the
    tutorial's order."""
    start = table_prefix(prefix)
    return [(pattern, name, start + name) for pattern in PATTERNS for name in pattern.tables]
