"""The table client (patterns/helper/support/tables.py): made from the same settings as the
queue client, with the same short timeouts; a table created on first use; keys read from a
message checked before they reach a request."""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import pytest
from azure.core.credentials import AzureNamedKeyCredential

from patterns.emulator import free_port
from patterns.helper import BadMessage, Fatal, connect
from patterns.helper.support import settings, tables
from patterns.helper.support.settings import CONNECTION_STRING_VAR, azurite_connection_string


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """This process's clients made anew, from the environment the test sets."""
    monkeypatch.chdir(tmp_path)  # no .env to find
    monkeypatch.setattr(connect, "_service", None)
    monkeypatch.setattr(tables, "_service", None)


def test_a_table_is_created_on_first_use_and_reached_from_the_connection_string(
    fresh, monkeypatch, azurite
):
    monkeypatch.setenv(CONNECTION_STRING_VAR, azurite.connection_string)
    table = tables.table("helpertest")
    table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "n": 1})
    assert tables.table("helpertest").get_entity("p", "r")["n"] == 1  # created once, then found
    assert tables.endpoint() == azurite.table_endpoint


def test_a_dead_table_service_is_named_in_one_line_within_seconds(fresh, monkeypatch, azurite):
    dead = azurite_connection_string(azurite.port, table_port=free_port())
    monkeypatch.setenv(CONNECTION_STRING_VAR, dead)
    began = time.monotonic()
    with pytest.raises(Fatal, match=r"cannot reach the table service at http://127\.0\.0\.1:"):
        tables.table("helpertest")
    assert time.monotonic() - began < 10  # the SDK's default retry would take about a minute


def test_with_entra_sign_in_the_table_service_is_the_queue_services_neighbour(monkeypatch):
    url = "https://learner.queue.core.windows.net"
    signed_in = settings.Settings("", "environment", account_url=url)
    monkeypatch.setattr(settings, "load_settings", lambda: signed_in)
    credential = AzureNamedKeyCredential("learner", "a2V5")  # stands for the Entra credential
    monkeypatch.setattr(connect, "service", lambda: SimpleNamespace(credential=credential))
    monkeypatch.setattr(tables, "_service", None)
    assert tables.service().url == "https://learner.table.core.windows.net"


@pytest.mark.parametrize(
    "value, reason",
    [
        (None, "must be a non-empty string"),
        (7, "must be a non-empty string"),
        ("  ", "must be a non-empty string"),
        ("a/b", "holds '/'"),
        ("a\\b", "holds '\\\\'"),  # shown as its repr: two backslashes
        ("a#b", "holds '#'"),
        ("a?b", "holds '?'"),
        ("a\x00b", "holds '\\x00'"),
        ("a\x85b", "holds '\\x85'"),
        ("x" * 201, "is over 200 characters"),
    ],
)
def test_a_key_from_a_message_is_checked_before_any_request(value, reason):
    with pytest.raises(BadMessage, match="^" + re.escape(f"account {reason}")):
        tables.key({"account": value}, "account")


def test_a_good_key_passes_as_it_is():
    assert tables.key({"account": "acct-7 (Ünïcode ok)"}, "account") == "acct-7 (Ünïcode ok)"


@pytest.mark.parametrize("name", ["ab", "1payments", "pay-ments", "tables", "x" * 64])
def test_a_table_name_is_checked_before_any_request(name):
    with pytest.raises(Fatal, match="invalid table name"):
        tables.table_name(name)


def test_the_env_example_names_all_three_local_services():
    """Copied to .env, its Azurite line must serve every lesson: one without a TableEndpoint
    (or BlobEndpoint) beside its QueueEndpoint is refused by the lessons that need it."""
    from patterns.emulator import ROOT

    values, unreadable = settings.read_dotenv(ROOT / ".env.example")
    assert not unreadable
    assert values[CONNECTION_STRING_VAR] == azurite_connection_string()
