"""Tables: the table client from the same settings as the queues', a lesson's table, and the
check a key read from a message passes before it becomes a PartitionKey or RowKey.

The exactly-once and ordered lessons keep their state here, beside the queue: the same account,
the same emulator, the same credentials. azure-data-tables is imported only when a table is
needed (it costs start-up time every other script need not pay).
"""

from __future__ import annotations

import argparse
import json
import re
from typing import TYPE_CHECKING, Any

from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.support import outage, retries, settings

if TYPE_CHECKING:
    from azure.data.tables import TableClient, TableServiceClient

# Table names: 3-63 letters and digits, starting with a letter (the service's rule).
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")
MAX_KEY = 200  # characters of a key from a message (the service allows 1 KiB in UTF-16)
FORBIDDEN = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")  # not allowed in PartitionKey or RowKey
_service: TableServiceClient | None = None


def service() -> TableServiceClient:
    """The table service client for this process, with the queue client's timeouts and retries
    (retries.py), signed in the same way, at the same account."""
    global _service
    if _service is None:
        from azure.data.tables import TableServiceClient

        queues = connect.service()  # first: it checks the settings, says where they came from
        _service = settings.client(
            TableServiceClient, retries.table_options(), "table", queues.credential
        )
    return _service


def table_name(text: str) -> str:
    """`text` if it is a valid table name, else Fatal (the flag's type: checked before any
    request)."""
    if not NAME.match(text) or text.lower() == "tables":
        raise Fatal(
            f"invalid table name {text!r}: use 3-63 letters and digits, starting with a letter"
        )
    return text


def table_flag(text: str) -> str:
    """`type=` for a flag that names a table: a bad name is a usage error naming the flag."""
    try:
        return table_name(text)
    except Fatal as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def table(name: str) -> TableClient:
    """A client for table `name`, created if it does not exist yet: scripts start in any order."""
    from azure.core.exceptions import ResourceExistsError

    client = service().get_table_client(table_name(name))
    try:
        with outage.table_service.watch():
            client.create_table()
    except ResourceExistsError:
        pass  # already there: exactly what we wanted
    except connect.FAILED as error:
        if not outage.is_away(error):
            raise
        raise Fatal(
            f"cannot reach the table service at {endpoint()} - is the emulator running with its "
            f"table service (`make emulator`)? (or check {settings.CONNECTION_STRING_VAR})"
        ) from None
    return client


def endpoint() -> str:
    """The table service's address, fit to print: no SAS token, no trailing slash."""
    return settings.printable_url(service().url)


def key(body: dict[str, Any], field: str) -> str:
    """A message's `field` fit to be (part of) a PartitionKey or RowKey, or BadMessage (which
    sends the message to poison): a non-empty string of at most 200 characters, without the
    characters keys may not hold (/ \\ # ? and control characters). Checked before any request:
    a forged key reaches no row by accident."""
    value = body.get(field)
    if not isinstance(value, str) or not value.strip():
        shown = json.dumps(value, ensure_ascii=False)[:40]
        raise BadMessage(f"{field} must be a non-empty string, got {shown}")
    if len(value) > MAX_KEY:
        raise BadMessage(f"{field} is over {MAX_KEY} characters")
    if found := FORBIDDEN.search(value):
        raise BadMessage(f"{field} holds {found.group()!r}, which a table key may not hold")
    return value
