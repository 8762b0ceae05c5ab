"""`docker compose up` on the real engine: N gathers decoded to maps, then `down -v` leaves nothing.

Builds (or reuses) the images on the registry bases when the engine has them (python:3.11-slim,
eclipse-mosquitto:2), else on the local stand-ins of docker/build-local-base.sh (which `make
docker-base` builds before the suite). Runs the generated docker-compose.yml as a project of its
own with EPIC_GATHERS=2 and EPIC_RATE=max, waits (polling) for the `results` service, checks
results.jsonl, the maps and replay.json in $EPIC_RESULTS, then `down -v` and checks that no
container, network or volume of the project remains. SKIPPED, with the reason, without an
engine, without a Compose CLI, or when no base image can be had.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from epic.broker import free_port
from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

GATHERS = 2
LOCAL_BASES = {"EPIC_PYTHON_BASE": "epic-local/python:3.11",
               "EPIC_MOSQUITTO_BASE": "epic-local/mosquitto:2"}
REGISTRY_BASES = {"EPIC_PYTHON_BASE": "python:3.11-slim",
                  "EPIC_MOSQUITTO_BASE": "eclipse-mosquitto:2"}


def _run(args: list[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)


def _engine_problem() -> str | None:
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        info = _run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 20 s"
    return None if info.returncode == 0 else f"no Docker engine ({info.stderr.strip()[:200]})"


def _compose_cli() -> list[str] | None:
    for args in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(args[0]) and _run([*args, "version"], timeout=20).returncode == 0:
            return args
    return None


def _have(image: str) -> bool:
    return _run(["docker", "image", "inspect", image]).returncode == 0


def _bases() -> tuple[dict[str, str] | None, str]:
    """Base images to build on, or None and why not."""
    if all(map(_have, REGISTRY_BASES.values())):
        return REGISTRY_BASES, "registry bases"
    if not all(map(_have, LOCAL_BASES.values())):
        build = _run(["bash", str(REPO / "docker" / "build-local-base.sh")], timeout=1200)
        if build.returncode != 0:
            return None, (f"no base image: {', '.join(REGISTRY_BASES.values())} absent and "
                          f"docker/build-local-base.sh failed: {build.stderr.strip()[-300:]}")
    return LOCAL_BASES, "local bases (docker/build-local-base.sh)"


ENGINE = _engine_problem()
COMPOSE = None if ENGINE else _compose_cli()


@pytest.fixture(scope="module")
def project_env(tmp_path_factory) -> dict[str, str]:
    if ENGINE:
        pytest.skip(f"compose testbed not run: {ENGINE}")
    if COMPOSE is None:
        pytest.skip("compose testbed not run: neither `docker compose` nor docker-compose here")
    bases, why = _bases()
    if bases is None:
        pytest.skip(f"compose testbed not run: {why}")
    results = tmp_path_factory.mktemp("compose") / "results"
    return {**{k: v for k, v in os.environ.items() if not k.startswith("EPIC_")}, **bases,
            "EPIC_GATHERS": str(GATHERS), "EPIC_RATE": "max", "EPIC_RESULTS": str(results),
            "EPIC_DASHBOARD_PORT": str(free_port()),
            "COMPOSE_PROJECT_NAME": f"epictest{os.getpid()}"}


def check_results(results: Path) -> None:
    """The copied results of a containerised run of GATHERS demo gathers in EPIC mode: every
    gather decoded from all devices to a plausible map, a replay summary, no credentials."""
    records = [json.loads(line) for line in (results / "results.jsonl").read_text()
               .splitlines() if line.strip()]
    latent = {r["gather"]: r for r in records if r["mode"] == "latent"}
    assert sorted(latent) == list(range(GATHERS))
    assert not any(r["absent"] or r["incomplete"] for r in latent.values())
    for gather in range(GATHERS):
        velocity = np.load(results / "maps" / f"latent-{gather}.npy")
        assert velocity.shape == (70, 70) and np.isfinite(velocity).all()
        assert 1000 < float(velocity.mean()) < 5000  # m/s
    replay = json.loads((results / "replay.json").read_text())
    assert replay["modes"]["epic"]["gathers"] == GATHERS
    assert replay["modes"]["epic"]["fidelity"]["mae"] < 1.0
    assert not (results / "credentials.json").exists()


def _leftovers(project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    out = {}
    for kind, args in (("containers", ["docker", "ps", "-aq"]),
                       ("networks", ["docker", "network", "ls", "-q"]),
                       ("volumes", ["docker", "volume", "ls", "-q"])):
        out[kind] = _run([*args, "--filter", label]).stdout.split()
    return out


_PROBE = """
import json, os, socket, sys
creds = json.load(open("/run/epic/credentials.json"))
def reach(host, port):
    try:
        socket.create_connection((host, port), 3).close()
        return "connected"
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
print(json.dumps({"users": sorted(creds["passwords"]), "files": sorted(os.listdir("/run/epic")),
                  "proxy": reach("link-proxies", 18830), "broker": reach("broker", 1883),
                  "other_device": reach(sys.argv[1], 8765)}))
"""
_LISTEN = ("import socket, time; s = socket.socket(); s.bind(('0.0.0.0', 8765)); s.listen(); "
           "print('listening', flush=True); time.sleep(300)")


def _check_isolation(compose: list[str], env: dict[str, str]) -> None:
    """A device has only its own credential, reaches its link proxy, and neither the broker
    nor another device (a listener in device-2's network, reachable from the proxies)."""
    listener = _run([*compose, "run", "-d", "--no-deps", "--entrypoint", "python", "device-2",
                     "-c", _LISTEN], env=env, cwd=REPO).stdout.strip().splitlines()[-1]
    try:
        deadline = time.monotonic() + 60
        while "listening" not in _run(["docker", "logs", listener]).stdout:
            assert time.monotonic() < deadline, _run(["docker", "logs", listener]).stderr
            time.sleep(0.2)
        address = _run(["docker", "inspect", "-f",
                        "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
                        listener]).stdout.split()
        assert len(address) == 1, address  # device-2's own network only
        proxies = _run([*compose, "ps", "-q", "link-proxies"], env=env, cwd=REPO).stdout.strip()
        seen = _run(["docker", "exec", proxies, "python", "-c",
                     f"import socket; socket.create_connection(('{address[0]}', 8765), 5)"])
        assert seen.returncode == 0, seen.stderr  # the listener answers on its own network
        probe = _run([*compose, "run", "--rm", "--no-deps", "--entrypoint", "python",
                      "device-1", "-c", _PROBE, address[0]], timeout=120, env=env, cwd=REPO)
        assert probe.returncode == 0, probe.stderr[-2000:]
        found = json.loads(probe.stdout.strip().splitlines()[-1])
    finally:
        _run(["docker", "rm", "-f", listener])
    assert found["users"] == ["device-1"], found  # its own credential, no other
    assert "passwd" not in found["files"] and "acl" not in found["files"], found
    assert found["proxy"] == "connected", found
    assert found["broker"] != "connected" and found["other_device"] != "connected", found


def _check_dashboard(logs: str, env: dict[str, str]) -> None:
    """The dashboard service: on the host's loopback, with init's token, its /metrics count
    the frames the devices sent; without the token it answers 401."""
    from urllib.error import HTTPError
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    line = next(x for x in logs.splitlines() if "dashboard: open http://127.0.0.1:" in x)
    url = line.split("dashboard: open ", 1)[1].strip()
    assert url.startswith(f"http://127.0.0.1:{env['EPIC_DASHBOARD_PORT']}/?token=")
    token = url.split("token=", 1)[1]
    base = f"http://127.0.0.1:{env['EPIC_DASHBOARD_PORT']}"
    with pytest.raises(HTTPError) as refused:
        urlopen(f"{base}/metrics", timeout=10)
    assert refused.value.code == 401
    deadline = time.monotonic() + 60
    while True:  # the server re-reads the run dir every 0.25 s
        text = urlopen(f"{base}/metrics?token={token}", timeout=10).read().decode()
        frames = {s.labels.get("device"): s.value
                  for family in text_string_to_metric_families(text)
                  if family.name == "epic_frames" for s in family.samples
                  if s.name == "epic_frames_total"}
        if frames and sum(frames.values()) >= GATHERS * 5:
            break
        assert time.monotonic() < deadline, text[-2000:]
        time.sleep(0.25)
    assert b"<svg" in urlopen(f"{base}/?token={token}", timeout=10).read()
    for secret in ("credentials.json", "dashboard-token", "passwd"):  # no file is served
        with pytest.raises(HTTPError) as missing:
            urlopen(f"{base}/{secret}?token={token}", timeout=10)
        assert missing.value.code == 404, secret


def test_compose_up_decodes_every_gather_and_down_leaves_nothing(project_env):
    env, project = project_env, project_env["COMPOSE_PROJECT_NAME"]
    compose = [*COMPOSE, "-f", str(REPO / "docker-compose.yml")]
    results = Path(env["EPIC_RESULTS"])
    started = time.monotonic()
    try:
        build = _run([*compose, "build"], timeout=1200, env=env, cwd=REPO)
        assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
        built = time.monotonic()
        # `up -d` returns once every service started; the devices and `results` then run.
        up = _run([*compose, "up", "-d"], timeout=600, env=env, cwd=REPO)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-3000:]
        deadline = time.monotonic() + 300
        while True:  # poll the results service: it exits once central decoded every gather
            cid = _run([*compose, "ps", "-q", "results"], env=env, cwd=REPO).stdout.strip()
            state = _run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}",
                          cid]).stdout.split() if cid else []
            if state and state[0] in ("exited", "dead"):
                break
            assert time.monotonic() < deadline, _run([*compose, "logs", "--tail", "40"],
                                                     env=env, cwd=REPO).stdout
            time.sleep(1)
        logs = _run([*compose, "logs", "--no-color"], env=env, cwd=REPO).stdout
        assert state[1] == "0", logs[-4000:]
        print(f"\ncompose: build {built - started:.0f} s, up -> results "
              f"{time.monotonic() - built:.0f} s")
        print("\n".join(line for line in logs.splitlines() if "results:" in line
                        or "init:" in line))

        check_results(results)
        assert not (results / "passwd").exists()
        assert f"written to {results}" in logs
        assert "generated credentials" in logs
        _check_isolation(compose, env)
        _check_dashboard(logs, env)
    finally:
        down = _run([*compose, "down", "-v", "--remove-orphans", "-t", "5"], timeout=300,
                    env=env, cwd=REPO)
    assert down.returncode == 0, down.stderr[-2000:]
    assert _leftovers(project) == {"containers": [], "networks": [], "volumes": []}
