"""Clean-up: delete the tutorial's queues, blobs and tables, to start the walkthrough afresh.

    python patterns/tools/cleanup.py              # lists them, asks, then deletes
    python patterns/tools/cleanup.py --lesson fanout --yes   # one lesson's queues: a page's start
    python -m patterns.tools.cleanup --dry-run    # only lists
    make cleanup ARGS=--yes                       # deletes without asking
    make cleanup ARGS=--orphans   # only orphan blobs (no message needs them: not asked); no queue

It deletes only queues the tutorial uses (patterns/tools/queues.py): the patterns' queue names
and prefixes, their poison queues and leftover reply- queues; and the blobs of those queues'
messages (claim-check payloads, big poison records: patterns/tools/blobs.py); and the lessons'
tables (`payments`, `ordered`). Any other queue or table in the account is left alone. Deleting
a queue deletes its messages; deleting a table, its rows.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueServiceClient

from patterns.helper import Fatal, cli, connect
from patterns.helper.support import tables
from patterns.helper.support.blobs import service as blob_service
from patterns.helper.support.outage import in_short
from patterns.tools import blobs
from patterns.tools.queues import LESSONS, classify, sort_key, tutorial_tables


def main() -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--yes", "-y", action="store_true", help="delete without asking")
    parser.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    parser.add_argument(
        "--prefix",
        default="",
        metavar="TEXT",
        help="only queues whose names start with TEXT (tutorial names may follow it, e.g. "
        "--prefix alice- also matches alice-tasks-queue)",
    )
    parser.add_argument(
        "--lesson",
        choices=LESSONS,
        help="only that lesson's queues, blobs and tables (each lesson's page starts with this)",
    )
    parser.add_argument(
        "--orphans", action="store_true", help="delete only orphan blobs (status shows them)"
    )
    parser.add_argument(
        "--orphan-age", type=cli.seconds(most=7 * 24 * 3600), default=blobs.ORPHAN_AGE,
        metavar="SECONDS", help="with --orphans: a blob no message refers to, once this old",
    )  # fmt: skip
    args = parser.parse_args()
    log = cli.logger("cleanup")
    svc = connect.service()

    def ours(name: str) -> bool:  # a tutorial queue (of --lesson, when given)
        found = classify(name, args.prefix)
        return found is not None and args.lesson in (None, found[0].lesson)

    if args.orphans:  # every orphan, as before --lesson; with it, only that lesson's
        mine = ours if args.lesson else lambda queue: True
        return delete_orphans(svc, args.prefix, args.orphan_age, args.dry_run, log, mine)

    listed = [q.name for q in svc.list_queues(name_starts_with=args.prefix or None)]
    mine = sorted(filter(ours, listed), key=lambda name: sort_key(name, args.prefix))
    titles = {name: found[0].title for name in mine if (found := classify(name, args.prefix))}
    # The blobs of the tutorial's queues' messages (a queue's own name starts each blob's).
    kept = [blob for blob in _blobs(svc, args.prefix, log) if ours(blob.queue)]
    lesson_tables = _tables(args.prefix, log, args.lesson)
    others = len(listed) - len(mine)
    scope = f" starting with '{args.prefix}'" if args.prefix else ""
    scope += f" of lesson {args.lesson}" if args.lesson else ""
    # A lesson's page starts with --lesson: the other lessons' queues are no news there.
    left_alone = f"; {others} other queue(s) left alone" if others and not args.lesson else ""
    if not mine and not kept and not lesson_tables:
        log.info(f"no tutorial queues{scope} to delete{left_alone}")
        return 0
    for name in mine:
        log.info(f"{'would delete' if args.dry_run else 'to delete'}: {name}  ({titles[name]})")
    for blob in kept:
        log.info(f"{'would delete' if args.dry_run else 'to delete'}: blob {blob.path}")
    for table, title in lesson_tables.items():
        log.info(f"{'would delete' if args.dry_run else 'to delete'}: table {table}  ({title})")
    blobs_too = f" and {len(kept)} blob(s)" if kept else ""
    blobs_too += f" and {len(lesson_tables)} table(s)" if lesson_tables else ""
    if args.dry_run:
        log.info(
            f"dry run: {len(mine)} queue(s){blobs_too} would be deleted{left_alone}; "
            "nothing deleted"
        )
        return 0
    if not args.yes:
        try:
            answer = input(
                f"Delete these {len(mine)} queue(s) and their messages{blobs_too}? [y/N] "
            )
        except EOFError:
            print(file=sys.stdout)
            raise Fatal("no answer (no terminal?): add --yes to delete without asking") from None
        if answer.strip().lower() not in ("y", "yes"):
            log.info("nothing deleted")
            return 0

    deleted = 0
    for name in mine:
        try:
            svc.delete_queue(name)
            deleted += 1
            log.info(f"deleted {name}")
        except ResourceNotFoundError:
            log.info(f"{name} was already gone")
    gone = _delete_blobs(kept, log)
    for table in lesson_tables:
        tables.service().delete_table(table)  # (no error if it is already gone)
        log.info(f"deleted table {table}")
    also = f" and {gone} blob(s)" if kept else ""
    also += f" and {len(lesson_tables)} table(s)" if lesson_tables else ""
    log.info(f"deleted {deleted} queue(s){also}{left_alone}")
    return 0


def _tables(prefix: str, log: logging.Logger, lesson: str | None) -> dict[str, str]:
    """{table: lesson} of the lessons' tables that exist (of `lesson` only, when given); none
    when no table service is configured, or it cannot be listed (said in one line: the queues
    are cleaned up anyway)."""
    try:
        existing = {t.name for t in tables.service().list_tables()}
    except Fatal:
        return {}
    except connect.FAILED as error:
        log.warning(f"the tables could not be listed ({in_short(error)}); left as they are")
        return {}
    return {
        table: p.title
        for p, _, table in tutorial_tables(prefix)
        if table in existing and lesson in (None, p.lesson)
    }


def _blobs(
    svc: QueueServiceClient, prefix: str, log: logging.Logger, orphan_age: float = 0
) -> list[blobs.Blob]:
    """The tutorial's blobs; none when no blob service is configured (a queue-only SAS) or it
    cannot be listed (said in one line: the queues are cleaned up all the same)."""
    try:
        return blobs.tutorial_blobs(blob_service(), svc, prefix, orphan_age)
    except Fatal:
        return []
    except connect.FAILED as error:
        log.warning(f"the blobs could not be listed ({in_short(error)}); left as they are")
        return []


def _delete_blobs(found: list[blobs.Blob], log: logging.Logger) -> int:
    deleted = 0
    for blob in found:
        try:
            blob_service().get_blob_client(blob.container, blob.name).delete_blob()
            deleted += 1
            log.info(f"deleted blob {blob.path}")
        except ResourceNotFoundError:
            log.info(f"blob {blob.path} was already gone")
    return deleted


def delete_orphans(
    svc: QueueServiceClient,
    prefix: str,
    orphan_age: float,
    dry_run: bool,
    log: logging.Logger,
    ours: Callable[[str], bool],
) -> int:
    """--orphans: delete the blobs no message refers to (see blobs.py); queues stay as they are."""
    found = [blob for blob in _blobs(svc, prefix, log, orphan_age) if ours(blob.queue)]
    orphans = [blob for blob in found if blob.state == "orphan"]
    unsure = sum(blob.state == "unknown" for blob in found)
    not_sure = f"; {unsure} not sure, left alone (younger, or messages a peek cannot see)"
    for blob in orphans:
        log.info(f"{'would delete' if dry_run else 'to delete'}: orphan blob {blob.path}")
    if dry_run:
        log.info(f"dry run: {len(orphans)} orphan blob(s) would be deleted; nothing deleted")
        return 0
    gone = _delete_blobs(orphans, log)
    log.info(f"deleted {gone} orphan blob(s){not_sure if unsure else ''}")
    return 0


if __name__ == "__main__":
    cli.run(main)
