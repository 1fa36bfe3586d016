"""Failures while settling: when a failed message comes back (retry backoff: 1, 2, 4, 8 s...,
not its whole visibility timeout) and when it may not come back at all (its attempts used up,
or it would expire first, gone without anyone knowing it failed); and what a delete, release or
update that fails leaves behind - the message no longer ours (its visibility timeout ran out or
someone else received it: its pop receipt is void), or the service away. None of these raises.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueMessage

from patterns.helper.support import outage
from patterns.helper.support.lines import describe

log = logging.getLogger("patterns")

# --- a failed attempt -------------------------------------------------------------------------


def wait(message: QueueMessage, inbox: Any) -> int:
    """Seconds until a failed message of `inbox` comes back: its retry_backoff doubled per
    failure, up to its retry_backoff_max; with retry_backoff 0, its visibility timeout."""
    if not inbox.retry_backoff:
        return int(inbox.visibility_timeout)
    doublings = min(message.dequeue_count - 1, 32)  # a huge count must not overflow
    return int(min(inbox.retry_backoff * 2**doublings, inbox.retry_backoff_max))


def final(message: QueueMessage, max_attempts: int | None, wait: int) -> str | None:
    """Why a message that just failed must go to poison now, or None: it may come back."""
    count, expires = message.dequeue_count, message.expires_on
    if max_attempts and count >= max_attempts:
        return f"failed {count} times"
    if expires and datetime.now(timezone.utc) + timedelta(seconds=wait) >= expires:
        return (
            f"attempt {count} of {max_attempts} failed, and the next (in {wait} s) would come "
            f"after the message expires at {expires:%Y-%m-%d %H:%M:%S} UTC"
        )
    return None


def used_up(message: QueueMessage, max_attempts: int | None, excused: int) -> str | None:
    """Why a message must go to poison before any work, or None: delivered more than
    max_attempts times (not counting `excused` deliveries, the ones an outage ended). Its
    consumer may have died on it each time (out of memory, kill -9): a dead process cannot
    count a failed attempt, but the service counts every delivery."""
    if max_attempts is None or message.dequeue_count - excused <= max_attempts:
        return None
    besides = f" (besides {excused} an outage ended)" if excused else ""
    return (
        f"delivered {message.dequeue_count - excused} times{besides}, more than --max-attempts "
        f"{max_attempts}; its consumer may have died on it each time"
    )


# --- a settle call that fails ----------------------------------------------------------------


def not_ours(error: BaseException) -> bool:
    """The message is no longer ours: gone, or received again by someone else (new receipt)."""
    return isinstance(error, ResourceNotFoundError) or (
        isinstance(error, HttpResponseError) and error.error_code == "PopReceiptMismatch"
    )


def not_deleted(message: QueueMessage, error: Exception, excused: outage.Excused) -> bool:
    """A delete failed: the message is delivered again (at-least-once). False, always."""
    if not_ours(error):
        log.warning(
            f"{describe(message)} was no longer ours to delete (its visibility timeout ran "
            "out); another consumer may process it again"
        )
        return False
    if outage.queue_service.warn_if_away(error):
        excused.add(message)  # the outage ended this delivery, not the message
    log.warning(
        f"could not delete {describe(message)}: {outage.in_short(error)}; it will be delivered "
        "again"
    )
    return False


def not_released(message: QueueMessage, error: Exception, visibility_timeout: int) -> bool:
    """A release failed: True if the message is not ours anyway, False if it comes back only
    when its visibility timeout ends."""
    if not_ours(error):
        log.info(f"{describe(message)} was no longer ours to release")
        return True
    log.warning(
        f"could not release {describe(message)}: {outage.in_short(error)}; it comes back within "
        f"{visibility_timeout} s, when its visibility timeout ends"
    )
    return False


def not_delayed(error: Exception) -> str:
    """A retry's update failed: when the message comes back instead, for the retry's line."""
    if not_ours(error):
        return "it was no longer ours; it comes back on its own"
    outage.queue_service.warn_if_away(error)
    return f"next attempt after its visibility timeout ({outage.in_short(error)})"


def not_poisoned(message: QueueMessage, error: Exception) -> None:
    """Its poison copy could not be written: the original stays, and comes back."""
    outage.queue_service.warn_if_away(error)
    log.warning(
        f"could not move {describe(message)} to poison: {outage.in_short(error)}; it will come back"
    )
