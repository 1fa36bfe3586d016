"""Clean-up: delete the tutorial's queues, to start the walkthrough afresh.

    python patterns/tools/cleanup.py              # lists them, asks, then deletes
    python -m patterns.tools.cleanup --dry-run    # only lists
    make cleanup ARGS=--yes                       # deletes without asking

It deletes only queues the tutorial uses (patterns/tools/queues.py): the patterns' queue names
and prefixes, their poison queues and leftover reply- queues. Any other queue in the account
is left alone. Deleting a queue deletes its messages.
"""

from __future__ import annotations

import sys

from azure.core.exceptions import ResourceNotFoundError

from patterns.helper import Fatal, cli, connect
from patterns.tools.queues import classify, sort_key


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
    args = parser.parse_args()
    log = cli.logger("cleanup")
    svc = connect.service(log)

    listed = [q.name for q in svc.list_queues(name_starts_with=args.prefix or None)]
    mine = sorted(
        (name for name in listed if classify(name, args.prefix)),
        key=lambda name: sort_key(name, args.prefix),
    )
    titles = {name: found[0].title for name in mine if (found := classify(name, args.prefix))}
    others = len(listed) - len(mine)
    scope = f" starting with '{args.prefix}'" if args.prefix else ""
    left_alone = f"; {others} other queue(s) left alone" if others else ""
    if not mine:
        log.info(f"no tutorial queues{scope} to delete{left_alone}")
        return 0
    for name in mine:
        log.info(f"{'would delete' if args.dry_run else 'to delete'}: {name}  ({titles[name]})")
    if args.dry_run:
        log.info(f"dry run: {len(mine)} queue(s) would be deleted{left_alone}; nothing deleted")
        return 0
    if not args.yes:
        try:
            answer = input(f"Delete these {len(mine)} queue(s) and their messages? [y/N] ")
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
    log.info(f"deleted {deleted} queue(s){left_alone}")
    return 0


if __name__ == "__main__":
    cli.run(main)
