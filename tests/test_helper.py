"""The shared helper: its pure parts as units (settings, redaction, names, sizes, backoff);
the client it builds for Entra ID sign-in (no network); and bad configuration as a learner
meets it, through a producer and a consumer run as subprocesses."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from azure.storage.queue import QueueClient
from support import assert_refused, learner_env, run_script

from patterns.emulator import ROOT, Azurite, free_port
from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.codec import Unsendable, app_id, encode, parse_json
from patterns.helper.connect import queue_name, service
from patterns.helper.support import outage
from patterns.helper.support.idle import Backoff
from patterns.helper.support.limits import XML_FORBIDDEN
from patterns.helper.support.lines import describe, id_in, logger
from patterns.helper.support.outage import endpoint, unreachable_message
from patterns.helper.support.settings import (
    ACCOUNT_URL_VAR,
    AZURITE_ACCOUNT,
    CONNECTION_STRING_VAR,
    Settings,
    azurite_connection_string,
    connection_string_problems,
    load_settings,
    printable_url,
    redact,
)
from patterns.helper.support.workers import Workers
from patterns.runner import Proc

REAL = (
    "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0a2V5;"
    "EndpointSuffix=core.windows.net"
)


def test_environment_wins_over_dotenv(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text('AZURE_STORAGE_CONNECTION_STRING="from-dotenv"\n')
    settings = load_settings({"AZURE_STORAGE_CONNECTION_STRING": REAL}, dotenv)
    assert settings == Settings(REAL, "environment")


def test_dotenv_is_used_when_environment_is_silent(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f'AZURE_STORAGE_CONNECTION_STRING="{REAL}"\n')
    settings = load_settings({}, dotenv)
    assert settings.connection_string == REAL
    assert settings.source == str(dotenv)


def test_dotenv_is_found_from_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(f"AZURE_STORAGE_CONNECTION_STRING={REAL}\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings({}).connection_string == REAL


def test_default_is_local_azurite(tmp_path):
    empty = tmp_path / ".env"
    empty.write_text("# nothing here\n")
    settings = load_settings({"AZURE_STORAGE_CONNECTION_STRING": "  "}, empty)
    assert settings.source == "default"
    assert "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1" in settings.connection_string


@pytest.mark.parametrize(
    ("secret", "text"),
    [
        ("c2VjcmV0a2V5", REAL),
        (
            "abc%2Fdef",
            "QueueEndpoint=https://a.queue.core.windows.net;SharedAccessSignature=sv=2022&sig=abc%2Fdef",
        ),
    ],
)
def test_redact_hides_keys_and_signatures(secret, text):
    redacted = redact(text)
    assert secret not in redacted
    assert "***" in redacted
    assert "AccountName=acct" in redact(REAL)  # what is not secret stays readable


@pytest.mark.parametrize("name", ["abc", "tasks-queue", "a1-b2-c3", "x" * 63, "0-9"])
def test_valid_queue_names(name):
    assert queue_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["ab", "x" * 64, "Tasks", "tasks--queue", "-tasks", "tasks-", "tasks_queue", "täsks", ""],
)
def test_invalid_queue_names_are_refused_with_the_rule(name):
    with pytest.raises(Fatal, match="3-63 lowercase letters"):
        queue_name(name)


def test_a_consumed_queue_name_may_be_56_characters_not_57():
    assert queue_name("q" * 56, consumed=True)
    queue_name("q" * 57)  # any queue: fine
    with pytest.raises(Fatal, match="at most 56"):
        queue_name("q" * 57, consumed=True)


def test_encode_refuses_messages_over_64_kib():
    assert encode({"ok": "x" * 60_000})
    with pytest.raises(Fatal, match="at most 64 KiB"):
        encode({"too-big": "x" * 66_000})
    with pytest.raises(Fatal, match="at most 64 KiB"):  # XML escaping makes '&' five bytes
        encode({"escaped": "&" * 14_000})


class _Message:
    def __init__(self, content):
        self.content = content


@pytest.mark.parametrize(
    ("content", "reason"),
    [("", "empty"), ("   ", "empty"), ("{not json", "not JSON"), ("[1, 2]", "JSON object")],
)
def test_parse_json_rejects_what_cannot_be_processed(content, reason):
    with pytest.raises(BadMessage, match=reason):
        parse_json(_Message(content))


def test_backoff_doubles_to_its_ceiling_and_resets():
    class NoSleep:
        def __init__(self):
            self.waits = []

        def wait(self, seconds):
            self.waits.append(seconds)
            return False

    sleeper = NoSleep()
    backoff = Backoff(0.1, 1.0)
    for _ in range(6):
        backoff.wait(sleeper)
    backoff.reset()
    backoff.wait(sleeper)
    assert sleeper.waits == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.1])


def test_workers_run_n_at_once_and_free_waits_for_one_to_finish():
    started, release = threading.Semaphore(0), threading.Event()
    ran = []

    def task(n):
        started.release()
        release.wait(10)
        ran.append(n)

    with Workers(3) as workers:
        assert workers.free() == 3
        for n in range(3):
            workers.submit(task, n)
        for _ in range(3):
            assert started.acquire(timeout=5), "the 3 tasks did not all start at once"
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(workers.free()))
        waiter.start()
        waiter.join(0.3)
        assert waiter.is_alive(), "free() returned while every worker was busy"
        release.set()
        waiter.join(5)
        assert waited and waited[0] >= 1
    assert sorted(ran) == [0, 1, 2]  # leaving waited for the work in progress


def test_workers_1_works_in_the_callers_thread_and_sets_no_limit():
    with Workers(1) as workers:
        assert workers.free() is None  # the loop receives its whole --batch-size
        threads = []
        workers.submit(lambda: threads.append(threading.current_thread()))
    assert threads == [threading.main_thread()]


def test_a_workers_unexpected_error_reaches_the_loop():
    def broken():
        raise ValueError("a bug in the work")

    with pytest.raises(ValueError, match="a bug in the work"), Workers(2) as workers:
        workers.submit(broken)
        for _ in range(50):
            workers.free()  # raises the worker's error once it has happened
            time.sleep(0.05)


def test_the_keeper_renews_a_lease_taken_while_it_sleeps_with_nothing_to_do():
    """keep() wakes the keeper only when it would sleep past the new renewal (not for every
    message: that cost a zero-work consumer ~15% of its CPU), so a lease taken while it sleeps
    its idle minute must still wake it."""
    from types import SimpleNamespace

    from patterns.helper.support.lease import Keeper

    renewed: list[str] = []

    class FakeQueue:
        def update_message(self, id: str, receipt: str, visibility_timeout: int) -> object:
            renewed.append(id)
            return SimpleNamespace(pop_receipt=receipt + "'")

    keeper = Keeper(FakeQueue(), 1)  # type: ignore[arg-type]
    first, second = (SimpleNamespace(id=n, pop_receipt="r", content="") for n in ("a", "b"))
    keeper.keep(first)  # type: ignore[arg-type]
    keeper.drop(first)  # type: ignore[arg-type]  # settled before its renewal was due
    time.sleep(0.8)  # past its renewal time (0.5 s): the keeper now sleeps for a minute
    keeper.keep(second)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while "b" not in renewed and time.monotonic() < deadline:
        time.sleep(0.05)
    assert renewed and set(renewed) == {"b"}  # b renewed (about 0.5 s after); a, dropped, never


def test_the_keeper_lives_on_after_an_unforeseen_error_and_drop_never_hangs():
    """A renewal that raises something unforeseen (here a ValueError) is warned about and
    tried again; the keeper thread lives on, and drop() does not wait for it forever (it used
    to: the message stayed 'being renewed', and Ctrl+C could not stop the consumer)."""
    from types import SimpleNamespace

    from patterns.helper.support.lease import Keeper

    tries: list[str] = []

    class FlakyQueue:
        def update_message(self, id: str, receipt: str, visibility_timeout: int) -> object:
            tries.append(id)
            if len(tries) == 1:
                raise ValueError("pop_receipt must be present")
            return SimpleNamespace(pop_receipt=receipt + "'")

    keeper = Keeper(FlakyQueue(), 1)  # type: ignore[arg-type]
    message = SimpleNamespace(id="m", pop_receipt="r", content="")
    keeper.keep(message)  # type: ignore[arg-type]
    deadline = time.monotonic() + 5
    while len(tries) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(tries) >= 2, "the keeper died with its first error"
    dropping = threading.Thread(target=keeper.drop, args=(message,), daemon=True)
    dropping.start()
    dropping.join(3)
    assert not dropping.is_alive(), "drop() hangs"
    assert message.pop_receipt.startswith("r'")  # the renewal after the error took effect


# --- configuration: what is wrong, said without a value ----------------------------------

KEY = "Zm9yIHRlc3RzIG9ubHk6IHNoYXBlZCBsaWtlIGFuIGFjY291bnQga2V5LCBub3QgYSBrZXk="  # base64 text
ACCT = f"AccountName=acct;AccountKey={KEY}"
SAS = "QueueEndpoint=https://acct.queue.core.windows.net;SharedAccessSignature=sv=2022&sig=abc"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (KEY, "an account key on its own"),
        (f"AccountKey={KEY};nonsense", "part 2 of 2 is not Name=value"),
        (f"AccountName=acct;AccountKey ={KEY}", "part 2 of 2 has a space around 'AccountKey'"),
        (f"AcountName=acct;AccountKey={KEY}", "part 1 of 2 'AcountName' is not a connection"),
        (f"{KEY}x=1;AccountName=acct", "part 1 of 2 is not a connection setting"),
        ("AccountName=acct", "AccountKey is missing"),
        ("EndpointSuffix=core.windows.net", "AccountName and AccountKey are missing"),
        ("AccountName=acct;AccountKey=", "AccountKey is empty"),
        (f"AccountName=acct;AccountKey={KEY[:-1]}", "AccountKey is not a key"),
        (f"AccountName=acct;AccountKey={KEY[:40]}\n{KEY[40:]}", "contains a space or line"),
        (f"DefaultEndpointsProtocol=ftp;AccountName=a;AccountKey={KEY}", "must be https"),
        (f"QueueEndpoint=127.0.0.1:1/a;AccountName=a;AccountKey={KEY}", "must start with https"),
        # Values that get printed (in an address) may hold no key, nor a password.
        (f"AccountName={KEY};AccountKey={KEY}", "AccountName is not a storage account name"),
        (f"AccountName=Acct;AccountKey={KEY}", "AccountName is not a storage account name"),
        (f"AccountName=acct;AccountKey={KEY};EndpointSuffix={KEY}", "EndpointSuffix is not a"),
        (f"{ACCT};QueueEndpoint=https://u:pw@acct.example/", "QueueEndpoint has a user name or"),
        (f"{ACCT};BlobEndpoint=http://127.0.0.1:{KEY[:9]}/a", "BlobEndpoint has a port that is"),
        (f"{ACCT};TableEndpoint=https://{KEY[:9]}+x.example", "TableEndpoint has no valid host"),
        (f"{ACCT};QueueEndpoint=http://[{KEY[:9]}", "QueueEndpoint has no valid host name"),
        (f"{ACCT};QueueEndpoint=https://{KEY[:30]}.example", "QueueEndpoint holds part of the"),
        (f"{ACCT};QueueEndpoint=http://127.0.0.1:1/{KEY[8:40]}", "QueueEndpoint holds part of"),
        (f"{SAS[:-3]}{KEY};AccountName={KEY[:24].lower()}", "AccountName holds part of the key"),
    ],
)
def test_connection_string_problems_are_named_without_any_value(text, problem):
    problems = "; ".join(connection_string_problems(text))
    assert problem in problems
    assert KEY[:20] not in problems and "acct" not in problems


@pytest.mark.parametrize(
    "text",
    [
        REAL, REAL + ";", azurite_connection_string(), SAS, "UseDevelopmentStorage=true",
        f"{ACCT};QueueEndpoint=https://acct.queue.example.com:8443/;EndpointSuffix=example.com",
        f"{ACCT};QueueEndpoint=http://[::1]:10001/devstoreaccount1",
    ],
)  # fmt: skip
def test_good_connection_strings_have_no_problems(text):
    assert connection_string_problems(text) == []


def test_an_empty_variable_is_noted_before_falling_back(tmp_path):
    settings = load_settings({"AZURE_STORAGE_CONNECTION_STRING": ""}, tmp_path / "none")
    assert settings.source == "default"
    assert settings.notes == (
        "AZURE_STORAGE_CONNECTION_STRING is set but empty in the environment: ignored",
    )


def test_unreadable_dotenv_lines_are_noted_by_number_only(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        f'# my settings\n\nAZURE_STORAGE_CONNECTION_STRING: "{REAL}"\nOTHER=1\nbroken "line\n'
    )
    settings = load_settings({}, dotenv)
    assert settings.source == "default"
    assert settings.notes == (
        f"{dotenv} line 3 is unreadable (expected NAME=value): ignored",
        f"{dotenv} line 5 is unreadable (expected NAME=value): ignored",
    )
    assert "c2VjcmV0a2V5" not in "".join(settings.notes)


def test_dotenv_is_not_read_when_the_environment_has_the_setting(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("this line does not parse\n")
    settings = load_settings({"AZURE_STORAGE_CONNECTION_STRING": REAL}, dotenv)
    assert settings == Settings(REAL, "environment")


def test_an_empty_dotenv_variable_is_noted(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text('AZURE_STORAGE_CONNECTION_STRING=""\n')
    assert load_settings({}, dotenv).notes == (
        f"AZURE_STORAGE_CONNECTION_STRING is set but empty in {dotenv}: ignored",
    )


def test_printable_url_keeps_no_user_password_or_query():
    assert (
        printable_url("https://u:p@h.example:1/acct/?sv=1&sig=c2Vj") == "https://h.example:1/acct"
    )
    assert (
        printable_url("http://[::1]:10001/devstoreaccount1")
        == "http://[::1]:10001/devstoreaccount1"
    )


def test_the_endpoint_is_shown_without_sas_token_or_trailing_slash(monkeypatch):
    sas = "QueueEndpoint=http://127.0.0.1:9/devstoreaccount1;SharedAccessSignature=sv=1&sig=c2Vj"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", sas)
    monkeypatch.setattr(connect, "_service", None)
    assert endpoint() == "http://127.0.0.1:9/devstoreaccount1"
    message = unreachable_message(ConnectionError())
    assert "http://127.0.0.1:9/devstoreaccount1 - is the emulator running?" in message
    assert "sig" not in message


class _Stored:
    def __init__(self, content, id="svc-1"):
        self.content, self.id = content, id


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "id is missing"),
        ({"id": None}, "id is missing"),
        ({"id": 7}, "must be a non-empty string of printable characters, got 7"),
        ({"id": ""}, 'got ""'),
        ({"id": "  "}, 'got "  "'),
        ({"id": ["a"]}, 'got ["a"]'),
        ({"id": "a\nb"}, "printable"),
    ],
)
def test_app_id_is_a_non_empty_printable_string_or_a_bad_message(body, reason):
    """A missing or null id is not an id, and 7 is not "7"."""
    with pytest.raises(BadMessage, match=reason.replace("[", r"\[")):
        app_id(body)
    assert app_id({"id": "7"}) == "7"
    assert app_id({"order_id": "ORD-1"}, "order_id") == "ORD-1"


def test_messages_that_cannot_succeed_are_bad_messages():
    """A body nested 30,000 deep or a 5,000-digit number cannot be read, ever;
    a forward over 64 KiB is a bad message for a consumer and still a Fatal for a producer."""
    with pytest.raises(BadMessage, match="nested too deeply"):
        parse_json(_Message("[" * 30_000 + "]" * 30_000))
    with pytest.raises(BadMessage, match="unreadable JSON"):
        parse_json(_Message('{"id": ' + "1" * 5000 + "}"))
    with pytest.raises(Unsendable) as raised:
        encode({"too-big": "x" * 66_000})
    assert isinstance(raised.value, BadMessage) and isinstance(raised.value, Fatal)
    assert raised.value.exit_code == 2


def test_encode_never_writes_a_character_the_service_could_not_hand_out_again():
    """U+FFFF or half a surrogate pair in a forwarded body would make a
    message no receive can return; they are escaped, and the JSON means the same."""
    body = {"id": "x", "text": "\uffff \ud800 fine: ü"}
    text = encode(body)
    assert not XML_FORBIDDEN.search(text)
    assert json.loads(text) == body
    assert "ü" in encode({"text": "ü"})  # ordinary text stays readable


def test_describe_names_the_application_id_beside_the_service_id():
    """The service's message id, and the application id beside it when the body has one."""
    assert describe(_Stored('{"id": "task-1"}')) == "message svc-1 (id task-1)"
    assert describe(_Stored('{"order_id": "ORD-1"}')) == "message svc-1 (order_id ORD-1)"
    assert describe(_Stored('{"correlation_id": "c"}')) == "message svc-1 (correlation_id c)"
    for content in ("not JSON", '{"id": 7}', "[" * 30_000, "", None):
        assert describe(_Stored(content)) == "message svc-1"


def test_one_application_id_rule_for_poison_log_lines_traces_and_redrive():
    """codec.app_id decides what is poisoned; log lines, traces and redrive name a message by
    the same rule: not any string, nor an integer."""
    from patterns.tools.redrive import label

    for body in ({"id": 7}, {"id": ""}, {"id": "\x1b[2J"}, {"id": None}, {}):
        with pytest.raises(BadMessage):
            app_id(body)
        assert id_in(body) is None
        assert label(json.dumps(body), _Stored("")) == "message svc-1"  # type: ignore[arg-type]
    assert id_in({"id": 7, "order_id": "ORD-1"}) == ("order_id", "ORD-1")
    assert label(json.dumps({"correlation_id": "c-1"}), _Stored("")) == "c-1"  # type: ignore[arg-type]


def test_a_log_line_stays_one_line(capsys):
    logger("one-line-test").info("took a\nb")
    assert capsys.readouterr().out.count("\n") == 1


# --- Entra ID sign-in (client building only: no network, no Azure account) --------------

URL = "https://acct.queue.core.windows.net"
KEY_STRING = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0;EndpointSuffix=core.windows.net"  # noqa: E501


def test_account_url_setting_and_which_wins(tmp_path):
    url_only = load_settings({ACCOUNT_URL_VAR: URL}, tmp_path / "none")
    assert url_only == Settings("", "environment", account_url=URL)
    both = {ACCOUNT_URL_VAR: URL, CONNECTION_STRING_VAR: KEY_STRING}
    assert load_settings(both, tmp_path / "none").connection_string == KEY_STRING
    dotenv = tmp_path / ".env"
    dotenv.write_text(f'{CONNECTION_STRING_VAR}="{KEY_STRING}"\n')
    # the shell wins over .env, whichever variable each one sets
    assert load_settings({ACCOUNT_URL_VAR: URL}, dotenv).account_url == URL
    dotenv.write_text(f"{ACCOUNT_URL_VAR}={URL}\n")
    assert load_settings({}, dotenv) == Settings("", str(dotenv), account_url=URL)


@pytest.fixture
def entra_env(monkeypatch, tmp_path):
    """The process environment of a learner who set only AZURE_STORAGE_ACCOUNT_URL."""
    monkeypatch.chdir(tmp_path)  # no .env to find
    monkeypatch.delenv(CONNECTION_STRING_VAR, raising=False)
    monkeypatch.setenv(ACCOUNT_URL_VAR, URL)
    monkeypatch.setattr(connect, "_service", None)


def test_entra_client_with_the_real_azure_identity(entra_env):
    """The `test` extra installs the `entra` extra: this runs everywhere, never skipped."""
    from azure import identity

    client = service()
    assert isinstance(client.credential, identity.DefaultAzureCredential)
    assert client.account_name == "acct"
    assert client.url.startswith(URL)
    assert client.get_queue_client("tasks-queue").url == f"{URL}/tasks-queue"


def test_a_failed_entra_sign_in_is_one_line(entra_env):
    """azure-identity's error (no `az login`) has no error_code and many lines: explained in
    one line all the same, not an AttributeError's traceback."""
    from azure.core.exceptions import ClientAuthenticationError

    failed = ClientAuthenticationError(
        message="DefaultAzureCredential failed to retrieve a token.\nAttempted credentials: ..."
    )
    assert outage.explain(failed) == (
        "the queue service refused our credentials (DefaultAzureCredential failed to retrieve "
        "a token.); check your Entra ID sign-in (`az login`)",
        2,
    )


def test_entra_without_azure_identity_is_a_clear_fatal(entra_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # import fails as if not installed
    with pytest.raises(Fatal, match=r"azure-identity is not installed.*\.\[entra\]") as err:
        service()
    assert err.value.exit_code == 2


def test_entra_without_azure_identity_one_line_exit_2_from_a_script(tmp_path):
    env = {**learner_env(), ACCOUNT_URL_VAR: URL}
    code = (
        "import sys, runpy; sys.modules['azure.identity'] = None; "
        "sys.argv = ['status']; runpy.run_module('patterns.tools.status', run_name='__main__')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {ACCOUNT_URL_VAR} is set (Entra ID sign-in) but azure-identity is not "
        f"installed: run `pip install -e '.[entra]'`, or set {CONNECTION_STRING_VAR} "
        "instead"
    ]


def test_entra_url_must_be_https(entra_env, monkeypatch):
    monkeypatch.setenv(ACCOUNT_URL_VAR, "http://acct.queue.core.windows.net/x")
    fake = type(sys)("azure.identity")
    fake.DefaultAzureCredential = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure.identity", fake)
    with pytest.raises(Fatal, match="must look like https://"):
        service()


# --- bad configuration, as a learner meets it -------------------------------------------
# Every case against a producer and a consumer run as subprocesses. Each must end in one line
# on stderr and exit 2, with no traceback, and the key must never be shown. Also: a service
# that hangs while a consumer runs.

PRODUCER = "patterns.competing_consumers.producer"
CONSUMER = "patterns.competing_consumers.consumer"
SECRET = base64.b64encode(hashlib.sha512(b"a key that must never be shown").digest()).decode()
# A run of 20+ base64 characters with a digit or + or / in it: what a key (or a part of one)
# looks like. Plain words such as "DefaultEndpointsProtocol" are not keys, and neither is an
# endpoint's path (".../10001/devstoreaccount1"; a query, where a SAS token would be, is kept).
KEY_LIKE = re.compile(r"(?=[A-Za-z0-9+/]*[0-9+/])[A-Za-z0-9+/]{20,}")
ENDPOINT = re.compile(r"https?://[^\s?]+")


def key_pieces(output: str, secret: str = SECRET) -> list[str]:
    """Every 20 characters in a row of `secret` that `output` holds, in any case (a host name
    is printed lowercased)."""
    pieces = {secret[i : i + 20] for i in range(len(secret) - 19)}
    return sorted(piece for piece in pieces if piece.casefold() in output.casefold())


def key_like(output: str) -> list[str]:
    return key_pieces(output) + KEY_LIKE.findall(ENDPOINT.sub("", output))


def conn(port: str, key: str = SECRET, **parts: str) -> str:
    """A connection string to 127.0.0.1:`port`; `parts` add to it or replace its parts."""
    values = {
        "DefaultEndpointsProtocol": "http",
        "AccountName": AZURITE_ACCOUNT,
        "AccountKey": key,
        "QueueEndpoint": f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}",
        **parts,
    }
    return "".join(f"{name}={value};" for name, value in values.items())


QUOTED = quote(SECRET, safe="")  # the key as it would be written into a URL


# id: (AZURE_STORAGE_CONNECTION_STRING or None for unset, .env text or None,
#      what the one error line says, what stdout says before it)
# Placeholders: {key}, and the ports {azurite} (the session's), {dead} (nothing listens),
# {hung} (accepts, never answers), {web} (a web server answering 200 to everything).
CASES = {
    "malformed": ("AccountKey={key};nonsense", None, "part 2 of 2 is not Name=value", ""),
    "key-only": ("{key}", None, "looks like an account key on its own", ""),
    "space-before-equals": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey ={key};"
        "EndpointSuffix=core.windows.net",
        None,
        "part 3 of 4 has a space around 'AccountKey'",
        "",
    ),
    "wrong-key": (conn("{azurite}"), None, "refused our credentials", ""),
    "dead-port": (
        conn("{dead}"),
        None,
        "cannot reach the queue service at http://127.0.0.1:{dead}/devstoreaccount1 - is the "
        'emulator running? Start it with `make emulator ARGS="--port {dead}"` (the address comes '
        f"from {CONNECTION_STRING_VAR} in the environment)",
        "",
    ),
    "dead-port-in-dotenv": (  # the hint says where the address came from, not "set it"
        None,
        f"{CONNECTION_STRING_VAR}={conn('{dead}')}\n",
        f"(the address comes from {CONNECTION_STRING_VAR} in {{dotenv}})",
        "",
    ),
    "hung-port": (conn("{hung}"), None, "does not answer (nothing in 5 s)", ""),
    "not-a-queue-service": (conn("{web}"), None, "is not a queue service (HTTP 200", ""),
    "empty-variable": (
        "",
        None,
        "cannot reach the queue service at http://127.0.0.1:{default}/devstoreaccount1 - is the "
        f"emulator running? Start it with `make emulator` (or set {CONNECTION_STRING_VAR})",
        f"warning: {CONNECTION_STRING_VAR} is set but empty in the environment: ignored",
    ),
    "bad-dotenv": (
        None,
        '# my settings\n\nAZURE_STORAGE_CONNECTION_STRING: "' + conn("{azurite}") + '"\n',
        "cannot reach the queue service at http://127.0.0.1:{default}/devstoreaccount1",
        ".env line 3 is unreadable",
    ),
    # A key in the wrong place: refused before any request, in words that quote no value.
    "key-as-account-name": (
        "DefaultEndpointsProtocol=https;AccountName={key};AccountKey={key};"
        "EndpointSuffix=core.windows.net",
        None,
        "AccountName is not a storage account name",
        "",
    ),
    "key-as-password-in-the-endpoint": (
        conn("{dead}", QueueEndpoint="http://user:{quoted}@127.0.0.1:{dead}/devstoreaccount1"),
        None,
        "QueueEndpoint has a user name or password in it",
        "",
    ),
    "key-unquoted-after-user-in-the-endpoint": (
        conn("{dead}", QueueEndpoint="https://user:{key}@127.0.0.1:{dead}/devstoreaccount1"),
        None,
        "QueueEndpoint has a port that is not a number",
        "",
    ),
    "key-in-the-endpoint-path": (
        conn("{dead}", QueueEndpoint="http://127.0.0.1:{dead}/{key}"),
        None,
        "QueueEndpoint holds part of the key",
        "",
    ),
    "key-as-the-endpoint-host": (
        conn("{dead}", QueueEndpoint="https://{key}.queue.core.windows.net"),
        None,
        "QueueEndpoint has no valid host name",
        "",
    ),
    "key-as-endpoint-suffix": (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix={key}",
        None,
        "EndpointSuffix is not a domain name",
        "",
    ),
    "key-as-password-in-the-blob-endpoint": (
        conn("{azurite}", BlobEndpoint="http://{quoted}@127.0.0.1:{dead}/devstoreaccount1"),
        None,
        "BlobEndpoint has a user name or password in it",
        "",
    ),
    "sas-signature-as-account-name": (
        "AccountName={key};SharedAccessSignature=sv=2022-11-02&ss=q&srt=sco&sp=rl&sig={quoted}",
        None,
        "AccountName is not a storage account name",
        "",
    ),
    "key-as-the-entra-account-url": (
        None,
        f"{ACCOUNT_URL_VAR}={{key}}\n",
        f"{ACCOUNT_URL_VAR} must look like https://<account>.queue.core.windows.net",
        "",
    ),
    "key-as-password-in-the-entra-account-url": (
        None,
        f"{ACCOUNT_URL_VAR}=https://user:{{quoted}}@acct.queue.core.windows.net\n",
        "queue.core.windows.net; it has a user name or password in it",
        "",
    ),
}
FALLS_BACK = {"empty-variable", "bad-dotenv"}  # to the local emulator on the default port
SLOW = {"hung-port"}  # waits out the read timeout


@pytest.fixture(scope="module")
def hung_port() -> Iterator[int]:
    """A port that accepts connections and never answers (the kernel accepts for us)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def default_port() -> Iterator[int]:
    """A free port, bound but not listening (a connection to it is refused at once), to stand
    in for the local emulator's default port: a fallback to the default must not reach an
    emulator someone runs on 10001 (nor be skipped because one does)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# `python -c MOVED PORT MODULE ARGS...`: the script, with the local emulator's default port
# moved to PORT (settings.AZURITE_PORT; everything else as in `python -m MODULE ARGS...`).
MOVED = """
import runpy, sys
from patterns.helper.support import settings
settings.AZURITE_PORT = int(sys.argv.pop(1))
sys.argv[0] = sys.argv.pop(1)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_both(
    env: dict[str, str], cwd: Path, queue: str, default_port: int | None = None
) -> dict[str, tuple[subprocess.CompletedProcess[str], float]]:
    """Run the producer and the consumer at the same time: each one's result, and how long
    it took at most. `default_port`: the local emulator's default port moved there."""
    began = time.monotonic()
    procs: dict[str, subprocess.Popen[str]] = {}
    results = {}
    try:
        for module in (PRODUCER, CONSUMER):
            start = ["-m", module]
            if default_port is not None:
                start = ["-c", MOVED, str(default_port), module]
            procs[module] = subprocess.Popen(
                [sys.executable, "-u", *start, "--queue", queue], cwd=cwd, env=env,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
        for module, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
            results[module] = (result, time.monotonic() - began)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


@pytest.mark.parametrize(
    "case",
    [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name for name in CASES],
)
def test_bad_configuration_is_one_line_exit_2_and_never_shows_the_key(
    case, request, azurite, hung_port, web_port, qname, tmp_path
):
    moved = request.getfixturevalue("default_port") if case in FALLS_BACK else None
    value, dotenv, shown, said = CASES[case]
    fill = {"key": SECRET, "quoted": QUOTED, "azurite": azurite.port, "dead": free_port()}
    fill |= {"hung": hung_port, "web": web_port, "default": moved, "dotenv": tmp_path / ".env"}
    env = learner_env()
    if value is not None:
        env[CONNECTION_STRING_VAR] = value.format(**fill)
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv.format(**fill))
    shown = shown.format(**fill)

    for module, (result, took) in run_both(env, tmp_path, qname, moved).items():
        assert_refused(result, shown)
        assert said in result.stdout, result.stdout
        output = result.stdout + result.stderr
        assert key_like(output) == [], output
        assert took < 10, f"{module} took {took:.1f} s to say what is wrong"


@pytest.mark.slow
def test_a_consumer_warns_when_the_service_hangs_and_carries_on_after(tmp_path, qname):
    """Azurite paused (SIGSTOP) takes requests but answers none: the running consumer warns,
    a script started meanwhile says so within 10 s, and after SIGCONT all is well again."""
    emulator = Azurite(log_path=tmp_path / "azurite.log")  # our own: the session's must run on
    env = {**learner_env(), CONNECTION_STRING_VAR: emulator.connection_string}
    with emulator:
        assert emulator.process is not None
        consumer = Proc(CONSUMER, "--queue", qname, "--work-seconds", "0", env=env)
        paused = False
        try:
            consumer.wait_for("waiting for tasks")
            os.kill(emulator.process.pid, signal.SIGSTOP)
            paused, began = True, time.monotonic()
            late = run_script(PRODUCER, "--queue", qname, "--count", "1", env=env)
            started_late = time.monotonic() - began
            assert_refused(late, "does not answer (nothing in 5 s)")
            assert started_late < 10, f"the producer took {started_late:.1f} s to say so"

            consumer.wait_for("warning: the queue service at .* does not answer", timeout=20)
            warned = time.monotonic() - began
            assert warned < 20, f"the consumer warned after {warned:.1f} s"  # ~11 s; margin

            os.kill(emulator.process.pid, signal.SIGCONT)
            paused = False
            consumer.wait_for("the queue service answers again", timeout=15)
            QueueClient.from_connection_string(env[CONNECTION_STRING_VAR], qname).send_message(
                json.dumps({"id": "after-the-hang"})
            )
            consumer.wait_for("done after-the-hang")
            assert consumer.stop() == 0
            assert "Traceback" not in consumer.text
        finally:
            if paused:
                os.kill(emulator.process.pid, signal.SIGCONT)
            consumer.kill()


def test_a_receive_whose_answer_was_lost_excuses_one_delivery_of_what_was_queued_then():
    """The service took a receive, then went away before answering: the messages it took come
    back a delivery higher, unseen by us. With --max-attempts 1 they must not be poisoned for
    it. A refused connection counts too: the client retries once, so an answer lost on the first
    try surfaces as the refused retry (seen under load: an order poisoned after a restart)."""
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from azure.core.exceptions import ServiceRequestError, ServiceResponseError

    now = datetime.now(timezone.utc)
    queued = SimpleNamespace(id="m", inserted_on=now - timedelta(seconds=5))
    later = SimpleNamespace(id="n", inserted_on=now + timedelta(minutes=5))
    refused = outage.Excused()
    assert refused.failed_receive(ServiceRequestError("connection refused"))
    assert refused.count(queued) == 1  # type: ignore[arg-type]  # a lost try may precede it
    lost = outage.Excused()
    assert lost.failed_receive(ServiceResponseError("connection aborted mid-answer"))
    assert lost.count(queued) == 1  # type: ignore[arg-type]  # it may have been taken then
    assert lost.count(later) == 0  # type: ignore[arg-type]  # sent since: it was not
    lost.add(queued)  # type: ignore[arg-type]  # and a delivery an outage ended, as before
    assert lost.count(queued) == 2  # type: ignore[arg-type]
    outage.queue_service.over()  # the warning of the outage is not this test's concern
    assert not lost.failed_receive(ValueError("not an outage"))


def test_work_that_forgets_to_delete_its_message_is_said_and_released(monkeypatch, capsys):
    """A `with inbox.settle(m)` block that ends without inbox.delete(m) is a bug in the script:
    it must not pass silently (nor delete a message its work never said it finished)."""
    from types import SimpleNamespace

    from patterns.helper import consume

    class FakeQueue:
        queue_name = "forgot-q"

        def __init__(self) -> None:
            self.updates: list[int] = []
            self.deleted: list[str] = []

        def update_message(self, id: str, receipt: str, visibility_timeout: int, **_: object):
            self.updates.append(visibility_timeout)

        def delete_message(self, id: str, receipt: str) -> None:
            self.deleted.append(id)

    queue = FakeQueue()
    inbox = consume.Inbox(queue)  # type: ignore[arg-type]  # given opened: nothing created
    logger("test")
    message = SimpleNamespace(id="m", pop_receipt="r", dequeue_count=1, content='{"id": "f-1"}')
    inbox.lease.hold([message])  # type: ignore[list-item]
    with inbox.settle(message):  # type: ignore[arg-type]
        pass  # the work, without inbox.delete(message)
    said = capsys.readouterr().out
    assert "warning: the work on message m (id f-1) ended without deleting it" in said
    assert "released message m (id f-1) back to 'forgot-q'" in said
    assert queue.updates == [0] and queue.deleted == []  # visible again at once, not deleted
    with inbox.settle(message):  # type: ignore[arg-type]
        inbox.delete(message)  # type: ignore[arg-type]
    assert queue.deleted == ["m"] and queue.updates == [0]  # deleted once, nothing more


# --- the core and its support: small, one concern a file, queue calls in the scripts ----------

HELPER = ROOT / "patterns" / "helper"
CONSUMING = sorted(
    path for path in (ROOT / "patterns").rglob("*.py") if ".settle(" in path.read_text()
)


def test_the_core_is_400_lines_and_each_support_file_names_its_concern():
    core = sorted(HELPER.glob("*.py"))
    assert sum(len(path.read_text().splitlines()) for path in core) <= 400
    for path in (HELPER / "support").glob("*.py"):
        first = path.read_text().splitlines()[0]
        assert re.match(r'^"""[A-Z][^.]{8,}', first), f"{path.name}: {first}"


def test_the_core_never_imports_the_cli():
    code = "import sys, patterns.helper.consume; print('patterns.helper.cli' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.parametrize("script", CONSUMING, ids=lambda path: f"{path.parent.name}/{path.stem}")
def test_every_consuming_script_deletes_by_name(script):
    """The queue calls in plain sight: each message the script settles, it deletes by name."""
    assert "inbox" in script.read_text()
    assert re.search(r"\.delete\(message\)", script.read_text()), script


def test_a_failed_attempt_survives_an_outage_while_its_backoff_is_set(monkeypatch, capsys):
    """update_message fails (service away): the consumer goes on, the message comes back after
    its visibility timeout as before; when it works, the wait doubles per attempt, capped."""
    from types import SimpleNamespace

    from azure.core.exceptions import ServiceRequestError

    from patterns.helper import consume

    class FakeQueue:
        def __init__(self) -> None:
            self.updates: list[int] = []
            self.away = False

        def update_message(self, id: str, receipt: str, visibility_timeout: int) -> None:
            if self.away:
                raise ServiceRequestError("connection refused")
            self.updates.append(visibility_timeout)

    queue = FakeQueue()
    monkeypatch.setattr(connect, "open_queue", lambda name, log=None: queue)
    inbox = consume.Inbox("backoff-q", retry_backoff=1, retry_backoff_max=5)
    said = [
        inbox.retry_later(SimpleNamespace(id="m", pop_receipt="r", dequeue_count=n, content=""))
        for n in (1, 2, 3, 4)
    ]
    assert queue.updates == [1, 2, 4, 5]
    assert said[0] == "next attempt in 1 s" and said[3] == "next attempt in 5 s"
    queue.away = True
    message = SimpleNamespace(id="m", pop_receipt="r", dequeue_count=1, content="")
    assert inbox.retry_later(message) == (
        "next attempt after its visibility timeout (service unreachable)"
    )
    outage.queue_service.over()  # the warning of the outage is not this test's concern


# --- the dequeue count is checked before the work, by every consumer --------------------------

EVERY_CONSUMER = {  # name: (module, its flags, the queue it reads); {q} is the test's queue
    "competing": ("patterns.competing_consumers.consumer", "--queue {q}", "{q}"),
    "priority": ("patterns.priority.consumer", "--prefix {q} --levels high", "{q}-high-priority"),
    "fanout": ("patterns.fanout.consumer", "--prefix {q}- --subscriber a", "{q}-a"),
    "validate": (
        "patterns.pipes_and_filters.validate",
        "--input {q} --output {q}-out --rejected {q}-rej",
        "{q}",
    ),
    "enrich": ("patterns.pipes_and_filters.enrich", "--input {q} --output {q}-out", "{q}"),
    "finalize": ("patterns.pipes_and_filters.finalize", "--input {q}", "{q}"),
    "replier": ("patterns.request_reply.replier", "--queue {q}", "{q}"),
    "claim-check": ("patterns.claim_check.consumer", "--queue {q}", "{q}"),
}


@pytest.mark.parametrize("consumer", EVERY_CONSUMER)
def test_every_consumer_poisons_a_message_delivered_too_often_before_working_on_it(
    consumer, start, service, qname
):
    """A message whose consumers died on it (kill -9, out of memory) never reached settle()'s
    count of failures; its dequeue count did go up. Every consumer checks it first."""
    module, flags, queue = EVERY_CONSUMER[consumer]
    queue = queue.format(q=qname)
    client = service.get_queue_client(queue)
    client.create_queue()
    body = {"id": "used-up", "order_id": "used-up", "correlation_id": "used-up"}
    client.send_message(json.dumps({**body, "reply_to": f"{qname}-replies"}))
    for _ in range(3):  # three deliveries that ended without a word, as a killed consumer's
        (taken,) = client.receive_messages(max_messages=1, visibility_timeout=60)
        client.update_message(taken, visibility_timeout=0)

    proc = start(module, *flags.format(q=qname).split(), "--max-attempts", "2", "--idle-max", "0.2")
    proc.wait_for(
        rf"moved message \S+ \(\w+ used-up\) to '{queue}-poison': delivered 4 times, more than "
        r"--max-attempts 2; its consumer may have died on it each time$"
    )
    assert proc.stop() == 0
    assert not proc.matches(r"took|done|forwarded|replied|attempt \d+ of"), proc.text
    (record,) = service.get_queue_client(f"{queue}-poison").peek_messages()
    assert json.loads(record.content)["reason"].startswith("delivered 4 times")
    assert client.get_queue_properties().approximate_message_count == 0


def test_redrive_moves_back_a_record_it_has_received_many_times(env, service, qname):
    """redrive receives from the poison queue but works on nothing: a record whose dequeue
    count grew (runs that left it, each a delivery) is moved back, not poisoned again."""
    poison = service.get_queue_client(f"{qname}-poison")
    poison.create_queue()
    poison.send_message(json.dumps({"id": "often-seen"}))
    for _ in range(6):
        (taken,) = poison.receive_messages(max_messages=1, visibility_timeout=60)
        poison.update_message(taken, visibility_timeout=0)

    result = run_script("patterns.tools.redrive", qname, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    bodies = [m.content for m in service.get_queue_client(qname).peek_messages()]
    assert bodies == ['{"id": "often-seen"}'], result.stdout
    assert "poison-poison" not in result.stdout
