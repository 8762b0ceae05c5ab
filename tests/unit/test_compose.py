"""docker-compose.yml is generated from topology.yaml, and what it runs agrees with the topology.

`docker compose up` alone runs the testbed: init (credentials into the run volume) ->
broker, central, link proxies -> devices -> results. No engine is needed here; `docker compose
config` (or `docker-compose config`) validates the file where a Compose CLI exists.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from emulation.compose import RUN_DIR, compose_config, compose_text
from epic.topology import load_topology
from epic_cli import main
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def topology():
    return load_topology(REPO / "topology.yaml")


def test_the_committed_file_is_generated_from_the_topology(topology):
    assert COMPOSE.read_text() == compose_text(topology), (
        "docker-compose.yml is stale: run `epic testbed compose`")
    assert yaml.safe_load(compose_text(topology)) == compose_config(topology)


def test_the_cli_writes_and_checks_it(tmp_path):
    text = (REPO / "topology.yaml").read_text()
    text = text[:text.index("devices:")] + (
        "devices:\n"
        "  - {id: device-7, receivers: [0, 35], link: wifi, energy: wifi-80211n}\n"
        "  - {id: device-9, receivers: [35, 70], link: wifi, energy: wifi-80211n}\n")
    (tmp_path / "topology.yaml").write_text(text)
    out = tmp_path / "docker-compose.yml"
    assert main(["testbed", "compose", "--topology", str(tmp_path / "topology.yaml"),
                 "--out", str(out)]) == 0
    services = yaml.safe_load(out.read_text())["services"]
    assert [s for s in services if s.startswith("device-")] == ["device-7", "device-9"]
    assert services["device-9"]["environment"]["EPIC_BROKER_PORT"] == "18831"
    assert list(services["results"]["depends_on"]) == ["device-7", "device-9"]
    check = ["testbed", "compose", "--check", "--topology", str(tmp_path / "topology.yaml"),
             "--out", str(out)]
    assert main(check) == 0
    out.write_text(out.read_text() + "# edited\n")
    assert main(check) != 0


def test_one_command_runs_every_step_in_order(compose, topology):
    services = compose["services"]
    devices = [d.id for d in topology.devices]
    assert list(services) == ["init", "broker", "central", "link-proxies", "dashboard",
                              *devices, "results"]
    done = {"condition": "service_completed_successfully"}
    for role in ("broker", "central", "link-proxies", "dashboard"):
        assert services[role]["depends_on"]["init"] == done
    for device in devices:
        assert services[device]["depends_on"] == {
            "central": {"condition": "service_healthy"},
            "link-proxies": {"condition": "service_healthy"}}
        assert "profiles" not in services[device]  # plain `docker compose up` runs them
    assert services["results"]["depends_on"] == dict.fromkeys(devices, done)
    for name, service in services.items():
        # the run volume (every credential) is everywhere but in a device
        if name == "dashboard":  # it reads the run dir and never writes it
            assert f"run:{RUN_DIR}:ro" in service["volumes"]
            assert service["ports"] == ["127.0.0.1:${EPIC_DASHBOARD_PORT:-8050}:8050"]
            continue
        assert (f"run:{RUN_DIR}" in service["volumes"]) == (name not in devices), name
        assert "healthcheck" not in service or name in ("central", "link-proxies")


def test_base_images_are_build_arguments(compose):
    services = compose["services"]
    assert services["broker"]["build"]["args"]["BASE"] == (
        "${EPIC_MOSQUITTO_BASE:-eclipse-mosquitto:2}")
    for name in ("init", "central", "link-proxies", "device-1", "results"):
        assert services[name]["build"]["args"]["BASE"] == "${EPIC_PYTHON_BASE:-python:3.11-slim}"
    for dockerfile, default in (("devices/Dockerfile", "python:3.11-slim"),
                                ("central/Dockerfile", "python:3.11-slim"),
                                ("broker/Dockerfile", "eclipse-mosquitto:2")):
        lines = (REPO / dockerfile).read_text().splitlines()
        assert f"ARG BASE={default}" in lines and "FROM ${BASE}" in lines, dockerfile


def test_no_secret_and_no_torch_in_the_images():
    for dockerfile in ("devices/Dockerfile", "central/Dockerfile", "broker/Dockerfile"):
        code = [line for line in (REPO / dockerfile).read_text().splitlines()
                if not line.lstrip().startswith("#")]
        assert not [line for line in code if "torch" in line or "credentials" in line
                    or "passwd" in line.replace("mosquitto_passwd", "")], dockerfile
    for requirements in ("devices/requirements.txt", "central/requirements.txt",
                         "central/requirements-nodeps.txt"):
        pins = [line for line in (REPO / requirements).read_text().splitlines()
                if line and not line.startswith("#")]
        assert pins and all("==" in pin for pin in pins), requirements
        assert not any(pin.startswith("torch") for pin in pins), requirements


def test_devices_match_the_topology(compose, topology):
    services = compose["services"]
    base = int(services["link-proxies"]["labels"]["epic.listen_base_port"])
    assert str(base) in services["link-proxies"]["command"]
    for index, spec in enumerate(topology.devices):
        service = services[spec.id]
        first, last = spec.receivers
        assert service["labels"]["epic.device"] == spec.id
        assert service["labels"]["epic.receivers"] == f"{first}-{last}", spec.id
        assert service["labels"]["epic.link"] == spec.link, spec.id
        env = service["environment"]
        assert int(env["EPIC_DEVICE_ID"]) == spec.number, spec.id
        assert env["EPIC_BROKER_HOST"] == "link-proxies", spec.id
        assert int(env["EPIC_BROKER_PORT"]) == base + index, spec.id  # the proxy's k-th port
        own = f"edge-{spec.number}"
        assert service["networks"] == [own], spec.id  # the broker is on "core" only
        assert compose["networks"][own]["internal"] is True, own  # no route out
        # its own volume (its own credential), the read-only gathers and the start instant
        assert service["volumes"] == [f"device-{spec.number}:{RUN_DIR}", "data:/data:ro",
                                      "sync:/sync"], spec.id
    assert services["broker"]["networks"] == ["core"]
    assert services["link-proxies"]["networks"] == [
        "core", *(f"edge-{d.number}" for d in topology.devices)]


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
                           "here: `docker compose config` is not run")
def test_docker_compose_accepts_the_file():
    result = subprocess.run([*COMPOSE_CLI, "-f", str(COMPOSE), "config", "-q"],
                            capture_output=True, text=True, check=False,
                            env={"PATH": "/usr/bin:/usr/local/bin:/bin"})
    assert result.returncode == 0, result.stderr
