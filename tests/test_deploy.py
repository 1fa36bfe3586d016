"""deploy/ must not drift from the scripts: every manifest parses, the KEDA ScaledObjects watch
exactly the queue the deployed consumer reads by default, and the image and manifests name
exactly the connection variables the scripts read. Nothing here needs a cluster or Docker: the
files are read, and the scripts are asked (--help, a bad connection string) what they use;
one consumer on the test emulator shows that SIGTERM (how Kubernetes scales in) hands its task
back at once, which the grace period in the manifests relies on."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import signal
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import learner_env, peek_bodies, send, wait_until

from patterns.emulator import ROOT

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
MANIFESTS = sorted((DEPLOY / "keda").glob("*.yaml"))
KEDA = "keda.sh/v1alpha1"


def helper_constant(name: str) -> str:
    """A constant of the shared helper, wherever in it (patterns/helper/, support/ too)."""
    helper = importlib.import_module("patterns.helper")
    modules = [helper] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(helper.__path__, "patterns.helper.")
    ]
    for module in modules:
        value = getattr(module, name, None)
        if isinstance(value, str):
            return value
    pytest.fail(f"the helper has no constant {name}")


CONNECTION_STRING_VAR = helper_constant("CONNECTION_STRING_VAR")
ACCOUNT_URL_VAR = helper_constant("ACCOUNT_URL_VAR")


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in of_kind(docs, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"no single {kind} named {name!r}"
    return found[0]


def dockerfile_instruction(name: str) -> str:
    """The last `NAME ...` instruction of deploy/Dockerfile (the one that counts), its argument."""
    lines = re.findall(rf"^{name}\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert lines, f"deploy/Dockerfile has no {name}"
    return lines[-1].strip()


def container_argv(container: dict[str, Any]) -> list[str]:
    """What the container runs: its command/args, or else the image's ENTRYPOINT and CMD."""
    entrypoint = container.get("command") or json.loads(dockerfile_instruction("ENTRYPOINT"))
    args = container.get("args")
    if args is None and "command" not in container:
        args = json.loads(dockerfile_instruction("CMD"))
    return [*entrypoint, *(args or [])]


@cache
def help_text(module: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, f"{module} --help failed:\n{result.stderr}"
    return result.stdout


def default_queue(module: str) -> str:
    """The --queue default a consumer shows in its --help."""
    entries = re.split(r"\n(?=  -)", help_text(module))
    entry = next((e for e in entries if e.lstrip().startswith("--queue")), None)
    assert entry is not None, f"{module} has no --queue option"
    found = re.search(r"default ([a-z0-9][a-z0-9-]*[a-z0-9])", " ".join(entry.split()))
    assert found, f"{module} --help shows no default queue"
    return found.group(1)


def env_names(container: dict[str, Any]) -> set[str]:
    return {variable["name"] for variable in container.get("env", [])}


def test_there_are_manifests_and_each_parses():
    assert DOCKERFILE.is_file()
    assert len(MANIFESTS) >= 3, MANIFESTS
    for path in MANIFESTS:
        docs = documents(path)
        assert docs, f"{path.name} is empty"
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
            assert doc["metadata"]["name"], path.name


def scaled_consumers() -> list[tuple[str, dict[str, Any], dict[str, Any], list[dict]]]:
    """(file name, ScaledObject, the Deployment it scales, all docs of that file)."""
    found = []
    for path in MANIFESTS:
        docs = documents(path)
        for scaled in of_kind(docs, "ScaledObject"):
            target = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
            found.append((path.name, scaled, target, docs))
    return found


def test_both_ways_to_connect_are_there():
    names = [name for name, *_ in scaled_consumers()]
    assert "consumer.yaml" in names, names
    assert "consumer-workload-identity.yaml" in names, names


@pytest.mark.parametrize(
    "name, scaled, deployment, docs",
    [pytest.param(*found, id=found[0]) for found in scaled_consumers()],
)
def test_scaled_object_watches_the_queue_the_consumer_reads(name, scaled, deployment, docs):
    assert scaled["apiVersion"] == KEDA
    spec = scaled["spec"]
    assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "azure-queue"
    metadata = trigger["metadata"]
    assert int(metadata["queueLength"]) > 0
    assert isinstance(metadata["queueLength"], str), "KEDA metadata values are strings"

    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = container_argv(container)
    assert argv[:2] == ["python", "-m"], argv
    module, flags = argv[2], argv[3:]
    assert "--queue" not in flags, "the manifests deploy the consumer on its default queue"
    assert metadata["queueName"] == default_queue(module), (
        f"{name}: KEDA watches {metadata['queueName']!r}, {module} reads {default_queue(module)!r}"
    )
    # ... and the toolbox (status, cleanup) knows that queue as the pattern's.
    from patterns.tools.queues import classify

    assert classify(metadata["queueName"]) is not None

    # SIGTERM = Ctrl+C: a grace period, stated, long enough for a release on a slow service.
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 15 <= grace <= 120


def test_connection_string_variant_names_the_scripts_variable():
    docs = documents(DEPLOY / "keda" / "consumer.yaml")
    (scaled,) = of_kind(docs, "ScaledObject")
    metadata = scaled["spec"]["triggers"][0]["metadata"]
    assert metadata["connectionFromEnv"] == CONNECTION_STRING_VAR
    deployment = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env_names(container) == {CONNECTION_STRING_VAR}
    (variable,) = container["env"]
    reference = variable["valueFrom"]["secretKeyRef"]

    secret = documents(DEPLOY / "keda" / "secret.example.yaml")[0]
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == reference["name"]
    assert set(secret["stringData"]) == {reference["key"]} == {CONNECTION_STRING_VAR}
    value = secret["stringData"][CONNECTION_STRING_VAR]
    assert "AccountKey=<" in value, "the template holds a placeholder, never a key"
    assert not re.search(r"[A-Za-z0-9+/]{40,}={0,2}", value), "that looks like a real key"


def test_workload_identity_variant_signs_in_without_a_key():
    docs = documents(DEPLOY / "keda" / "consumer-workload-identity.yaml")
    (scaled,) = of_kind(docs, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert "connectionFromEnv" not in trigger["metadata"]
    auth = named(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == KEDA
    assert auth["spec"]["podIdentity"]["provider"] == "azure-workload"

    deployment = named(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    account = named(docs, "ServiceAccount", pod["spec"]["serviceAccountName"])
    assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    (container,) = pod["spec"]["containers"]
    # A connection string would win over the account URL: it must not be there.
    assert env_names(container) == {ACCOUNT_URL_VAR}
    url = container["env"][0]["value"]
    assert url == f"https://{trigger['metadata']['accountName']}.queue.core.windows.net"


def test_every_storage_variable_in_deploy_is_one_the_scripts_read():
    files = [DOCKERFILE, *MANIFESTS]
    named_here = {
        name for path in files for name in re.findall(r"AZURE_STORAGE_\w+", path.read_text())
    }
    assert named_here == {CONNECTION_STRING_VAR, ACCOUNT_URL_VAR}


def test_the_consumer_reads_the_variable_the_manifests_set(tmp_path):
    """Not just the constant: a consumer started with a bad value in that variable names it."""
    module = json.loads(dockerfile_instruction("CMD"))[0]
    environment = {**learner_env(), CONNECTION_STRING_VAR: "not-a-connection-string"}
    result = subprocess.run(
        [sys.executable, "-m", module],
        cwd=tmp_path,  # no .env here
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{CONNECTION_STRING_VAR} in the environment is not a valid" in result.stderr


def test_dockerfile_builds_the_package_and_runs_a_consumer_as_non_root():
    assert re.match(r"python:3\.\d+-slim", dockerfile_instruction("FROM"))
    assert dockerfile_instruction("USER") not in {"0", "root"}
    text = DOCKERFILE.read_text()
    assert re.search(r"pip install .*\[entra\]", text), "the entra extra: workload identity"
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert not re.search(r"\b(npm|node|azurite)\b", instructions, re.I), "no emulator in it"
    assert json.loads(dockerfile_instruction("ENTRYPOINT")) == ["python", "-m"]
    module = json.loads(dockerfile_instruction("CMD"))[0]
    assert module == "patterns.competing_consumers.consumer"
    assert "usage:" in help_text(module)


def test_dockerignore_keeps_local_state_and_secrets_out():
    lines = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", "node_modules", ".azurite", ".env", ".git"} <= lines


def test_sigterm_mid_task_releases_it_within_the_grace_period(start, service, qname):
    """What the manifests' terminationGracePeriodSeconds relies on: Kubernetes stops a pod with
    SIGTERM, and the consumer hands the task back at once instead of finishing it."""
    module = json.loads(dockerfile_instruction("CMD"))[0]
    consumer = start(module, "--queue", qname, "--work-seconds", "60", "--visibility-timeout", "60")
    consumer.wait_for("waiting for tasks")
    send(service, qname, {"id": "scaled-in"})
    consumer.wait_for("took scaled-in")

    sent = time.monotonic()
    consumer.send_signal(signal.SIGTERM)
    assert consumer.wait(10) == 0
    assert consumer.matches(r"released message [0-9a-f-]+ \(id scaled-in\)")
    wait_until(lambda: peek_bodies(service, qname) != [], 10, "the task visible again")
    assert [json.loads(body)["id"] for body in peek_bodies(service, qname)] == ["scaled-in"]
    assert time.monotonic() - sent < 10, "back long before the 60 s visibility timeout"
