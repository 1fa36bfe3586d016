"""Where the connection comes from: the environment, then `.env`, then the local Azurite.

The one place a setting is looked up (`lookup`), a connection string is checked (what is wrong
with it, in words that quote none of its values) and a client is made from it (`client`); and
redaction for anything that must be printed.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import find_dotenv
from dotenv.parser import parse_stream

from patterns.helper import Fatal

CONNECTION_STRING_VAR = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_VAR = "AZURE_STORAGE_ACCOUNT_URL"  # Entra ID sign-in (optional extra `entra`)
MESSAGE_ENCODING_VAR = "AZURE_QUEUE_MESSAGE_ENCODING"  # text (default) or base64 (Functions)
AZURITE_PORT = 10001
AZURITE_BLOB_PORT = 10000  # Azurite's usual blob port, beside the queue's (claim-check)
AZURITE_TABLE_PORT = 10002  # Azurite's usual table port (exactly-once, ordered)
# Azurite's well-known development account: public, documented, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
log = logging.getLogger("patterns")


@dataclass(frozen=True)
class Settings:
    connection_string: str  # "" when signing in with Entra ID (account_url)
    source: str  # "environment", the .env path, or "default" (local Azurite)
    account_url: str = ""  # https://<account>.queue.core.windows.net, with DefaultAzureCredential
    notes: tuple[str, ...] = ()  # what was found but not usable: said before falling back

    @property
    def where(self) -> str:
        return _where(self.source)


def _where(source: str) -> str:
    return "the environment" if source == "environment" else source


def azurite_connection_string(
    port: int | None = None,
    host: str = "127.0.0.1",
    blob_port: int = AZURITE_BLOB_PORT,
    table_port: int = AZURITE_TABLE_PORT,
) -> str:
    """The local Azurite's connection string: on `port`, by default AZURITE_PORT (read when
    called: the tests move it to a free port)."""
    port = AZURITE_PORT if port is None else port
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT};"
        f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT};"
        f"TableEndpoint=http://{host}:{table_port}/{AZURITE_ACCOUNT};"
    )


def places(
    environ: Mapping[str, str] | None = None,
    dotenv_file: str | Path | None = None,
    notes: list[str] | None = None,
) -> Iterator[tuple[str, Mapping[str, str]]]:
    """Where a setting is looked up, in order: ("environment", its variables), then (the .env
    path, its variables), `.env` searched from the current directory up and read only if the
    environment did not have the setting. Unreadable .env lines are added to `notes`."""
    yield "environment", os.environ if environ is None else environ
    path = str(dotenv_file) if dotenv_file is not None else find_dotenv(usecwd=True)
    if path and Path(path).is_file():
        values, unreadable = read_dotenv(path)
        if notes is not None:
            notes.extend(unreadable)
        yield path, values


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None
) -> Settings:
    """The real environment wins, then `.env` (searched from the current directory up),
    then the local Azurite on 127.0.0.1:10001. In each place a connection string wins over
    AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in). An empty variable or an unreadable `.env`
    line is skipped with a note, so that the learner hears why the next place was used."""
    notes: list[str] = []
    for source, values in places(environ, dotenv_file, notes):
        for name in (CONNECTION_STRING_VAR, ACCOUNT_URL_VAR):
            if name in values and not (values[name] or "").strip():
                notes.append(f"{name} is set but empty in {_where(source)}: ignored")
        if value := (values.get(CONNECTION_STRING_VAR) or "").strip():
            return Settings(value, source, notes=tuple(notes))
        if url := (values.get(ACCOUNT_URL_VAR) or "").strip():
            return Settings("", source, account_url=url, notes=tuple(notes))
    return Settings(azurite_connection_string(), "default", notes=tuple(notes))


def lookup(
    name: str, environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None
) -> tuple[str, str] | None:
    """(value, where it was found) of a setting other than the connection's (e.g.
    AZURE_QUEUE_MESSAGE_ENCODING), by the same rule: the environment wins, then `.env`."""
    for source, values in places(environ, dotenv_file):
        if value := (values.get(name) or "").strip():
            return value, _where(source)
    return None


def read_dotenv(path: str | Path) -> tuple[dict[str, str], list[str]]:
    """A .env file's variables, and a note for each line that does not parse. The notes name
    the line by number only: its text may hold a key."""
    try:
        content = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return {}, [f"{path} cannot be read ({error.strerror}): ignored"]
    values: dict[str, str] = {}
    notes: list[str] = []
    for binding in parse_stream(io.StringIO(content)):
        text = binding.original.string
        # A statement starts after the blank lines before it: count to its text.
        line = binding.original.line + text[: len(text) - len(text.lstrip())].count("\n")
        if binding.error:
            notes.append(f"{path} line {line} is unreadable (expected NAME=value): ignored")
        elif binding.key is not None:
            values[binding.key] = binding.value or ""
    return values, notes


# --- the client -------------------------------------------------------------------------------


def client(
    kind: type[Any], options: dict[str, Any], service: str = "queue", credential: Any = None
) -> Any:
    """A `kind` client (QueueServiceClient, BlobServiceClient, ...) from the settings, with
    `options` (support/retries.py). The queue client, made first, says where the settings came
    from when it is not the obvious place; a connection string that does not parse is refused
    without ever echoing it. Another service's client signs in the same way, at the same
    account: its endpoint in the connection string, or the account URL's `.queue.` made
    `.<service>.`."""
    config = load_settings()
    if service == "queue":
        for note in config.notes:
            log.warning(note)
        if config.source == "default":
            missing = "has no usable value" if config.notes else "is not set"
            log.info(
                f"{CONNECTION_STRING_VAR} {missing}: using the local Azurite at "
                f"127.0.0.1:{AZURITE_PORT}"
            )
    if config.account_url:
        url = config.account_url.replace(".queue.", f".{service}.", 1)
        if url == config.account_url and service != "queue":
            raise Fatal(
                f"{ACCOUNT_URL_VAR} has no '.queue.' to make the {service} service's address "
                "from (https://<account>.queue.core.windows.net)"
            )
        return kind(url, credential=credential or _credential(config.account_url), **options)
    _check_connection_string(config, service)
    try:
        return kind.from_connection_string(config.connection_string, **options)
    except ValueError as error:  # what the check missed; the SDK quotes no values
        raise Fatal(f"{_not_valid(config)}: {error}") from None


def _check_connection_string(config: Settings, service: str) -> None:
    problems = connection_string_problems(config.connection_string)
    if problems:
        raise Fatal(
            f"{_not_valid(config)}: {'; '.join(problems)}. It should look like "
            f"{CONNECTION_STRING_SHAPE} (Portal: your storage account > Access keys > "
            "Connection string)"
        )
    names = {part.split("=", 1)[0].strip().lower() for part in config.connection_string.split(";")}
    endpoint = f"{service.capitalize()}Endpoint"
    if "queueendpoint" in names and endpoint.lower() not in names:
        raise Fatal(
            f"{CONNECTION_STRING_VAR} names a QueueEndpoint but no {endpoint}: this lesson "
            f"needs the {service} service too (`make emulator` prints a connection string "
            "with both)"
        )


def _not_valid(config: Settings) -> str:
    return f"{CONNECTION_STRING_VAR} in {config.where} is not a valid connection string"


def _credential(account_url: str) -> Any:
    """Microsoft Entra ID (DefaultAzureCredential: `az login`, environment variables, managed
    identity...) instead of an account key."""
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:
        raise Fatal(
            f"{ACCOUNT_URL_VAR} is set (Entra ID sign-in) but azure-identity is not "
            f"installed: run `pip install -e '.[entra]'`, or set {CONNECTION_STRING_VAR} "
            "instead"
        ) from None
    problem = endpoint_problem(account_url)
    if problem or not re.match(r"^https://[^/?#]+/?$", account_url):
        raise Fatal(  # without the value: it may be a key pasted in the wrong place
            f"{ACCOUNT_URL_VAR} must look like https://<account>.queue.core.windows.net"
            + (f"; it {problem}" if problem and account_url.startswith("https://") else "")
        )
    logging.getLogger("azure.identity").setLevel(logging.ERROR)  # no multi-line token chatter
    log.info(f"signing in to {account_url} with Microsoft Entra ID")
    return DefaultAzureCredential()


# The parts a storage connection string may have (Azure Storage documents these names).
CONNECTION_STRING_PARTS = {
    name.lower(): name
    for name in (
        "DefaultEndpointsProtocol", "AccountName", "AccountKey", "EndpointSuffix",
        "SharedAccessSignature", "UseDevelopmentStorage", "DevelopmentStorageProxyUri",
        "QueueEndpoint", "QueueSecondaryEndpoint", "BlobEndpoint", "BlobSecondaryEndpoint",
        "FileEndpoint", "FileSecondaryEndpoint", "TableEndpoint", "TableSecondaryEndpoint",
    )
}  # fmt: skip
CONNECTION_STRING_SHAPE = (
    "DefaultEndpointsProtocol=https;AccountName=<name>;AccountKey=<key>;"
    "EndpointSuffix=core.windows.net"
)
BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# A storage account's name (Azurite's devstoreaccount1 is one too): anything else in
# AccountName is refused, since the name is printed as part of the endpoint's address.
ACCOUNT_NAME = re.compile(r"^[a-z0-9]{3,24}$")
HOST_NAME = re.compile(r"^(?:[a-z0-9-]{1,63}\.)*[a-z0-9-]{1,63}$|^[0-9a-f:.]+$")  # or an IP
ENDPOINT_PARTS = [
    name for name in CONNECTION_STRING_PARTS.values() if name.endswith(("Endpoint", "Uri"))
]
SECRET_PIECE = 20  # characters: no value but the key's own may hold this much of a key


def connection_string_problems(text: str) -> list[str]:
    """What is wrong with a connection string, in words that quote none of its values (a
    value may be a key, and so may a part that is not Name=value at all). [] if it is fine."""
    parts = [part for part in text.strip().split(";") if part.strip()]
    if len(parts) == 1 and len(parts[0].strip()) >= 20 and BASE64.match(parts[0].strip()):
        return ["it looks like an account key on its own, not a whole connection string"]
    problems: list[str] = []
    found: dict[str, str] = {}
    for number, part in enumerate(parts, start=1):
        of = f"part {number} of {len(parts)}"
        name, equals, value = part.partition("=")
        known = CONNECTION_STRING_PARTS.get(name.strip().lower())
        if not equals:
            problems.append(f"{of} is not Name=value")
        elif known is None:
            # Show a name only when it cannot be a secret: a short word, like a misspelling.
            shown = f" '{name}'" if re.fullmatch(r"[A-Za-z]{1,30}", name) else ""
            problems.append(f"{of}{shown} is not a connection setting")
        elif name != name.strip():
            problems.append(f"{of} has a space around '{known}'")
        elif not value.strip():
            problems.append(f"{known} is empty")
        elif value != value.strip() or re.search(r"\s", value):
            problems.append(f"the value of {known} contains a space or line break")
        if known and equals:
            found[known] = value.strip()
    if problems:
        return problems
    if found.get("UseDevelopmentStorage", "").lower() == "true":
        return []
    if "SharedAccessSignature" in found:
        missing = [] if {"QueueEndpoint", "AccountName"} & found.keys() else ["AccountName"]
    else:
        missing = [name for name in ("AccountName", "AccountKey") if name not in found]
    if missing:
        problems.append(f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing")
    if "AccountKey" in found and not _is_base64(found["AccountKey"]):
        problems.append("AccountKey is not a key (a key is base64 text, often ending in '=')")
    if found.get("DefaultEndpointsProtocol", "https").lower() not in ("http", "https"):
        problems.append("DefaultEndpointsProtocol must be https (or http)")
    # Every value below is printed one day (in an address, in an error): none may hold a key.
    if "AccountName" in found and not ACCOUNT_NAME.match(found["AccountName"]):
        problems.append(
            "AccountName is not a storage account name (3-24 lowercase letters and digits; "
            "the key goes in AccountKey)"
        )
    for name in ENDPOINT_PARTS:
        if name in found and (problem := endpoint_problem(found[name])):
            problems.append(f"{name} {problem}")
    if not HOST_NAME.match(found.get("EndpointSuffix", "core.windows.net").lower()):
        problems.append("EndpointSuffix is not a domain name (core.windows.net)")
    signature = re.findall(r"(?i)(?:^|&)sig=([^&]+)", found.get("SharedAccessSignature", ""))
    secrets = [found.get("AccountKey", ""), *signature]
    for name, value in found.items():
        if name not in ("AccountKey", "SharedAccessSignature") and any(
            holds_piece_of(value, secret) for secret in secrets
        ):
            problems.append(f"{name} holds part of the key: the key goes in AccountKey only")
    return problems


def endpoint_problem(url: str) -> str | None:
    """What is wrong with an endpoint's address ('has no valid host name'), without quoting
    it. The address gets printed, so a user name or password in it is refused (the key, or a
    SAS, signs the requests)."""
    if not re.match(r"(?i)^https?://", url):
        return "must start with https:// (or http://)"
    try:
        parts = urlsplit(url)
    except ValueError:  # 'http://[' (half an IPv6 address)
        return "has no valid host name"
    if "@" in parts.netloc:
        return "has a user name or password in it (user:password@): remove it"
    try:
        parts.port  # noqa: B018  (raises ValueError when it is not a number)
    except ValueError:
        return "has a port that is not a number from 0 to 65535"
    if not HOST_NAME.match(parts.hostname or ""):
        return "has no valid host name"
    return None


def holds_piece_of(text: str, secret: str, piece: int = SECRET_PIECE) -> bool:
    """Whether `text` holds `piece` characters in a row of `secret` (in any case: a host name
    is shown lowercased)."""
    text, secret = text.casefold(), secret.casefold()
    return any(secret[i : i + piece] in text for i in range(len(secret) - piece + 1))


def printable_url(url: str) -> str:
    """An address fit to print: scheme, host, port and path; no user name or password, no
    query (a SAS token), no trailing slash."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    try:
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path.rstrip('/')}"


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return True


def redact(connection_string: str) -> str:
    """Hide account keys and SAS signatures so a connection string is safe to print."""
    return re.sub(
        r"(?i)(AccountKey|SharedAccessSignature|sig)=([^;&]+)", r"\1=***", connection_string
    )
