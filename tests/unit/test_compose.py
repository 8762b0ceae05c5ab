"""docker-compose.yml agrees with topology.yaml: services, device ids, receivers and ports."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from epic.topology import load_topology
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def topology():
    return load_topology(REPO / "topology.yaml")


def test_roles_are_present(compose):
    services = compose["services"]
    assert {"broker", "central", "link-proxies"} <= set(services)
    assert services["broker"]["image"].startswith("eclipse-mosquitto:2")
    assert "mosquitto.conf" in " ".join(services["broker"]["command"])


def test_devices_match_the_topology(compose, topology):
    devices = {name: s for name, s in compose["services"].items()
               if s.get("labels", {}).get("epic.role") == "device"}
    assert sorted(devices) == sorted(d.id for d in topology.devices)
    base = int(compose["services"]["link-proxies"]["labels"]["epic.listen_base_port"])
    assert str(base) in compose["services"]["link-proxies"]["command"]
    for index, spec in enumerate(topology.devices):
        service = devices[spec.id]
        first, last = spec.receivers
        assert service["labels"]["epic.device"] == spec.id
        assert service["labels"]["epic.receivers"] == f"{first}-{last}", spec.id
        assert service["labels"]["epic.link"] == spec.link, spec.id
        env = service["environment"]
        assert int(env["EPIC_DEVICE_ID"]) == spec.number, spec.id
        assert env["EPIC_BROKER_HOST"] == "link-proxies", spec.id
        assert int(env["EPIC_BROKER_PORT"]) == base + index, spec.id  # the proxy's k-th port


def test_every_role_mounts_the_rundir_at_the_same_path(compose):
    for name, service in compose["services"].items():
        mounts = [v for v in service.get("volumes", []) if "EPIC_RUNDIR" in v]
        assert mounts, name
        host, container = mounts[0].split(":${")
        assert "${" + container == host, name


def _compose_cli() -> list[str] | None:
    """`docker compose` (plugin) or `docker-compose`, whichever answers `version` within 10 s.

    `config` only parses and interpolates the file, so it needs no Docker engine.
    """
    for args in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(args[0]) is None:
            continue
        try:
            if subprocess.run([*args, "version"], capture_output=True, check=False,
                              timeout=10).returncode == 0:
                return args
        except subprocess.TimeoutExpired:
            continue
    return None


COMPOSE_CLI = _compose_cli()


@pytest.mark.skipif(COMPOSE_CLI is None,
                    reason="neither the docker compose plugin nor docker-compose is installed "
                           "here: `docker compose config` is not run (and no engine for `up`)")
def test_docker_compose_accepts_the_file(tmp_path):
    env = {"EPIC_RUNDIR": str(tmp_path), "PATH": "/usr/bin:/usr/local/bin:/bin"}
    result = subprocess.run([*COMPOSE_CLI, "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, env=env, check=False)
    assert result.returncode == 0, result.stderr
