"""The emulator launcher (patterns/emulator.py) on a port of the learner's choosing, and on a
port that is already taken: by an Azurite (use it) or by another program (pick another)."""

from __future__ import annotations

import re
import socket

from support import assert_refused, learner_env, run_script

from patterns.emulator import free_port
from patterns.helper.settings import CONNECTION_STRING_VAR

EMULATOR = "patterns.emulator"
PRODUCER = "patterns.competing_consumers.producer"


def test_emulator_on_another_port_prints_the_line_that_points_the_scripts_at_it(start, qname):
    port = free_port()
    emulator = start(EMULATOR, "--in-memory", "--port", str(port), env_=learner_env())
    emulator.wait_for(f"ready on http://127.0.0.1:{port}/devstoreaccount1", timeout=30)
    [bash] = emulator.wait_for(rf'^  export {CONNECTION_STRING_VAR}="(.+)"$')
    emulator.wait_for(rf'^  \$env:{CONNECTION_STRING_VAR}="{re.escape(bash[1])}"$')
    # The line works: with it, a script reaches this emulator.
    env = {**learner_env(), CONNECTION_STRING_VAR: bash[1]}
    result = run_script(PRODUCER, "--queue", qname, "--count", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert f"sent 1 tasks to '{qname}'" in result.stdout
    assert emulator.stop() == 0


def test_port_taken_by_an_azurite_says_use_it(azurite):
    result = run_script(EMULATOR, "--in-memory", "--port", str(azurite.port), timeout=30)
    assert_refused(result, f"port {azurite.port} is already in use by an Azurite")
    assert "use it" in result.stderr
    assert f'export {CONNECTION_STRING_VAR}="{azurite.connection_string}"' in result.stdout


def test_port_taken_by_another_program_says_how_to_pick_another(web_port):
    result = run_script(EMULATOR, "--in-memory", "--port", str(web_port), timeout=30)
    assert_refused(result, f"port {web_port} is already in use by another program")
    suggested = int(re.search(r"--port (\d+)", result.stderr)[1])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", suggested))  # the suggestion is free
    assert "point the scripts at it" in result.stderr
