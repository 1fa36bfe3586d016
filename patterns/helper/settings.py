"""Where the connection comes from: the environment, then `.env`, then the local Azurite.

Also what is wrong with a connection string, in words that quote none of its values, and
redaction for anything that must be printed; and how message text is encoded (plain text, or
Base64 for Azure Functions). No SDK call is made here.
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import find_dotenv
from dotenv.parser import parse_stream

from patterns.helper import Fatal

CONNECTION_STRING_VAR = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_URL_VAR = "AZURE_STORAGE_ACCOUNT_URL"  # Entra ID sign-in (optional extra `entra`)
MESSAGE_ENCODING_VAR = "AZURE_QUEUE_MESSAGE_ENCODING"  # text (default) or base64 (Functions)
MESSAGE_ENCODINGS = ("text", "base64")
AZURITE_PORT = 10001
AZURITE_BLOB_PORT = 10000  # Azurite's usual blob port, beside the queue's (claim-check)
# Azurite's well-known development account: public, documented, not a secret.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


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
    port: int | None = None, host: str = "127.0.0.1", blob_port: int = AZURITE_BLOB_PORT
) -> str:
    """The local Azurite's connection string: on `port`, by default AZURITE_PORT (read when
    called: the tests move it to a free port)."""
    port = AZURITE_PORT if port is None else port
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"QueueEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT};"
        f"BlobEndpoint=http://{host}:{blob_port}/{AZURITE_ACCOUNT};"
    )


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None
) -> Settings:
    """The real environment wins, then `.env` (searched from the current directory up),
    then the local Azurite on 127.0.0.1:10001. In each place a connection string wins over
    AZURE_STORAGE_ACCOUNT_URL (Entra ID sign-in). An empty variable or an unreadable `.env`
    line is skipped with a note, so that the learner hears why the next place was used."""
    notes: list[str] = []

    def places() -> Iterator[tuple[str, Mapping[str, str]]]:
        yield "environment", os.environ if environ is None else environ
        path = str(dotenv_file) if dotenv_file is not None else find_dotenv(usecwd=True)
        if path and Path(path).is_file():  # read only when the environment had nothing
            values, unreadable = read_dotenv(path)
            notes.extend(unreadable)
            yield path, values

    for source, values in places():
        for name in (CONNECTION_STRING_VAR, ACCOUNT_URL_VAR):
            if name in values and not (values[name] or "").strip():
                notes.append(f"{name} is set but empty in {_where(source)}: ignored")
        if value := (values.get(CONNECTION_STRING_VAR) or "").strip():
            return Settings(value, source, notes=tuple(notes))
        if url := (values.get(ACCOUNT_URL_VAR) or "").strip():
            return Settings("", source, account_url=url, notes=tuple(notes))
    return Settings(azurite_connection_string(), "default", notes=tuple(notes))


def message_encoding(
    environ: Mapping[str, str] | None = None, dotenv_file: str | Path | None = None
) -> str:
    """How message text is written and read: "text" (the default: JSON as it is) or "base64"
    (what an Azure Functions queue trigger expects by default). The environment wins, then
    `.env`; any other value is a Fatal, said in one line."""
    places: list[tuple[str, Mapping[str, str]]] = [
        ("environment", os.environ if environ is None else environ)
    ]
    path = str(dotenv_file) if dotenv_file is not None else find_dotenv(usecwd=True)
    if path and Path(path).is_file():
        places.append((path, read_dotenv(path)[0]))
    for source, values in places:
        if value := (values.get(MESSAGE_ENCODING_VAR) or "").strip():
            if value.lower() in MESSAGE_ENCODINGS:
                return value.lower()
            raise Fatal(
                f"{MESSAGE_ENCODING_VAR} in {_where(source)} is {value[:30]!r}: use text (the "
                "default) or base64 (what an Azure Functions queue trigger expects)"
            )
    return "text"


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
