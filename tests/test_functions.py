"""Working with Azure Functions: AZURE_QUEUE_MESSAGE_ENCODING=base64 makes every script send and
read Base64 text, as the Functions queue trigger expects; a message in the other encoding goes
to poison alone, with a reason that says what to set, and redrive sends it back exactly as its
sender wrote it. patterns/functions/ (a Python v2-model function app) is loaded by the real
`azure-functions` package, as the host's worker loads it (no Functions host runs here): its
trigger and settings must name the queue, poison convention and values of our consumer's
defaults, and its function runs on what our producer really sent, handed over as by the host."""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import re
import types
from pathlib import Path

import azure.functions as func
import pytest
from support import assert_refused, message_count, peek_bodies, run_script, send, wait_until
from test_deploy import default_queue
from test_tracing import spans_of, traced

from patterns.emulator import ROOT
from patterns.helper import BadMessage, codec, connect, consume
from patterns.helper.support import encoding, limits, lines
from patterns.helper.support.settings import MESSAGE_ENCODING_VAR
from patterns.tools import journey

FUNCTIONS = ROOT / "patterns" / "functions"
CONSUMER = "patterns.competing_consumers.consumer"
PRODUCER = "patterns.competing_consumers.producer"


def in_mode(env: dict[str, str], encoding: str) -> dict[str, str]:
    return {**env, MESSAGE_ENCODING_VAR: encoding}


@pytest.fixture
def base64_mode(monkeypatch: pytest.MonkeyPatch):
    """This process in base64 mode (it reads the setting once: forget it before and after)."""
    monkeypatch.setenv(MESSAGE_ENCODING_VAR, "base64")
    encoding.current.cache_clear()
    yield
    encoding.current.cache_clear()


def raw_message(text: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(id="m-1", content=text, dequeue_count=1)


def b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


# --- the setting ------------------------------------------------------------------------------


def test_the_setting_comes_from_the_environment_then_dotenv_and_defaults_to_text(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"{MESSAGE_ENCODING_VAR}=Base64\n")
    assert encoding.setting({}, tmp_path / "none") == "text"
    assert encoding.setting({}, dotenv) == "base64"
    assert encoding.setting({MESSAGE_ENCODING_VAR: "text"}, dotenv) == "text"
    assert encoding.setting({MESSAGE_ENCODING_VAR: " "}, dotenv) == "base64"


def test_a_bad_value_is_one_line_and_exit_2_before_anything_is_sent(env, service, qname):
    result = run_script(PRODUCER, "--queue", qname, env=in_mode(env, "utf8"))
    assert_refused(result, f"{MESSAGE_ENCODING_VAR} in the environment is 'utf8'")
    assert "base64" in result.stderr
    assert qname not in [queue.name for queue in service.list_queues()]


# --- reading and writing, message by message --------------------------------------------------


def test_text_mode_flags_base64_and_reads_plain_text():
    task = json.dumps({"id": "task-1"})
    assert encoding.text_of(task) == task
    with pytest.raises(BadMessage, match=f"looks Base64-encoded.*{MESSAGE_ENCODING_VAR}=base64"):
        encoding.text_of(b64(task))
    # Plain words that happen to be valid Base64 decode to bytes that are not text: not flagged.
    for word in ("test", "hello", "abcd1234", "1234", ""):
        assert encoding.text_of(word) == word
    assert encoding.readable(b64(task)) == (task, True)
    assert encoding.readable(task) == (task, False)
    assert lines.describe(raw_message(b64(task))) == "message m-1 (id task-1)"


def test_base64_mode_sends_base64_and_flags_plain_text(base64_mode):
    body = {"id": "task-1", "note": "größer"}
    sent = codec.encode(body)
    assert json.loads(base64.b64decode(sent, validate=True)) == body
    assert codec.parse_json(raw_message(sent)) == body
    with pytest.raises(BadMessage, match=f"plain, not Base64.*unset {MESSAGE_ENCODING_VAR}"):
        codec.parse_json(raw_message(json.dumps(body)))
    with pytest.raises(BadMessage, match="not of UTF-8"):
        codec.parse_json(raw_message(base64.b64encode(b"\xff\xfe\x00").decode()))


def test_base64_mode_refuses_what_fits_as_text_but_not_once_encoded(base64_mode):
    body = {"id": "big", "data": "x" * 50_000}  # ~50 KB of JSON: fits as text, not as Base64
    assert limits.size_as_sent(json.dumps(body)) < limits.MAX_MESSAGE_BYTES
    with pytest.raises(codec.Unsendable, match=r"bytes as sent \(Base64.*4/3") as refused:
        codec.encode(body)
    assert "64 KiB" in str(refused.value)


# --- end to end against Azurite ---------------------------------------------------------------


def test_base64_producer_to_base64_consumer_and_the_queue_holds_base64(env, start, service, qname):
    b64_env = in_mode(env, "base64")
    produced = run_script(PRODUCER, "--queue", qname, "--count", "3", env=b64_env)
    assert produced.returncode == 0, produced.stderr
    assert "sent and read as Base64" in produced.stdout
    sent = sorted(re.findall(r"\] sent (task-\S+)$", produced.stdout, flags=re.MULTILINE))
    # What a Functions trigger would read: Base64 of our JSON, nothing else.
    raw = peek_bodies(service, qname)
    assert sorted(json.loads(base64.b64decode(text, validate=True))["id"] for text in raw) == sent

    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=b64_env)
    consumer.wait_for(r"\] done task-", count=3)
    assert sorted(m.group(1) for m in consumer.matches(r"\] done (task-\S+)")) == sent
    wait_until(lambda: message_count(service, qname) == 0, what="the queue to be empty")
    assert "poison" not in consumer.text
    assert consumer.stop() == 0


def test_line_wrapped_base64_is_base64_in_either_mode(env, start, service, qname):
    """MIME-style Base64 (76 columns, line breaks): the .NET decoder of the Functions host
    skips white space, so a base64 consumer reads it and a text consumer calls it Base64."""
    task = json.dumps({"id": "wrapped-1", "note": "long enough to need more than one line " * 3})
    wrapped = base64.encodebytes(task.encode()).decode("ascii")  # a line break every 76
    assert wrapped.count("\n") >= 2
    service.create_queue(qname)
    send(service, qname, wrapped)
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0",
                     env_=in_mode(env, "base64"))  # fmt: skip
    consumer.wait_for(r"\] done wrapped-1")
    assert consumer.stop() == 0
    assert encoding.readable(wrapped) == (task, True)
    with pytest.raises(BadMessage, match="looks Base64-encoded"):
        encoding.text_of(wrapped)  # this process is in text mode


MISMATCHES = {
    # consumer's mode, how the stray message is written, what the consumer's line says
    "text-producer-to-base64-consumer": ("base64", lambda text: text, "the text is plain, not"),
    "base64-producer-to-text-consumer": ("text", b64, "the text looks Base64-encoded"),
}


@pytest.mark.parametrize("redrive_in", ["the-consumers-mode", "the-senders-mode"])
@pytest.mark.parametrize("case", MISMATCHES)
def test_a_message_in_the_other_encoding_goes_to_poison_as_it_came_and_redrive_returns_it(
    case, redrive_in, env, start, service, qname
):
    mode, write, said = MISMATCHES[case]
    other = "text" if mode == "base64" else "base64"
    stray = write(json.dumps({"id": "stray-1", "n": 1}))
    service.create_queue(qname)
    send(service, qname, stray)
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=in_mode(env, mode))
    [line] = consumer.wait_for(rf"moved message \S+ \(id stray-1\) to '{qname}-poison': ")
    assert said in line.string
    assert MESSAGE_ENCODING_VAR in line.string

    # Nothing lost: one record, the original text inside exactly as it came, the reason beside.
    wait_until(lambda: message_count(service, qname + "-poison") == 1, what="the poison record")
    [record_text] = peek_bodies(service, qname + "-poison")
    record = json.loads(encoding.readable(record_text)[0])  # the record is in the consumer's mode
    assert record["body"] == stray
    assert said in record["reason"]
    assert record_text != stray

    # The consumer keeps going: the next message in its own encoding is done.
    produced = run_script(PRODUCER, "--queue", qname, "--count", "1", env=in_mode(env, mode))
    assert produced.returncode == 0, produced.stderr
    consumer.wait_for(r"\] done task-001-")
    assert consumer.stop() == 0

    # Redrive, in either mode, sends back the sender's text byte for byte; a consumer in the
    # sender's encoding then does it.
    redrive_mode = mode if redrive_in == "the-consumers-mode" else other
    redrive = run_script("patterns.tools.redrive", qname, env=in_mode(env, redrive_mode))
    assert redrive.returncode == 0, redrive.stderr
    assert f"moved stray-1 back to '{qname}'" in redrive.stdout
    assert peek_bodies(service, qname) == [stray]
    assert message_count(service, qname + "-poison") == 0
    fixed = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=in_mode(env, other))
    fixed.wait_for(r"\] done stray-1")
    assert fixed.stop() == 0


def test_a_journey_is_traced_through_base64_messages(env, start, qname, tmp_path):
    """The trace context travels inside the body: in base64 mode the consumer still finds it,
    so the producer's send and the consumer's work are one trace that journey draws."""
    on = in_mode(traced(env, tmp_path / "traces.jsonl"), "base64")
    consumer = start(CONSUMER, "--queue", qname, "--work-seconds", "0", env_=on)
    produced = run_script(PRODUCER, "--queue", qname, "--count", "1", env=on)
    assert produced.returncode == 0, produced.stderr
    [task_id] = re.findall(r"\] sent (task-\S+)$", produced.stdout, flags=re.MULTILINE)
    consumer.wait_for(rf"\] done {task_id}")
    assert consumer.stop() == 0  # its span is written before it exits
    spans = [s for s in spans_of(tmp_path / "traces.jsonl") if s["attributes"].get("app.id")]
    assert len({s["trace_id"] for s in spans if s["attributes"]["app.id"] == task_id}) == 1
    [drawn] = [j for j in journey.journeys(spans) if j.app_id == task_id]
    assert [hop.role for hop in drawn.hops] == ["producer", "consumer"]


def test_peek_shows_base64_decoded_and_says_so(env, service, qname):
    service.create_queue(qname)
    send(service, qname, b64(json.dumps({"id": "task-9"})))
    result = run_script("patterns.tools.peek", qname, env=env)
    assert result.returncode == 0, result.stderr
    assert "(Base64, shown decoded)" in result.stdout
    assert '"id": "task-9"' in result.stdout


# --- the function app, loaded by the real azure-functions package (no host runs here) --------


def load_function_app() -> types.ModuleType:
    """function_app.py, imported as the Functions host's Python worker imports it: with the real
    `azure-functions` package (the `test` extra installs it), which registers its function."""
    spec = importlib.util.spec_from_file_location("function_app", FUNCTIONS / "function_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def the_function(app: types.ModuleType) -> func.Function:
    [function] = app.app.get_functions()  # what the host indexes: one function
    return function


def timespan(seconds: float) -> str:
    whole = int(seconds)
    assert whole == seconds, "host.json takes whole seconds here"
    return f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def test_the_function_reads_the_queue_our_consumer_reads_from_the_storage_the_settings_name():
    [trigger] = the_function(load_function_app()).get_bindings()
    assert trigger.get_dict_repr()["type"] == "queueTrigger"
    assert trigger.queue_name == default_queue(CONSUMER) == "tasks-queue"
    local = json.loads((FUNCTIONS / "local.settings.json.example").read_text())["Values"]
    assert local["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert local[trigger.connection] == "UseDevelopmentStorage=true"  # Azurite
    assert "azure-functions" in (FUNCTIONS / "requirements.txt").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    dependencies = re.search(r"^dependencies = \[(.*?)^\]", pyproject, re.M | re.S)
    assert dependencies and "azure-functions" not in dependencies.group(1), (
        "the Functions host provides it; only the tests install it"
    )


def test_host_json_maps_our_consumer_defaults_and_conventions():
    queues = json.loads((FUNCTIONS / "host.json").read_text())["extensions"]["queues"]
    assert connect.POISON_SUFFIX == "-poison"  # the trigger's <queue>-poison, fixed there
    assert queues["maxDequeueCount"] == consume.MAX_ATTEMPTS == 5
    assert queues["batchSize"] == consume.BATCH_SIZE
    assert queues["newBatchThreshold"] == 0  # like ours: the next batch when this one is done
    assert queues["visibilityTimeout"] == timespan(consume.RETRY_BACKOFF)  # first retry's wait
    assert queues["maxPollingInterval"] == timespan(consume.IDLE_MAX)
    assert queues["messageEncoding"] == "base64"


def test_the_function_does_our_consumers_work_on_what_our_producer_sent(
    env, service, qname, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)
    app = load_function_app()
    assert app.WORK_SECONDS == 2.0  # consumer.py's --work-seconds default
    monkeypatch.setattr(app, "WORK_SECONDS", 0)
    produced = run_script(
        PRODUCER, "--queue", qname, "--count", "2", "--failing", "1", env=in_mode(env, "base64")
    )
    assert produced.returncode == 0, produced.stderr
    function = the_function(app).get_user_function()
    ran = []
    for received in service.get_queue_client(qname).receive_messages(max_messages=32):
        # What the host hands the function with "messageEncoding": "base64": the decoded
        # body and the trigger's metadata, made into a QueueMessage by the package's converter.
        message = func.queue.QueueMessageInConverter.decode(
            func.meta.Datum(base64.b64decode(received.content, validate=True), "bytes"),
            trigger_metadata={
                "Id": func.meta.Datum(received.id, "string"),
                "DequeueCount": func.meta.Datum(received.dequeue_count, "int"),
                "PopReceipt": func.meta.Datum(received.pop_receipt, "string"),
            },
        )
        try:
            function(message)
            ran.append("done")
        except RuntimeError as error:
            ran.append(str(error))
    assert sorted(ran) == ["done", "the task asked to fail"]
    logged = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("done task-002-") for line in logged), logged
    assert any(re.match(r"took task-001-\S+ \(attempt 1\)$", line) for line in logged), logged


def test_the_function_app_folder_is_all_there():
    names = {path.name for path in FUNCTIONS.iterdir() if not path.name.startswith("__")}
    assert {"function_app.py", "host.json", "local.settings.json.example"} <= names
    assert "local.settings.json" in Path(ROOT / ".gitignore").read_text()
