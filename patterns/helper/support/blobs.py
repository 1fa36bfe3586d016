"""Blobs: the blob service client from the same settings as the queues', its containers, and
the check a blob reference read from a message passes before anything follows it.

The claim-check lesson keeps big payloads here; a poison record too big for a message keeps
its body here (poison.py). azure-storage-blob is imported only when a blob is needed.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from azure.core.exceptions import ResourceExistsError

from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.support import retries, settings

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, ContainerClient

CHUNK = 4 * 1024 * 1024  # bytes per download request
MAX_BLOB_NAME = 1024  # characters, the service's limit
log = logging.getLogger("patterns")
_service: BlobServiceClient | None = None


def service() -> BlobServiceClient:
    """The blob service client for this process, with the queue client's timeouts and retries.
    A download is read in 4 MiB requests (the SDK's first one is 32 MiB otherwise), so a
    consumer that streams a payload holds no more than that at a time."""
    global _service
    if _service is None:
        from azure.storage.blob import BlobServiceClient, LinearRetry

        queues = connect.service()  # first: it checks the settings, says where they came from
        options = retries.options(LinearRetry, max_single_get_size=CHUNK, max_chunk_get_size=CHUNK)
        _service = settings.client(BlobServiceClient, options, "blob", queues.credential)
    return _service


def container(name: str) -> ContainerClient:
    """A client for blob container `name` (the same naming rules as a queue's), creating it
    if it does not exist yet, so scripts can be started in any order."""
    client = service().get_container_client(connect.queue_name(name, kind="blob container"))
    try:
        client.create_container()
        log.info(f"created blob container '{name}'")
    except ResourceExistsError as error:
        if error.error_code == "ContainerBeingDeleted":
            raise Fatal(
                f"blob container '{name}' is still being deleted; try again in a minute"
            ) from None
    except connect.UNREACHABLE:
        raise Fatal(
            f"cannot reach the blob service at {endpoint()} - is the emulator running with its "
            f"blob service (`make emulator`)? (or check {settings.CONNECTION_STRING_VAR})"
        ) from None
    return client


def endpoint() -> str:
    """The blob service's address, fit to print: no SAS token, no trailing slash."""
    url = urlsplit(service().url)
    return f"{url.scheme}://{url.netloc}{url.path.rstrip('/')}"


def inside(where: Any, container: str, prefix: str) -> tuple[str, str]:
    """(container, blob name) of a blob reference read from a message - a claim check, a poison
    record's body_blob - if it points inside `container`, under `prefix`: the one place the
    lesson writes such blobs. Anything else is a BadMessage, decided before any request, so a
    forged reference reaches no other blob, and the reason says nothing about the blob it
    names (whether it exists, how big it is): nobody looked."""
    where = where if isinstance(where, dict) else {}
    named, name = where.get("container"), where.get("blob")
    if not (isinstance(named, str) and isinstance(name, str)):
        raise BadMessage("its blob reference needs a container and a blob name, both strings")
    if problem := _unsafe_name(name):
        raise BadMessage(f"its blob name {problem}: refused without looking it up")
    if named != container or not name.startswith(prefix):
        raise BadMessage(
            f"it refers to a blob outside {container}/{prefix}, the only place this lesson "
            "keeps them: refused without looking it up"
        )
    return named, name


def _unsafe_name(name: str) -> str:
    """What makes a blob name unsafe to follow ('' if nothing)."""
    if not name:
        return "is empty"
    if len(name) > MAX_BLOB_NAME:
        return f"is over {MAX_BLOB_NAME} characters"
    if re.search(r"[\x00-\x1f\x7f-\x9f]", name):
        return "has a control character"
    if "\\" in name:
        return "has a backslash"
    if name.startswith("/"):
        return "starts with '/'"
    if {"", ".", ".."} & set(name.split("/")):  # HTTP clients resolve 'q/../other/x' to 'other/x'
        return "has an empty, '.' or '..' part"
    return ""
