"""The fault battery, trust: a message (or a poison record, or a trace file) is input from
anyone, and reaches nothing outside its lesson.

Forged claim checks against the real consumer, forged poison records against peek and
redrive, broken trace files against journey. What was requested of the blob service is read
from its access log (Azurite's `-blob` log: one line per request, HEAD vs GET), so "not
touched" and "not downloaded" are seen, not assumed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import uuid
from typing import Any
from urllib.parse import unquote

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient
from support import message_count, peek_bodies, run_script, wait_until

from patterns.emulator import Azurite
from patterns.helper.support.poison import CONTAINER as POISON_RECORDS_CONTAINER
from patterns.tools import journey
from patterns.tools.blobs import PAYLOADS_CONTAINER

pytestmark = pytest.mark.battery

CONSUMER = "patterns.claim_check.consumer"
PEEK = "patterns.tools.peek"
REDRIVE = "patterns.tools.redrive"
JOURNEY = "patterns.tools.journey"
OUTSIDE = "it refers to a blob outside"
UNSAFE = "its blob name "
SHAPE = "needs a container and a blob name, both strings"
SIZE = "size must be a whole number of bytes"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put(blobs: BlobServiceClient, container: str, name: str, data: bytes) -> None:
    with contextlib.suppress(ResourceExistsError):
        blobs.create_container(container)
    blobs.get_blob_client(container, name).upload_blob(data, overwrite=True)


def read(blobs: BlobServiceClient, container: str, name: str) -> bytes:
    return blobs.get_blob_client(container, name).download_blob().readall()


def log_length(azurite: Azurite) -> int:
    assert azurite.blob_log_path is not None
    return len(azurite.blob_log_path.read_text(errors="replace").splitlines())


def blob_requests(azurite: Azurite, since: int) -> list[tuple[str, str]]:
    """(method, container/blob) of every blob request logged after line `since`."""
    assert azurite.blob_log_path is not None
    lines = azurite.blob_log_path.read_text(errors="replace").splitlines()[since:]
    found = (re.search(r'"(\w+) /devstoreaccount1/([^ ?]*)', line) for line in lines)
    return [(m.group(1), unquote(m.group(2))) for m in found if m]


def taken(service: QueueServiceClient, name: str) -> list[str]:
    """The bodies of every message in a queue (a peek shows 32 at most), received and hidden."""
    queue, bodies = service.get_queue_client(name), []
    while batch := list(queue.receive_messages(max_messages=32, visibility_timeout=300)):
        bodies += [message.content for message in batch]
    return bodies


# --- forged claim checks ---------------------------------------------------------------------


def test_forged_claim_checks_touch_no_blob_outside_the_lesson_and_download_no_oversize_one(
    azurite, start, service, blobs, qname, figures
):
    victim = f"victim-{uuid.uuid4().hex[:8]}"  # someone else's container in the same account
    other = f"{qname}x"  # another queue's blobs, in the payload container; starts like ours
    secret, fine, big = b"the quarterly figures", b"fine", os.urandom(1_000_000)
    put(blobs, victim, "_SUCCESS", b"")
    put(blobs, victim, "secret.txt", secret)
    put(blobs, PAYLOADS_CONTAINER, f"{other}/x", secret)
    put(blobs, PAYLOADS_CONTAINER, f"{qname}/ok", fine)
    put(blobs, PAYLOADS_CONTAINER, f"{qname}/big", big)
    ok = {"container": PAYLOADS_CONTAINER, "blob": f"{qname}/ok", "size": 4, "sha256": sha(fine)}
    marker = {"container": victim, "blob": "_SUCCESS", "size": 0, "sha256": sha(b"")}
    stolen = {"container": victim, "size": len(secret), "sha256": sha(secret)}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("the issue's: another container's empty marker", marker, OUTSIDE),
        ("another container's secret, size and sha256 right", {**stolen, "blob": "secret.txt"},
         OUTSIDE),
        ("another container's blob that does not exist", {**stolen, "blob": "nothing.txt"},
         OUTSIDE),
        ("another queue's blob", {**ok, "blob": f"{other}/x"}, OUTSIDE),
        ("another queue's blob that does not exist", {**ok, "blob": f"{other}/none"}, OUTSIDE),
        ("a name without the queue's prefix", {**ok, "blob": "ok"}, OUTSIDE),
        ("an empty container name", {**ok, "container": ""}, OUTSIDE),
        ("a container name with ../", {**ok, "container": f"{PAYLOADS_CONTAINER}/../{victim}"},
         OUTSIDE),
        ("the $root container", {**ok, "container": "$root"}, OUTSIDE),
        ("the container in capitals", {**ok, "container": PAYLOADS_CONTAINER.upper()}, OUTSIDE),
        ("../ out of the container", {**ok, "blob": f"{qname}/../../{victim}/secret.txt"},
         UNSAFE),
        ("../ into another queue's blobs", {**ok, "blob": f"{qname}/../{other}/x"}, UNSAFE),
        ("a ./ part", {**ok, "blob": f"{qname}/./ok"}, UNSAFE),
        ("an empty part", {**ok, "blob": f"{qname}//ok"}, UNSAFE),
        ("a trailing slash", {**ok, "blob": f"{qname}/"}, UNSAFE),
        ("a leading slash", {**ok, "blob": f"/{qname}/ok"}, UNSAFE),
        ("backslashes", {**ok, "blob": f"{qname}\\..\\..\\{victim}\\secret.txt"}, UNSAFE),
        ("a line break", {**ok, "blob": f"{qname}/ok\n"}, UNSAFE),
        ("an escape sequence", {**ok, "blob": f"{qname}/\x1b[2J"}, UNSAFE),
        ("a NUL", {**ok, "blob": f"{qname}/ok\x00"}, UNSAFE),
        ("1,100 characters", {**ok, "blob": f"{qname}/" + "a" * 1100}, UNSAFE),
        ("an empty blob name", {**ok, "blob": ""}, UNSAFE),
        ("no container", {k: v for k, v in ok.items() if k != "container"}, SHAPE),
        ("a container that is a list", {**ok, "container": [PAYLOADS_CONTAINER]}, SHAPE),
        ("a blob name that is a number", {**ok, "blob": 7}, SHAPE),
        ("a blob name that is null", {**ok, "blob": None}, SHAPE),
        ("a blob name that is an object", {**ok, "blob": {"name": f"{qname}/ok"}}, SHAPE),
        ("size as a string", {**ok, "size": "4"}, f'{SIZE}, got "4"'),
        ("size true", {**ok, "size": True}, SIZE),
        ("size 4.0", {**ok, "size": 4.0}, SIZE),
        ("size -1", {**ok, "size": -1}, SIZE),
        ("size null", {**ok, "size": None}, SIZE),
        ("a 1 MB blob declared 10 bytes", {**ok, "blob": f"{qname}/big", "size": 10,
         "sha256": sha(big[:10])}, "its payload blob is 1000000 bytes, the message says 10"),
        ("a 1 MB blob over --max-bytes", {**ok, "blob": f"{qname}/big", "size": len(big),
         "sha256": sha(big)}, "the message says 1000000 bytes, over --max-bytes 500000"),
        ("10**30 bytes declared", {**ok, "size": 10**30}, "over --max-bytes 500000"),
        ("percent-encoded ../ (a name of its own)",
         {**ok, "blob": f"{qname}/%2e%2e/%2e%2e/{victim}/secret.txt"}, "is missing"),
        ("dot leaders that look like ..", {**ok, "blob": f"{qname}/\u2024\u2024/x"}, "is missing"),
    ]  # fmt: skip
    queue = service.get_queue_client(qname)
    queue.create_queue()
    for n, (_, reference, _) in enumerate(cases):
        queue.send_message(json.dumps({"id": f"forged-{n:02d}", **reference}))
    queue.send_message(json.dumps({"id": "genuine", **ok}))  # the lesson still works
    since = log_length(azurite)

    consumer = start(CONSUMER, "--queue", qname, "--max-bytes", "500000",
                     "--work-seconds", "0", "--idle-max", "0.2")  # fmt: skip
    consumer.wait_for(r"\] done genuine")
    wait_until(lambda: message_count(service, f"{qname}-poison") == len(cases), 20, "all poisoned")
    assert consumer.stop() == 0
    requests = blob_requests(azurite, since)

    records = {}
    for text in taken(service, f"{qname}-poison"):
        record = json.loads(text)
        records[json.loads(record["body"])["id"]] = record
    problems = []
    for n, (name, _, expected) in enumerate(cases):
        record = records.get(f"forged-{n:02d}")
        if record is None:
            problems.append(f"{name}: not in poison")
        elif expected not in record["reason"] or record["dequeue_count"] != 1:
            problems.append(f"{name}: {record['reason']!r} after {record['dequeue_count']}")
    assert not problems, "\n".join(problems)
    reasons = [records[f"forged-{n:02d}"]["reason"] for n in range(len(cases))]
    assert reasons[0] == reasons[1] == reasons[2]  # exists or not: nothing told
    assert reasons[3] == reasons[4]
    assert all("\n" not in r and "RequestId" not in r and "<?xml" not in r for r in reasons)

    outside = [
        r for r in requests if r[1].startswith((f"{victim}/", f"{PAYLOADS_CONTAINER}/{other}/"))
    ]
    big_requests = [
        method for method, path in requests if path == f"{PAYLOADS_CONTAINER}/{qname}/big"
    ]
    assert outside == []
    assert big_requests == ["HEAD"]  # its size, once; never a GET of its content
    assert read(blobs, victim, "_SUCCESS") == b"" and read(blobs, victim, "secret.txt") == secret
    assert read(blobs, PAYLOADS_CONTAINER, f"{other}/x") == secret
    assert message_count(service, qname) == 0  # nothing lost: every message in poison or done
    assert "Traceback" not in consumer.text and "RequestId" not in consumer.text
    assert "\x1b" not in consumer.text
    figures(
        f"{len(cases)} forged claim checks: poisoned at once {len(records)}, blob requests "
        f"outside the lesson {len(outside)}, GETs of the oversize blob "
        f"{big_requests.count('GET')}, lost {message_count(service, qname)}, tracebacks 0"
    )


# --- forged poison records -------------------------------------------------------------------


def test_forged_poison_records_are_left_with_a_line_and_the_rest_is_redriven(
    azurite, env, service, blobs, qname, figures
):
    poison, where = f"{qname}-poison", f"{qname}-poison/"
    victim = f"victim-{uuid.uuid4().hex[:8]}"
    secret = b"the quarterly figures"
    put(blobs, victim, "secret.txt", secret)
    put(blobs, POISON_RECORDS_CONTAINER, f"{qname}x-poison/x", secret)  # another poison queue's
    put(blobs, POISON_RECORDS_CONTAINER, f"{where}binary", b"\xff\xfe\x00\x9b" * 100)
    put(blobs, POISON_RECORDS_CONTAINER, f"{where}big", b"a" * 100_000)
    put(blobs, POISON_RECORDS_CONTAINER, f"{where}good", b'{"id": "from-a-blob"}')

    def record(**fields: Any) -> str:
        return json.dumps({"reason": "forged", "source_queue": qname, "dequeue_count": 1,
                           "poisoned_at": "2026-01-01T00:00:00+00:00", "message_id": "m",
                           **fields})  # fmt: skip

    def blob(container: str, name: Any) -> dict[str, Any]:
        return {"container": container, "blob": name}

    bad = [
        ("a body blob in another container", record(body_blob=blob(victim, "secret.txt")),
         OUTSIDE),
        ("another poison queue's body blob",
         record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{qname}x-poison/x")), OUTSIDE),
        ('"body_blob": {}', record(body_blob={}), SHAPE),
        ("body_blob a string", record(body_blob="secret.txt"), SHAPE),
        ("a body blob with ../",
         record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{where}../../{victim}/secret.txt")),
         UNSAFE),
        ("a bad container name", record(body_blob=blob("Bad_Name!", f"{where}x")), OUTSIDE),
        ("a binary body blob", record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{where}binary")),
         "not UTF-8 text"),
        ("a 100 KB body blob", record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{where}big")),
         "100000 bytes, more than a queue message holds"),
        ("a body blob that is gone",
         record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{where}gone")), "is gone"),
        ("source_queue not text", record(source_queue=["x"], body="{}"), "not text"),
        ("a reason that is an object", record(reason={"a": 1}, body="{}"), "not text"),
    ]  # fmt: skip
    good = [  # (what, record, the body that goes back)
        ("a 5,000-deep body", record(body="[" * 5000 + "]" * 5000), "[" * 5000 + "]" * 5000),
        ("a 5,000-digit number", record(body='{"id": ' + "9" * 5000 + "}"),
         '{"id": ' + "9" * 5000 + "}"),
        ("an escape sequence and a line break in the id",
         record(body=json.dumps({"id": "\x1b[2J\nX"})), json.dumps({"id": "\x1b[2J\nX"})),
        ("a body in a blob", record(body_blob=blob(POISON_RECORDS_CONTAINER, f"{where}good")),
         '{"id": "from-a-blob"}'),
        ("not a record at all", "plain text, kept as it was", "plain text, kept as it was"),
        ("an ordinary record", record(body='{"id": "plain"}'), '{"id": "plain"}'),
    ]  # fmt: skip
    queue = service.get_queue_client(poison)
    queue.create_queue()
    for _, text, *_ in [*bad, *good]:  # the bad ones first: they must not block the rest
        queue.send_message(text)
    since = log_length(azurite)

    peeked = run_script(PEEK, poison, "-n", "32", env=env)
    assert peeked.returncode == 0, peeked.stderr
    assert f"{len(bad) + len(good)} message(s) shown" in peeked.stdout
    result = run_script(REDRIVE, qname, env=env)
    assert result.returncode == 0, result.stderr
    output = peeked.stdout + peeked.stderr + result.stdout + result.stderr
    assert "Traceback" not in output and "\x1b" not in output
    requests = blob_requests(azurite, since)

    left = result.stdout.count("] warning: left message ")
    problems = [name for name, _, reason in bad if reason not in result.stdout]
    assert not problems, f"no line for {problems}:\n{result.stdout}"
    assert left == len(bad), result.stdout
    assert f"moved {len(good)} message(s) from '{poison}'" in result.stdout
    assert f"{len(bad)} left in '{poison}' ({len(bad)} could not be moved)" in result.stdout
    assert sorted(peek_bodies(service, qname)) == sorted(body for *_, body in good)
    wait_until(lambda: message_count(service, poison) == len(bad), 10, "the bad ones stay")
    outside = [
        r
        for r in requests
        if r[1].startswith((f"{victim}/", f"{POISON_RECORDS_CONTAINER}/{qname}x-poison/"))
    ]
    big = [method for method, path in requests if path == f"{POISON_RECORDS_CONTAINER}/{where}big"]
    assert outside == [] and big == ["HEAD"]
    assert read(blobs, victim, "secret.txt") == secret  # not copied, not deleted
    names = {b.name for b in blobs.get_container_client(POISON_RECORDS_CONTAINER).list_blobs(
        name_starts_with=where)}  # fmt: skip
    assert names == {f"{where}binary", f"{where}big"}  # the moved one's blob is deleted
    figures(
        f"{len(bad) + len(good)} poison records ({len(bad)} forged): left with one line "
        f"{left}, redriven {len(good)}, blob requests outside the lesson {len(outside)}, "
        f"GETs of the 100 KB blob {big.count('GET')}, tracebacks 0"
    )


# --- broken trace files ----------------------------------------------------------------------


def span(**changes: Any) -> dict[str, Any]:
    """A span as tracing.py writes it (a producer's send), with `changes`."""
    good = {
        "trace_id": "t1", "span_id": "s1", "parent_id": None, "name": "send q", "kind": "producer",
        "service": "producer", "pid": 1, "start_ns": 1_000_000, "end_ns": 2_000_000,
        "attributes": {"messaging.destination.name": "q", "app.id": "ORD-1"}, "events": [],
    }  # fmt: skip
    return {**good, **changes}


def attributes(**changes: Any) -> dict[str, Any]:
    return {"messaging.destination.name": "q2", "app.id": "ORD-1", **changes}


WAITED = {"queue.wait_ms": 1.0, "queue.poll_wait_ms": 0.5}
CONSUMED = span(span_id="s2", parent_id="s1", kind="consumer", service="consumer",
                start_ns=3_000_000, end_ns=4_000_000, attributes=attributes(**WAITED))  # fmt: skip
BROKEN: list[tuple[str, bytes]] = [
    (name, text if isinstance(text, bytes) else text.encode("utf-8"))
    for name, text in [
        ("binary", bytes(range(256)).replace(b"\n", b"")),
        ("NUL bytes", b"\x00" * 40),
        ("not UTF-8", b'{"trace_id": "\xff\xfe"}'),
        ("cut short", json.dumps(span(span_id="cut"))[:30]),
        ("not JSON", "hello, journey"),
        ("a JSON array", json.dumps([span()])),
        ("a JSON number", "42"),
        ("a JSON string", '"a span"'),
        ("null", "null"),
        ("missing span_id", json.dumps({k: v for k, v in span().items() if k != "span_id"})),
        ("missing trace_id", json.dumps({k: v for k, v in span().items() if k != "trace_id"})),
        ("missing start_ns", json.dumps({k: v for k, v in span().items() if k != "start_ns"})),
        ("trace_id a number", json.dumps(span(trace_id=7))),
        ("span_id null", json.dumps(span(span_id=None))),
        ("parent_id a list", json.dumps(span(parent_id=["s0"]))),
        ("kind a number", json.dumps(span(kind=1))),
        ("service an object", json.dumps(span(service={"name": "x"}))),
        ("start_ns a string", json.dumps(span(start_ns="1000000"))),
        ("start_ns true", json.dumps(span(start_ns=True))),
        ("start_ns a float", json.dumps(span(start_ns=1e6))),
        ("end before start", json.dumps(span(end_ns=1))),
        ("negative times", json.dumps(span(start_ns=-5, end_ns=-1))),
        ("a 400-digit time", json.dumps(span(end_ns=10**400))),
        ("a 5,000-digit time", json.dumps(span())[:-1] + ', "x": ' + "9" * 5000 + "}"),
        ("nested 5,000 deep", "[" * 5000 + "]" * 5000),
        ("attributes a list", json.dumps(span(attributes=["a"]))),
        ("app.id a number", json.dumps(span(attributes=attributes(**{"app.id": 7})))),
        ("queue name null", json.dumps(span(attributes={"messaging.destination.name": None}))),
        ("outcome a list", json.dumps(span(attributes=attributes(outcome=["done"])))),
        ("wait NaN", json.dumps(span(attributes=attributes(**{"queue.wait_ms": math.nan})))),
        ("wait Infinity", json.dumps(span(attributes=attributes(**{"queue.wait_ms": math.inf})))),
        ("wait 1e300", json.dumps(span(attributes=attributes(**{"queue.wait_ms": 1e300})))),
        ("wait negative", json.dumps(span(attributes=attributes(**{"queue.wait_ms": -5})))),
        ("wait a string", json.dumps(span(attributes=attributes(**{"queue.wait_ms": "5"})))),
        ("poll wait true", json.dumps(span(attributes=attributes(**{"queue.poll_wait_ms": True})))),
        ("events an object", json.dumps(span(events={"name": "x"}))),
        ("an event without a name", json.dumps(span(events=[{"attributes": {}}]))),
        ("an event that is a string", json.dumps(span(events=["poisoned"]))),
        ("an event's reason an object",
         json.dumps(span(events=[{"name": "retry", "attributes": {"reason": {"a": 1}}}]))),
        ("a byte order mark", "\ufeff" + json.dumps(span(span_id="bom"))),
    ]
]  # fmt: skip


def test_journey_skips_every_kind_of_broken_trace_line_and_says_how_many(tmp_path, figures):
    good = [json.dumps(span()).encode(), json.dumps(CONSUMED).encode()]
    failed = []
    for name, line in BROKEN:  # each kind alone, between two good spans, in-process
        path = tmp_path / "one.jsonl"
        path.write_bytes(good[0] + b"\n" + line + b"\n" + good[1] + b"\n")
        try:
            spans, skipped = journey.read_spans(path)
            [drawn] = journey.journeys(spans)
            journey.timeline(drawn), journey.mermaid(drawn)
        except Exception as error:  # each kind's failure is reported below
            failed.append(f"{name}: {type(error).__name__}: {error}"[:200])
            continue
        if (len(spans), skipped) != (2, 1):
            failed.append(f"{name}: {len(spans)} span(s) read, {skipped} line(s) skipped")
    assert not failed, "\n".join(failed)

    path = tmp_path / "traces.jsonl"  # all of them at once, as a learner runs it
    path.write_bytes(b"\n".join([good[0], *(line for _, line in BROKEN), good[1], b""]))
    for args in ((), ("--mermaid",), ("--id", "ORD-1"), ("--slowest", "1")):
        result = run_script(JOURNEY, "--file", str(path), *args, env={})
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert result.stderr.strip() == (
            f"{path}: {len(BROKEN)} line(s) skipped: not spans as the scripts write them"
        )
    missing = run_script(JOURNEY, "--file", str(path), "--id", "nope", env={})
    assert missing.returncode == 1 and f"({len(BROKEN)} line(s) skipped" in missing.stderr
    figures(f"{len(BROKEN)} kinds of broken trace line: skipped and counted, tracebacks 0")
