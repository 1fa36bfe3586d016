"""Unit tests of the helper's pure parts: settings, redaction, names, sizes, backoff."""

from __future__ import annotations

import json

import pytest

from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.cli import logger
from patterns.helper.codec import XML_FORBIDDEN, Unsendable, app_id, describe, encode, parse_json
from patterns.helper.connect import endpoint, queue_name, unreachable_message
from patterns.helper.consume import Backoff
from patterns.helper.settings import (
    Settings,
    azurite_connection_string,
    connection_string_problems,
    load_settings,
    redact,
)

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


# --- configuration: what is wrong, said without a value ----------------------------------

KEY = "Zm9yIHRlc3RzIG9ubHk6IHNoYXBlZCBsaWtlIGFuIGFjY291bnQga2V5LCBub3QgYSBrZXk="  # base64 text
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
    ],
)
def test_connection_string_problems_are_named_without_any_value(text, problem):
    problems = "; ".join(connection_string_problems(text))
    assert problem in problems
    assert KEY[:20] not in problems and "acct" not in problems


@pytest.mark.parametrize(
    "text",
    [REAL, REAL + ";", azurite_connection_string(), SAS, "UseDevelopmentStorage=true"],
)
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
    """Issue 10 item 3: a missing or null id is not an id, and 7 is not "7"."""
    with pytest.raises(BadMessage, match=reason.replace("[", r"\[")):
        app_id(body)
    assert app_id({"id": "7"}) == "7"
    assert app_id({"order_id": "ORD-1"}, "order_id") == "ORD-1"


def test_messages_that_cannot_succeed_are_bad_messages():
    """Issue 10 item 5: a body nested 30,000 deep or a 5,000-digit number cannot be read, ever;
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
    """Issue 10 item 12: U+FFFF or half a surrogate pair in a forwarded body would make a
    message no receive can return; they are escaped, and the JSON means the same."""
    body = {"id": "x", "text": "\uffff \ud800 fine: ü"}
    text = encode(body)
    assert not XML_FORBIDDEN.search(text)
    assert json.loads(text) == body
    assert "ü" in encode({"text": "ü"})  # ordinary text stays readable


def test_describe_names_the_application_id_beside_the_service_id():
    """Issue 10 item 16."""
    assert describe(_Stored('{"id": "task-1"}')) == "message svc-1 (id task-1)"
    assert describe(_Stored('{"order_id": "ORD-1"}')) == "message svc-1 (order_id ORD-1)"
    assert describe(_Stored('{"correlation_id": "c"}')) == "message svc-1 (correlation_id c)"
    for content in ("not JSON", '{"id": 7}', "[" * 30_000, "", None):
        assert describe(_Stored(content)) == "message svc-1"


def test_a_log_line_stays_one_line(capsys):
    logger("one-line-test").info("took a\nb")
    assert capsys.readouterr().out.count("\n") == 1
