"""The emulator launcher (patterns/emulator.py) on a port of the learner's choosing, and on a
port that is already taken: by an Azurite (use it) or by another program (pick another)."""

from __future__ import annotations

import os
import re
import socket

from support import assert_refused, learner_env, run_script

from patterns.emulator import Azurite, free_port
from patterns.helper.support.settings import CONNECTION_STRING_VAR

EMULATOR = "patterns.emulator"
PRODUCER = "patterns.competing_consumers.producer"
CLAIM_CHECK = "patterns.claim_check.producer"
PAYMENTS = "patterns.exactly_once.producer"
APPLY = "patterns.exactly_once.consumer"
TABLE = "paymentsemulatortest"


def test_emulator_on_other_ports_prints_the_line_that_points_the_scripts_at_it(start, qname):
    port = free_port()
    blob_port = free_port(besides=port)
    table_port = free_port(port, blob_port)
    emulator = start(
        EMULATOR, "--in-memory", "--port", str(port), "--blob-port", str(blob_port),
        "--table-port", str(table_port), env_=learner_env(),
    )  # fmt: skip
    emulator.wait_for(
        f"queue service ready on http://127.0.0.1:{port}/devstoreaccount1, blob service on "
        f"http://127.0.0.1:{blob_port}/devstoreaccount1, table service on "
        f"http://127.0.0.1:{table_port}/devstoreaccount1",
        timeout=30,
    )
    [bash] = emulator.wait_for(rf'^  export {CONNECTION_STRING_VAR}="(.+)"$')
    emulator.wait_for(rf'^  \$env:{CONNECTION_STRING_VAR}="{re.escape(bash[1])}"$')
    # The line works: with it, a script reaches this emulator.
    env = {**learner_env(), CONNECTION_STRING_VAR: bash[1]}
    result = run_script(PRODUCER, "--queue", qname, "--count", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert f"sent 1 tasks to '{qname}'" in result.stdout
    # ... and its blob service too (claim-check): a big payload goes there.
    result = run_script(CLAIM_CHECK, "--queue", qname, "--count", "1", "--size", "100000", env=env)
    assert result.returncode == 0, result.stderr
    assert "100000 bytes in blob claim-check-payloads/" in result.stdout
    # ... and its table service too (exactly-once): a payment lands in a table there.
    result = run_script(PAYMENTS, "--queue", qname, "--count", "1", env=env)
    assert result.returncode == 0, result.stderr
    consumer = start(APPLY, "--queue", qname, "--table", TABLE, env_=env)
    consumer.wait_for(r"applied \S+ to acct-1")
    assert consumer.stop() == 0
    assert emulator.stop() == 0
    emulator.wait_for("Azurite Blob service successfully closed")  # both stopped, by their PIDs
    emulator.wait_for("Azurite Queue service successfully closed")
    emulator.wait_for("Azurite Table service successfully closed")
    with socket.socket() as sock:  # nothing listens there any more
        assert sock.connect_ex(("127.0.0.1", table_port)) != 0


def test_emulator_stopped_stops_all_three_services(tmp_path):
    with Azurite(log_path=tmp_path / "azurite.log") as emulator:
        pids = [emulator.process.pid, emulator.blob_process.pid, emulator.table_process.pid]
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"process {pid} still runs")


def test_port_taken_by_an_azurite_says_use_it(azurite):
    ports = ("--port", str(azurite.port), "--blob-port", str(azurite.blob_port))
    ports += ("--table-port", str(azurite.table_port))
    result = run_script(EMULATOR, "--in-memory", *ports, timeout=30)
    assert_refused(result, f"port {azurite.port} is already in use by an Azurite")
    assert "use it" in result.stderr
    assert f'export {CONNECTION_STRING_VAR}="{azurite.connection_string}"' in result.stdout


def test_table_port_taken_by_another_program_says_how_to_pick_another(web_port):
    port = free_port()
    result = run_script(
        EMULATOR, "--in-memory", "--port", str(port), "--table-port", str(web_port), timeout=30
    )
    assert_refused(result, f"port {web_port} is already in use by another program")
    assert re.search(r"`python -m patterns.emulator --table-port \d+`", result.stderr)


def test_blob_port_taken_by_another_program_says_how_to_pick_another(web_port):
    port = free_port()
    result = run_script(
        EMULATOR, "--in-memory", "--port", str(port), "--blob-port", str(web_port), timeout=30
    )
    assert_refused(result, f"port {web_port} is already in use by another program")
    assert re.search(r"`python -m patterns.emulator --blob-port \d+`", result.stderr)


def test_port_taken_by_another_program_says_how_to_pick_another(web_port):
    result = run_script(EMULATOR, "--in-memory", "--port", str(web_port), timeout=30)
    assert_refused(result, f"port {web_port} is already in use by another program")
    suggested = int(re.search(r"--port (\d+)", result.stderr)[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", suggested))  # the suggestion is free
    assert "point the scripts at it" in result.stderr
