"""Claim-check: payloads of any size, the big ones in a blob (patterns/claim_check/), against
the session's Azurite (queue and blob services), with the tools that show and remove orphans."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import signal
import time
import uuid
from types import SimpleNamespace

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from support import (
    assert_refused,
    env_for,
    ids_logged,
    message_count,
    peek_bodies,
    run_script,
    send,
    wait_until,
)

from patterns.emulator import AZURITE_BLOB_MAIN, ensure_node
from patterns.helper import connect
from patterns.helper.support import blobs as blob_support
from patterns.helper.support import settings
from patterns.helper.support.settings import CONNECTION_STRING_VAR
from patterns.tools.blobs import PAYLOADS_CONTAINER

PRODUCER = "patterns.claim_check.producer"
CONSUMER = "patterns.claim_check.consumer"
STATUS = "patterns.tools.status"
CLEANUP = "patterns.tools.cleanup"
PEEK = "patterns.tools.peek"
REDRIVE = "patterns.tools.redrive"


def blob_names(blobs: BlobServiceClient, container: str, prefix: str) -> list[str]:
    try:
        return [
            b.name
            for b in blobs.get_container_client(container).list_blobs(name_starts_with=prefix)
        ]
    except ResourceNotFoundError:
        return []


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def produce(env: dict[str, str], queue: str, *args: str) -> list[str]:
    """Run the producer; the ids of the payloads it sent, in order."""
    result = run_script(PRODUCER, "--queue", queue, *args, env=env)
    assert result.returncode == 0, result.stderr
    return re.findall(r"\] sent (claim-\S+): ", result.stdout)


def test_small_payloads_travel_inline_and_big_ones_in_a_blob_deleted_after_the_message(
    start, env, service, blobs, qname
):
    sent = produce(env, qname, "--count", "4")  # 2 000 and 200 000 bytes in turn
    assert len(sent) == 4
    assert len(blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/")) == 2  # uploaded before sending
    references = [json.loads(body) for body in peek_bodies(service, qname)]
    assert sorted("blob" in r for r in references) == [False, False, True, True]
    assert all(len(json.dumps(r)) < 1000 for r in references if "blob" in r)  # a claim check

    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    consumer.wait_for(r"\] done ", count=4)
    wait_until(lambda: not blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/"), 10, "blobs gone")
    assert consumer.stop() == 0
    assert sorted(ids_logged(consumer, "done")) == sorted(sent)
    assert len(consumer.matches(r"took \S+ \(2000 bytes inline\)")) == 2
    assert len(consumer.matches(rf"took \S+ \(200000 bytes from blob {PAYLOADS_CONTAINER}/")) == 2
    # Each blob is deleted after its message was done (and deleted), never before.
    lines = consumer.lines
    for task_id in sent[1::2]:
        done = next(n for n, line in enumerate(lines) if f"done {task_id}" in line)
        deleted = next(
            n
            for n, line in enumerate(lines)
            if f"deleted blob {PAYLOADS_CONTAINER}/{qname}/{task_id}" in line
        )
        assert done < deleted
    assert message_count(service, qname) == 0


def test_a_message_that_could_not_be_deleted_keeps_its_blob(start, env, service, blobs, qname):
    """The blob goes only when its message is gone for good: here the message vanishes under
    the consumer (cleared), so its delete fails, and the blob stays for whoever needs it."""
    [task_id] = produce(env, qname, "--count", "1", "--size", "100000")
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "3")
    consumer.wait_for(rf"took {task_id}")
    service.get_queue_client(qname).clear_messages()  # invisible ones too
    consumer.wait_for(r"was no longer ours to delete")
    assert consumer.stop() == 0
    assert not consumer.matches(r"deleted blob")
    assert blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/") == [f"{qname}/{task_id}"]


def test_kill_9_mid_work_leaves_the_blob_for_the_retry(start, env, service, blobs, qname):
    sent = produce(env, qname, "--count", "2", "--size", "100000")
    first = start(CONSUMER, "--queue", qname, "--work-seconds", "60", "--visibility-timeout", "2")
    first.wait_for(r"took ")
    first.send_signal(signal.SIGKILL)
    assert first.wait(5) == -signal.SIGKILL
    assert len(blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/")) == 2  # nothing deleted
    second = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    second.wait_for(r"\] done ", count=2, timeout=20)  # the killed one's after its 2 s
    wait_until(lambda: not blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/"), 10, "blobs gone")
    assert second.stop() == 0
    assert sorted(ids_logged(second, "done")) == sorted(sent)
    assert message_count(service, qname) == 0


def test_a_producer_crash_between_upload_and_send_leaves_an_orphan_status_shows_cleanup_removes(
    start, env, service, blobs, qname
):
    result = run_script(PRODUCER, "--queue", qname, "--count", "3", "--crash-after-upload", env=env)
    assert result.returncode == 1, result
    assert "crashing on purpose after uploading" in result.stdout
    [orphan] = blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/")
    assert message_count(service, qname) == 1  # the small one before it; its message was sent

    status = run_script(STATUS, "--prefix", qname, "--orphan-age", "0", env=env)
    assert status.returncode == 0, status.stderr
    assert f"blobs in {PAYLOADS_CONTAINER}: 1 (200000 bytes), 1 orphan(s)" in status.stdout
    assert f"orphan: {orphan}  200000 bytes" in status.stdout
    young = run_script(STATUS, "--prefix", qname, env=env)  # default: over 60 s old only
    assert (
        f"blobs in {PAYLOADS_CONTAINER}: 1 (200000 bytes), 0 orphan(s), 1 not sure" in young.stdout
    )

    args = ("--orphans", "--prefix", qname, "--orphan-age", "0")
    dry = run_script(CLEANUP, *args, "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would delete: orphan blob {PAYLOADS_CONTAINER}/{orphan}" in dry.stdout
    assert blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/") == [orphan]
    done = run_script(CLEANUP, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert "deleted 1 orphan blob(s)" in done.stdout
    assert blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/") == []
    assert message_count(service, qname) == 1  # cleanup --orphans touches no message

    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    consumer.wait_for(r"\] done ")  # the message that was sent is processed as usual
    assert consumer.stop() == 0


def test_status_and_cleanup_escape_control_characters_in_blob_names(env, blobs, qname):
    """Anyone who may write blobs can name one with C1 controls or a line separator (Azurite
    cannot even list a name with ESC): shown escaped, never sent to the terminal as they are."""
    name = f"{qname}/orphan\x9b2J\u2028line"
    with contextlib.suppress(ResourceExistsError):
        blobs.create_container(PAYLOADS_CONTAINER)
    blobs.get_blob_client(PAYLOADS_CONTAINER, name).upload_blob(b"x")
    status = run_script(STATUS, "--prefix", qname, "--orphan-age", "0", env=env)
    assert status.returncode == 0, status.stderr
    assert f"  orphan: {qname}/orphan\\x9b2J\\u2028line  1 bytes" in status.stdout
    cleanup = run_script(CLEANUP, "--orphans", "--prefix", qname, "--orphan-age", "0", env=env)
    assert cleanup.returncode == 0, cleanup.stderr
    assert f"deleted blob {PAYLOADS_CONTAINER}/{qname}/orphan\\x9b2J\\u2028line" in cleanup.stdout
    assert not set("\x9b\u2028") & set(status.stdout + cleanup.stdout)


def test_a_blob_referred_to_by_a_message_is_no_orphan(env, service, blobs, qname):
    produce(env, qname, "--count", "2")
    status = run_script(STATUS, "--prefix", qname, "--orphan-age", "0", env=env)
    assert f"blobs in {PAYLOADS_CONTAINER}: 1 (200000 bytes), 0 orphan(s)" in status.stdout
    result = run_script(CLEANUP, "--orphans", "--prefix", qname, "--orphan-age", "0", env=env)
    assert "deleted 0 orphan blob(s)" in result.stdout
    assert len(blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/")) == 1


def test_a_missing_blob_sends_the_message_to_poison_with_the_reason(
    start, env, service, blobs, qname
):
    [task_id] = produce(env, qname, "--count", "1", "--size", "100000")
    blobs.get_blob_client(PAYLOADS_CONTAINER, f"{qname}/{task_id}").delete_blob()  # someone did
    consumer = start(CONSUMER, "--queue", qname)
    consumer.wait_for(rf"moved message .* to '{qname}-poison'")
    assert consumer.stop() == 0
    [record] = [json.loads(body) for body in peek_bodies(service, f"{qname}-poison")]
    assert record["reason"] == f"its payload blob {PAYLOADS_CONTAINER}/{qname}/{task_id} is missing"
    assert record["dequeue_count"] == 1  # no retries: no retry could bring it back
    assert json.loads(record["body"])["id"] == task_id
    assert message_count(service, qname) == 0


def test_an_oversized_poison_record_keeps_its_reason_and_redrive_restores_the_body(
    start, env, service, blobs, qname
):
    """A 40 KB message that is not JSON: its poison record (reason + body, where JSON writes
    each backslash as two) would not fit in a message, so the body goes to a blob and the
    record keeps the reason."""
    body = "not json <&> " + "\\" * 40_000
    service.create_queue(qname)
    send(service, qname, body)
    consumer = start(CONSUMER, "--queue", qname)
    consumer.wait_for(rf"moved message .* to '{qname}-poison': not JSON")
    assert consumer.stop() == 0
    [text] = peek_bodies(service, f"{qname}-poison")
    record = json.loads(text)
    assert record["reason"].startswith("not JSON")
    where = record["body_blob"]
    assert where["container"] == "poison-records" and where["blob"].startswith(f"{qname}-poison/")
    blob = blobs.get_blob_client(where["container"], where["blob"])
    assert blob.download_blob().readall().decode() == body

    status = run_script(STATUS, "--prefix", qname, "--orphan-age", "0", env=env)
    assert "blobs in poison-records: 1 (" in status.stdout and "0 orphan(s)" in status.stdout
    peeked = run_script(PEEK, f"{qname}-poison", env=env)
    assert peeked.returncode == 0, peeked.stderr
    assert '"reason": "not JSON' in peeked.stdout and where["blob"] in peeked.stdout

    result = run_script(REDRIVE, qname, env=env)
    assert result.returncode == 0, result.stderr
    assert "(it had failed: not JSON" in result.stdout
    assert peek_bodies(service, qname) == [body]  # the original, byte for byte
    assert message_count(service, f"{qname}-poison") == 0
    assert blob_names(blobs, "poison-records", f"{qname}-poison/") == []


def test_a_connection_string_without_a_blob_endpoint_is_one_line_exit_2(env, azurite, qname):
    queue_only = f"{env[CONNECTION_STRING_VAR].split('BlobEndpoint=')[0]}"
    result = run_script(PRODUCER, "--queue", qname, env={**env, CONNECTION_STRING_VAR: queue_only})
    assert_refused(result, "names a QueueEndpoint but no BlobEndpoint")


def test_with_entra_sign_in_the_blob_service_is_the_queue_services_neighbour(monkeypatch):
    url = "https://learner.queue.core.windows.net"
    signed_in = settings.Settings("", "environment", account_url=url)
    monkeypatch.setattr(settings, "load_settings", lambda: signed_in)
    credential = AzureNamedKeyCredential("learner", "a2V5")  # stands for the Entra credential
    monkeypatch.setattr(connect, "service", lambda: SimpleNamespace(credential=credential))
    monkeypatch.setattr(blob_support, "_service", None)
    assert blob_support.service().url == "https://learner.blob.core.windows.net/"


def test_in_base64_mode_claim_checks_work_and_are_no_orphans(start, env, service, blobs, qname):
    """AZURE_QUEUE_MESSAGE_ENCODING=base64 (Azure Functions): the whole message is Base64 once
    more, a 32 KiB inline payload still fits, and status still finds what refers to a blob."""
    b64 = {**env, settings.MESSAGE_ENCODING_VAR: "base64"}
    result = run_script(PRODUCER, "--queue", qname, "--count", "2", "--size", "32768", env=b64)
    assert result.returncode == 0, result.stderr
    result = run_script(PRODUCER, "--queue", qname, "--count", "1", "--size", "100000", env=b64)
    assert result.returncode == 0, result.stderr
    status = run_script(STATUS, "--prefix", qname, "--orphan-age", "0", env=b64)
    assert f"blobs in {PAYLOADS_CONTAINER}: 1 (100000 bytes), 0 orphan(s)" in status.stdout
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=b64)
    consumer.wait_for(r"\] done ", count=3)
    wait_until(lambda: not blob_names(blobs, PAYLOADS_CONTAINER, f"{qname}/"), 10, "blobs gone")
    assert consumer.stop() == 0
    assert len(consumer.matches(r"took \S+ \(32768 bytes inline\)")) == 2


def test_cleanup_deletes_a_tutorial_queues_blobs_with_it(env, service, blobs):
    ns = f"t{uuid.uuid4().hex[:8]}-"  # a prefix of this test's own; the tutorial's name follows
    queue = f"{ns}claim-check-queue"
    produce(env, queue, "--count", "2")
    [blob] = blob_names(blobs, PAYLOADS_CONTAINER, f"{queue}/")
    dry = run_script(CLEANUP, "--prefix", ns, "--dry-run", env=env)
    assert f"would delete: blob {PAYLOADS_CONTAINER}/{blob}" in dry.stdout
    assert "dry run: 1 queue(s) and 1 blob(s) would be deleted" in dry.stdout
    result = run_script(CLEANUP, "--prefix", ns, "--yes", env=env)
    assert result.returncode == 0, result.stderr
    assert "deleted 1 queue(s) and 1 blob(s)" in result.stdout
    assert blob_names(blobs, PAYLOADS_CONTAINER, f"{queue}/") == []
    assert [q.name for q in service.list_queues(name_starts_with=ns)] == []


# --- trust: what a claim check may make the consumer do (attacks: test_battery_trust.py) ----


def test_a_size_sent_as_a_string_is_a_bad_message_that_says_so(start, service, qname):
    payload = b"x" * 1000
    service.create_queue(qname)
    send(service, qname, {"id": "sized-as-text", "size": "1000", "data": b64(payload),
                          "sha256": hashlib.sha256(payload).hexdigest()})  # fmt: skip
    consumer = start(CONSUMER, "--queue", qname, "--idle-max", "0.2")
    consumer.wait_for(rf"moved message .* to '{qname}-poison'")
    assert consumer.stop() == 0
    [record] = [json.loads(body) for body in peek_bodies(service, f"{qname}-poison")]
    assert record["reason"] == 'size must be a whole number of bytes, got "1000"'
    assert record["dequeue_count"] == 1


def test_the_consumer_follows_references_into_its_own_container_only(
    start, env, service, blobs, qname
):
    mine = f"payloads-{uuid.uuid4().hex[:8]}"
    [task_id] = produce(env, qname, "--count", "1", "--size", "100000", "--container", mine)
    default = start(CONSUMER, "--queue", qname, "--idle-max", "0.2", label="default")
    default.wait_for(rf"moved message .* to '{qname}-poison'")  # claim-check-payloads only
    assert default.stop() == 0
    [record] = [json.loads(body) for body in peek_bodies(service, f"{qname}-poison")]
    assert record["reason"] == (
        f"it refers to a blob outside {PAYLOADS_CONTAINER}/{qname}/, the only place this "
        "lesson keeps them: refused without looking it up"
    )
    assert blob_names(blobs, mine, f"{qname}/") == [f"{qname}/{task_id}"]  # untouched

    produce(env, qname, "--count", "1", "--size", "100000", "--container", mine)
    own = start(CONSUMER, "--queue", qname, "--container", mine, "--work-seconds", "0")
    own.wait_for(r"\] deleted blob ")
    assert own.stop() == 0
    assert blob_names(blobs, mine, f"{qname}/") == [f"{qname}/{task_id}"]  # the other one's


def test_a_big_payload_is_read_in_chunks_of_4_mib(azurite, start, env, service, blobs, qname):
    [task_id] = produce(env, qname, "--count", "1", "--size", "9000000")
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0")
    consumer.wait_for(rf"done {task_id}")
    assert consumer.stop() == 0
    assert consumer.matches(rf"took {task_id} \(9000000 bytes from blob ")
    assert azurite.blob_log_path is not None
    log = azurite.blob_log_path.read_text(errors="replace")
    reads = re.findall(rf'"GET /devstoreaccount1/{PAYLOADS_CONTAINER}/{qname}/{task_id} ', log)
    assert len(reads) == 3  # 4 + 4 + 0.6 MiB: never more than a chunk in memory at once


def test_a_blob_already_gone_at_delete_time_is_no_orphan(start, env, blobs, qname):
    [task_id] = produce(env, qname, "--count", "1", "--size", "100000")
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "1")
    consumer.wait_for(rf"took {task_id}")
    blobs.get_blob_client(PAYLOADS_CONTAINER, f"{qname}/{task_id}").delete_blob()  # someone did
    consumer.wait_for(rf"blob {PAYLOADS_CONTAINER}/{qname}/{task_id} was already gone")
    assert consumer.stop() == 0
    assert "orphan" not in consumer.text and "warning" not in consumer.text


def test_a_blob_service_outage_is_the_blob_services_warned_once_and_loses_nothing(
    disk_azurite, start, qname
):
    """Only the blob service goes down: the consumer names it, once, however often the message
    comes back meanwhile (visibility timeout 1 s), says when it answers again, and the message
    is processed then: not poisoned, not counted as a failed attempt."""
    env = env_for(disk_azurite)
    [task_id] = produce(env, qname, "--count", "1", "--size", "100000")
    blob_service = disk_azurite.blob_process
    assert blob_service is not None
    blob_service.terminate()
    blob_service.wait(10)
    consumer = start(CONSUMER, "--queue", qname, "--visibility-timeout", "1",
                     "--work-seconds", "0", env_=env)  # fmt: skip
    consumer.wait_for(r"warning: the blob service at ")
    time.sleep(3)  # the outage itself: the message comes back (1 s) and fails again meanwhile
    disk_azurite.blob_process = disk_azurite._spawn(
        ensure_node(), AZURITE_BLOB_MAIN,
        ["--blobHost", "127.0.0.1", "--blobPort", str(disk_azurite.blob_port)],
        disk_azurite.blob_log_path,
    )  # fmt: skip
    consumer.wait_for(r"the blob service answers again", timeout=30)
    consumer.wait_for(rf"done {task_id}")
    assert consumer.stop() == 0
    warnings = [m.group(1) for m in consumer.matches(r"\] warning: (.*)")]
    assert len(warnings) == 1, consumer.text  # not once per delivery, and no failed attempt
    blob_down = f"the blob service at {disk_azurite.blob_endpoint} cannot be reached"
    assert warnings[0].startswith(blob_down)
    assert "queue service" not in consumer.text and "poison" not in consumer.text


def test_in_base64_mode_a_payload_too_big_to_travel_inline_points_to_a_lower_threshold(env, qname):
    b64_env = {**env, settings.MESSAGE_ENCODING_VAR: "base64"}
    args = ("--queue", qname, "--count", "1", "--size", "40000", "--threshold", "46080")
    result = run_script(PRODUCER, *args, env=b64_env)
    assert_refused(result, "does not fit inline: message is ")
    assert "lower --threshold (now 46080; the default 32768 fits in either encoding)" in (
        result.stderr
    )
    assert "elsewhere" not in result.stderr
