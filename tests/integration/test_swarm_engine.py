"""`docker stack deploy` of docker-stack.yml on a single-node Docker Swarm, on the real engine.

Joins a swarm (`docker swarm init`) only if the engine is in none, labels the node for devices
(epic.devices=true) unless it already is, builds or reuses the images exactly as
test_compose_engine.py does (registry bases, else the local stand-ins of
docker/build-local-base.sh),
writes the stack's secret files with the epic-central image, deploys with EPIC_GATHERS=2 and
EPIC_RATE=max, and polls the `results` service until it exits: central decoded every gather.
Then `docker stack rm`, polling until the stack's services, containers, networks, secrets and
config are gone, removes its `run` volume, the node label if it added it, and leaves the swarm
(and removes the docker_gwbridge network the swarm made) only if it joined: the engine ends as
it began. SKIPPED, with the reason, without an engine, a Compose CLI (to build), a base image,
or when the engine cannot start a swarm or is a swarm worker.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

import pytest

from tests.conftest import REPO
from tests.integration.test_compose_engine import (
    COMPOSE,
    ENGINE,
    GATHERS,
    _bases,
    _run,
    check_results,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

STACK_FILE = REPO / "docker-stack.yml"
LABEL = "epic.devices"


def _until(predicate: Callable[[], bool], timeout_s: float, what: str,
           poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:.0f} s"
        time.sleep(poll_s)


def _info(field: str) -> str:
    return _run(["docker", "info", "--format", "{{" + field + "}}"]).stdout.strip()


def _swarm_problem_or_join() -> tuple[str | None, bool]:
    """(why no swarm test can run, or None; whether this test joined a swarm)."""
    state = _info(".Swarm.LocalNodeState")
    if state == "active":
        if _info(".Swarm.ControlAvailable") != "true":
            return "this engine is a swarm worker: a stack deploys from a manager", False
        return None, False
    if state != "inactive":
        return f"the engine's swarm state is {state!r}", False
    init = _run(["docker", "swarm", "init"], timeout=60)
    if init.returncode != 0 and "advertise" in init.stderr:  # several addresses: pick one
        init = _run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], timeout=60)
    if init.returncode != 0:
        return f"`docker swarm init` failed: {init.stderr.strip()[:300]}", False
    return None, True


def _namespaced(kind: str, stack: str) -> list[str]:
    args = {"services": ["docker", "service", "ls", "-q"],
            "containers": ["docker", "ps", "-aq"],
            "networks": ["docker", "network", "ls", "-q"],
            "secrets": ["docker", "secret", "ls", "-q"],
            "configs": ["docker", "config", "ls", "-q"]}[kind]
    return _run([*args, "--filter", f"label=com.docker.stack.namespace={stack}"]).stdout.split()


@pytest.fixture(scope="module")
def swarm():
    """A manager node labelled for devices; afterwards the engine as it was."""
    if ENGINE:
        pytest.skip(f"swarm testbed not run: {ENGINE}")
    if COMPOSE is None:
        pytest.skip("swarm testbed not run: neither `docker compose` nor docker-compose here "
                    "(the images are built with it)")
    bases, why = _bases()
    if bases is None:
        pytest.skip(f"swarm testbed not run: {why}")
    networks_before = set(_run(["docker", "network", "ls", "--format", "{{.Name}}"])
                          .stdout.split())
    problem, joined = _swarm_problem_or_join()
    if problem:
        pytest.skip(f"swarm testbed not run: {problem}")
    node = _info(".Swarm.NodeID")
    labels = json.loads(_run(["docker", "node", "inspect", node, "--format",
                              "{{json .Spec.Labels}}"]).stdout or "{}") or {}
    labelled = labels.get(LABEL) != "true"
    try:
        if labelled:
            update = _run(["docker", "node", "update", "--label-add", f"{LABEL}=true", node])
            assert update.returncode == 0, update.stderr
        yield bases, joined
    finally:
        if labelled and not joined:
            _run(["docker", "node", "update", "--label-rm", LABEL, node])
        if joined:
            leave = _run(["docker", "swarm", "leave", "--force"], timeout=120)
            assert leave.returncode == 0, leave.stderr
            if "docker_gwbridge" not in networks_before:  # the swarm made it; leave keeps it
                _until(lambda: _run(["docker", "network", "rm", "docker_gwbridge"])
                       .returncode == 0 or "docker_gwbridge" not in _run(
                           ["docker", "network", "ls", "--format", "{{.Name}}"]).stdout,
                       60, "docker_gwbridge removal")
            assert _info(".Swarm.LocalNodeState") == "inactive"


def test_stack_deploy_decodes_every_gather_and_rm_leaves_nothing(swarm, tmp_path):
    bases, joined = swarm
    stack = f"epicswarm{os.getpid()}"
    secrets, results = tmp_path / "secrets", tmp_path / "results"
    results.mkdir()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("EPIC_")}, **bases,
           "EPIC_GATHERS": str(GATHERS), "EPIC_RATE": "max", "EPIC_START_LEAD_S": "3",
           "EPIC_SECRETS": str(secrets), "EPIC_RESULTS": str(results)}
    started = time.monotonic()
    try:
        build = _run([*COMPOSE, "-f", str(REPO / "docker-compose.yml"), "build"], timeout=1200,
                     env=env, cwd=REPO)
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
        built = time.monotonic()
        made = _run(["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}",
                     "--network", "none", "-v", f"{tmp_path}:/out",
                     "-v", f"{REPO / 'topology.yaml'}:/config/topology.yaml:ro", "epic-central",
                     "python", "-m", "emulation.swarm", "secrets", "--topology",
                     "/config/topology.yaml", "--out", "/out/secrets"], timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
        deploy = _run(["docker", "stack", "deploy", "-c", str(STACK_FILE), stack], env=env,
                      cwd=REPO, timeout=300)
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr

        def results_exited() -> bool:
            state = _run(["docker", "service", "ps", f"{stack}_results", "--format",
                          "{{.CurrentState}}"]).stdout.split()
            return bool(state) and state[0] in ("Complete", "Failed", "Rejected", "Shutdown")

        try:
            _until(results_exited, 300, "exit of the results service", poll_s=1.0)
        finally:
            logs = {s: _run(["docker", "service", "logs", "--no-task-ids", "--raw",
                             f"{stack}_{s}"]).stdout
                    for s in ("init", "gate", "device-1", "central", "results")}
        state = _run(["docker", "service", "ps", f"{stack}_results", "--format",
                      "{{.CurrentState}} {{.Error}}"]).stdout
        assert state.startswith("Complete"), state + logs["results"][-3000:] + logs["central"][
            -3000:]
        print(f"\nswarm: build {built - started:.0f} s, secrets + deploy -> results "
              f"{time.monotonic() - built:.0f} s")
        print("\n".join(line for s in ("init", "gate", "results") for line in
                        logs[s].splitlines() if "init:" in line or "gate:" in line
                        or "results:" in line))

        check_results(results)
        # one start instant for every device, from the gate; each device holds its own secret
        starts = {line.rsplit("starts at ", 1)[1].split()[0] for line in
                  logs["gate"].splitlines() if "starts at" in line}
        assert len(starts) == 1, logs["gate"]
        assert "shared start" in logs["device-1"]
        for number in range(1, 6):
            spec = json.loads(_run(["docker", "service", "inspect", f"{stack}_device-{number}",
                                    "--format", "{{json .Spec.TaskTemplate.ContainerSpec}}"])
                              .stdout)
            assert [s["SecretName"] for s in spec["Secrets"]] == [f"{stack}_device-{number}"]
        own = json.loads((secrets / "device-1.json").read_text())
        assert list(own["passwords"]) == ["device-1"]
    finally:
        removed = _run(["docker", "stack", "rm", stack], timeout=120)
        for kind in ("services", "containers", "networks", "secrets", "configs"):
            _until(lambda kind=kind: not _namespaced(kind, stack), 120, f"removal of the "
                   f"stack's {kind}")
        _until(lambda: _run(["docker", "volume", "rm", f"{stack}_run"]).returncode == 0
               or _run(["docker", "volume", "inspect", f"{stack}_run"]).returncode != 0,
               60, "removal of the run volume")
    assert removed.returncode == 0, removed.stderr
    assert _run(["docker", "volume", "inspect", f"{stack}_run"]).returncode != 0
    print(f"swarm: whole test {time.monotonic() - started:.0f} s (joined the swarm: {joined})")
