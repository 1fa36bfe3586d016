"""Request/reply, end to end: real Azurite, requestor and replier as subprocesses."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid

import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueServiceClient
from support import (
    env_for,
    message_count,
    peek_bodies,
    queue_exists,
    run_script,
    send,
    wait_until,
)

from patterns.emulator import ROOT

REQUESTOR = "patterns.request_reply.requestor"
REPLIER = "patterns.request_reply.replier"


def reply_queue_of(output: str) -> str:
    return re.search(r"on '(reply-[0-9a-f-]+)'", output).group(1)


def sent_requests(output: str) -> dict[str, str]:
    """Request number -> correlation id, from the requestor's 'sent request' lines."""
    return dict(re.findall(r"sent request (\d+) \(([0-9a-f-]+)\)", output))


def start_replier(start, qname: str):
    replier = start(REPLIER, "--queue", qname, "--idle-max", "0.2")
    replier.wait_for("waiting for requests")
    return replier


@pytest.fixture
def reply_queue(service):
    """A reply queue made by the test itself (playing a requestor), deleted afterwards."""
    name = f"reply-{uuid.uuid4()}"
    service.create_queue(name)
    yield name
    service.delete_queue(name)


def test_one_request_is_answered_and_the_reply_queue_deleted(start, env, service, qname):
    start_replier(start, qname)
    result = run_script(REQUESTOR, "--queue", qname, "--timeout", "20", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "reply to request 1: 'HELLO WORLD' after" in result.stdout
    assert "all 1 reply(ies) received" in result.stdout
    assert not queue_exists(service, reply_queue_of(result.stdout))
    assert message_count(service, qname) == 0


def test_ten_concurrent_requests_each_get_their_own_reply(start, env, service, qname):
    replier = start_replier(start, qname)
    result = run_script(
        REQUESTOR,
        "--queue",
        qname,
        "--count",
        "10",
        "--payload",
        "ping",
        "--timeout",
        "20",
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    replies = dict(re.findall(r"reply to request (\d+): '([^']*)'", result.stdout))
    assert replies == {str(n): f"PING {n}" for n in range(1, 11)}
    sent = sent_requests(result.stdout)
    assert len(set(sent.values())) == 10
    answered = dict(re.findall(r"answered ([0-9a-f-]+) on '[^']+': '([^']*)'", replier.text))
    assert answered == {sent[n]: f"PING {n}" for n in sent}  # the right answer to each id
    assert not queue_exists(service, reply_queue_of(result.stdout))


def test_no_replier_times_out_naming_the_missing_request(env, service, qname):
    began = time.monotonic()
    result = run_script(REQUESTOR, "--queue", qname, "--timeout", "2", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - began < 10
    correlation_id = sent_requests(result.stdout)["1"]
    assert f"no reply to request 1 ({correlation_id})" in result.stdout
    assert "timed out after 2 s: 1 reply(ies) missing" in result.stdout
    assert not queue_exists(service, reply_queue_of(result.stdout))
    assert "Traceback" not in result.stdout + result.stderr


def test_ctrl_c_while_waiting_deletes_the_reply_queue(start, service, qname):
    requestor = start(REQUESTOR, "--queue", qname, "--timeout", "60")
    line = requestor.wait_for(r"waiting up to 60 s .* on '(reply-[0-9a-f-]+)'")[0]
    assert queue_exists(service, line.group(1))
    requestor.send_signal(signal.SIGINT)
    assert requestor.wait(10) == 130  # interrupted: the job is not done
    assert "stopped by Ctrl+C with 1 reply(ies) still missing" in requestor.text
    assert not queue_exists(service, line.group(1))


def test_stray_reply_is_reported_and_the_replier_may_start_later(start, service, qname):
    requestor = start(REQUESTOR, "--queue", qname, "--timeout", "20")
    line = requestor.wait_for(r"waiting up to .* on '(reply-[0-9a-f-]+)'")[0]
    stray = {"correlation_id": "not-one-of-ours", "result": "?"}
    service.get_queue_client(line.group(1)).send_message(json.dumps(stray))
    requestor.wait_for("ignored a stray reply")
    start_replier(start, qname)  # the requestor was first: the request waited in the queue
    assert requestor.wait(20) == 0
    assert "reply to request 1: 'HELLO WORLD'" in requestor.text
    assert "ignored 1 stray(s)" in requestor.text


def test_reply_to_a_pipeline_queue_is_refused(start, service, qname):
    with contextlib.suppress(ResourceExistsError):
        service.create_queue("queue-enrich")
    before = message_count(service, "queue-enrich")
    replier = start_replier(start, qname)
    send(service, qname, {"correlation_id": "c-1", "reply_to": "queue-enrich", "payload": "x"})
    gone = f"reply-{uuid.uuid4()}"  # a requestor that already gave up and deleted its queue
    send(service, qname, {"correlation_id": "c-2", "reply_to": gone, "payload": "x"})
    replier.wait_for(r"moved message .* to '.*-poison': refused reply_to 'queue-enrich'")
    replier.wait_for(f"reply queue '{gone}' no longer exists")
    assert message_count(service, "queue-enrich") == before
    assert not queue_exists(service, gone), "the replier must never create a reply queue"
    [poisoned] = [json.loads(b) for b in peek_bodies(service, f"{qname}-poison")]
    assert json.loads(poisoned["body"])["correlation_id"] == "c-1"
    assert replier.stop() == 0
    assert message_count(service, qname) == 0


def test_request_without_payload_gets_an_error_reply(start, service, qname, reply_queue):
    replier = start_replier(start, qname)
    send(service, qname, {"correlation_id": "no-payload", "reply_to": reply_queue})
    send(service, qname, {"correlation_id": "no-address"})  # nowhere to reply: poison
    replier.wait_for("answered no-payload")
    replier.wait_for(r"moved message .* to '.*-poison': no reply_to")
    assert [json.loads(b) for b in peek_bodies(service, reply_queue)] == [
        {"correlation_id": "no-payload", "error": "payload is missing or not a string"}
    ]
    assert replier.stop() == 0


def test_an_expired_request_is_not_answered(start, service, qname, reply_queue):
    service.create_queue(qname)
    expired = {"correlation_id": "too-late", "reply_to": reply_queue, "payload": "old"}
    send(service, qname, expired, time_to_live=1)
    # The service drops it once its time-to-live is over.
    wait_until(lambda: not peek_bodies(service, qname), 10, "the request expired")
    replier = start_replier(start, qname)
    send(service, qname, {"correlation_id": "fresh", "reply_to": reply_queue, "payload": "new"})
    replier.wait_for("answered fresh")
    assert [json.loads(b)["correlation_id"] for b in peek_bodies(service, reply_queue)] == ["fresh"]
    assert "too-late" not in replier.text


def test_a_reply_queue_left_by_an_outage_is_named_with_the_command_that_removes_it(
    disk_azurite, start, qname
):
    """Ctrl+C while the service is down: exit 130; the reply queue cannot be deleted, so the
    warning names it with the cleanup command; status shows it once the service is back, and
    that very command removes it."""
    emulator, env = disk_azurite, env_for(disk_azurite)
    requestor = start(REQUESTOR, "--queue", qname, "--timeout", "60", env_=env)
    reply_queue = requestor.wait_for(r"waiting up to 60 s .* on '(reply-[0-9a-f-]+)'")[0][1]
    emulator.stop()
    requestor.send_signal(signal.SIGINT)
    assert requestor.wait(30) == 130
    assert "stopped by Ctrl+C with 1 reply(ies) still missing" in requestor.text
    warning = requestor.wait_for(rf"warning: could not delete reply queue '{reply_queue}'.*")
    command = re.search(r"remove it later with (python \S+ .*)$", warning[0][0])[1]
    assert "Traceback" not in requestor.text

    emulator.start()  # same port, same data folder: the queue is still there
    status = run_script("patterns.tools.status", "--prefix", reply_queue, env=env)
    assert re.search(rf"^request/reply\s+{reply_queue}\s+0\s+0\s+-$", status.stdout, re.M), status
    words = shlex.split(command)
    assert words[:2] == ["python", "patterns/tools/cleanup.py"]
    removed = subprocess.run(
        [sys.executable, *words[1:], "--yes"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert removed.returncode == 0, removed
    assert f"deleted {reply_queue}" in removed.stdout
    assert not queue_exists(
        QueueServiceClient.from_connection_string(emulator.connection_string), reply_queue
    )
