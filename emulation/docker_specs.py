"""Container specs of the testbed: every docker-compose.yml service, built from a topology.

:func:`container_specs` turns a parsed topology into one :class:`ContainerSpec` per compose
service (broker, central, link-proxies, device-1..N); :mod:`emulation.docker_runtime` runs
them through the Docker SDK, and tests/unit/test_docker_runtime.py compares them with
docker-compose.yml service by service (image, build, command, environment, volumes, ports,
user, labels, depends_on), so the two cannot drift apart. Needs no Docker engine.

Every spec carries compose's labels plus the runtime's: ``epic.testbed`` (the topology's
name), ``epic.rundir`` and ``epic.service``, by which the runtime finds what it started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from epic.topology import Topology

__all__ = [
    "BROKER_IMAGE",
    "BROKER_PORT",
    "CENTRAL_IMAGE",
    "DEVICE_IMAGE",
    "DOCKERFILES",
    "PROXY_BASE_PORT",
    "RESIDENT",
    "RUNTIME_LABELS",
    "ContainerSpec",
    "base_images",
    "container_specs",
]

REPO = Path(__file__).resolve().parents[1]
BROKER_IMAGE = "eclipse-mosquitto:2"
PYTHON_BASE = "python:3.11-slim"


def base_images() -> dict[str, str]:
    """The base images, as compose takes them: $EPIC_PYTHON_BASE and $EPIC_MOSQUITTO_BASE
    (docker/local-base.env names the local stand-ins), else the registry's."""
    return {"python": os.environ.get("EPIC_PYTHON_BASE") or PYTHON_BASE,
            "mosquitto": os.environ.get("EPIC_MOSQUITTO_BASE") or BROKER_IMAGE}

DEVICE_IMAGE = "epic-device"
CENTRAL_IMAGE = "epic-central"
DOCKERFILES = {DEVICE_IMAGE: "devices/Dockerfile", CENTRAL_IMAGE: "central/Dockerfile"}
BROKER_PORT = 1883
PROXY_BASE_PORT = 18830
RESIDENT: tuple[str, ...] = ("broker", "central", "link-proxies")  # start order
ENCODERS_IN_IMAGE = "/models/epic-flatvel-a/manifest.json"
DECODERS_IN_IMAGE = "/app/artifacts/decoders/flatvel-a/manifest.json"  # torch-free (ONNX)
RUNTIME_LABELS = ("epic.testbed", "epic.rundir", "epic.service")  # added to compose's


@dataclass(frozen=True)
class ContainerSpec:
    """One compose service as a container.

    Attributes:
        service: the compose service name, also the container's alias on the network.
        image: tag to run. dockerfile: built from it (repository root context), or None.
        command: overrides the image's command, or None. environment: EPIC_* variables.
        volumes: host path -> {"bind": container path, "mode": "rw" | "ro"}.
        ports: "<port>/tcp" -> host port. user: "uid:gid". labels: compose's plus runtime's.
        depends_on: services started first. resident: False for the replaying devices.
        nano_cpus, mem_limit: the device's hardware class's CPU quota (1e9 per core) and
            memory limit (bytes), as compose's ``cpus:`` and ``mem_limit:``; None: no limit.
    """

    service: str
    image: str
    dockerfile: str | None
    command: tuple[str, ...] | None
    user: str
    environment: dict[str, str] = field(default_factory=dict)
    volumes: dict[str, dict[str, str]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    resident: bool = True
    nano_cpus: int | None = None
    mem_limit: int | None = None

    def container_name(self) -> str:
        """``<testbed>-<service>`` (the testbed name comes from the labels)."""
        return f"{self.labels['epic.testbed']}-{self.service}"

    def run_kwargs(self, client: Any, network: str) -> dict[str, Any]:
        """Keyword arguments for ``client.containers.run`` (detached, on ``network``)."""
        kwargs: dict[str, Any] = {
            "image": self.image, "name": self.container_name(), "detach": True,
            "user": self.user, "environment": dict(self.environment),
            "volumes": dict(self.volumes), "labels": dict(self.labels), "network": network,
            "networking_config": {network: client.api.create_endpoint_config(
                aliases=[self.service])},
        }
        if self.command is not None:
            kwargs["command"] = list(self.command)
        if self.ports:
            kwargs["ports"] = dict(self.ports)
        if self.nano_cpus is not None:
            kwargs["nano_cpus"] = self.nano_cpus
        if self.mem_limit is not None:
            kwargs["mem_limit"] = self.mem_limit
        return kwargs


def container_specs(topology: Topology, rundir: Path, *, data_dir: Path = REPO / "data",
                    user: str | None = None, mode: str = "epic", gathers: int = 10,
                    rate: str = "realtime", broker_host_port: int | None = BROKER_PORT,
                    checkpoint: Path | None = None, raw_checkpoint: Path | None = None,
                    truth: Path | None = None) -> dict[str, ContainerSpec]:
    """Every service of docker-compose.yml for ``topology``, keyed by service name.

    Args:
        rundir: absolute; mounted at the same path everywhere (the conf names absolute paths).
        data_dir: OpenFWI-layout directory mounted read-only at /data in the devices.
        user: "uid:gid" the containers run as (default: this process's, like compose's
            EPIC_UID/EPIC_GID; the generated credentials are mode 0600).
        mode, gathers, rate: the devices' EPIC_MODE, EPIC_GATHERS, EPIC_RATE.
        broker_host_port: host port the broker is published on, or None for none.
        checkpoint, raw_checkpoint, truth: host files for central, mounted read-only at the
            same path; None omits them (central decodes with the image's torch-free decoders,
            which it prefers over checkpoints: the image has no torch).
    """
    rundir = Path(rundir).resolve()
    run = str(rundir)
    user = user or f"{os.getuid()}:{os.getgid()}"
    topo_file = f"{run}/topology.yaml"
    mount = {run: {"bind": run, "mode": "rw"}}

    def labels(service: str, **compose_labels: str) -> dict[str, str]:
        return {**compose_labels, "epic.testbed": topology.testbed, "epic.rundir": run,
                "epic.service": service}

    central_env = {"EPIC_TOPOLOGY": topo_file, "EPIC_RUNDIR": run,
                   "EPIC_DECODER": DECODERS_IN_IMAGE, "EPIC_BROKER_HOST": "broker",
                   "EPIC_BROKER_PORT": str(BROKER_PORT)}
    central_volumes = dict(mount)
    for var, path in (("EPIC_CHECKPOINT", checkpoint), ("EPIC_RAW_CHECKPOINT", raw_checkpoint),
                      ("EPIC_TRUTH", truth)):
        if path is not None:
            host = str(Path(path).resolve())
            central_env[var] = host
            central_volumes[host] = {"bind": host, "mode": "ro"}
    specs = {
        "broker": ContainerSpec(
            "broker", base_images()["mosquitto"], None,
            ("/usr/sbin/mosquitto", "-c", f"{run}/mosquitto.conf"),
            user, volumes=dict(mount), labels=labels("broker", **{"epic.role": "broker"}),
            ports={} if broker_host_port is None else {f"{BROKER_PORT}/tcp": broker_host_port}),
        "central": ContainerSpec(
            "central", CENTRAL_IMAGE, DOCKERFILES[CENTRAL_IMAGE], None, user,
            environment=central_env, volumes=central_volumes,
            labels=labels("central", **{"epic.role": "central"}), depends_on=("broker",)),
        "link-proxies": ContainerSpec(
            "link-proxies", CENTRAL_IMAGE, None,
            ("python", "-m", "emulation.proxy", "--topology", topo_file, "--rundir", run,
             "--broker-host", "broker", "--broker-port", str(BROKER_PORT), "--listen-host",
             "0.0.0.0", "--listen-port", str(PROXY_BASE_PORT)),
            user, volumes=dict(mount), depends_on=("broker", "central"),
            labels=labels("link-proxies", **{"epic.role": "link-proxies",
                                             "epic.listen_base_port": str(PROXY_BASE_PORT)})),
    }
    device_volumes = {**mount, str(Path(data_dir).resolve()): {"bind": "/data", "mode": "ro"}}
    for index, device in enumerate(topology.devices):
        first, last = device.receivers
        hardware = topology.hardware_of(device)
        class_labels = {"epic.hardware": device.hardware} if hardware is not None else {}
        specs[device.id] = ContainerSpec(
            device.id, DEVICE_IMAGE, DOCKERFILES[DEVICE_IMAGE], None, user,
            environment={"EPIC_TOPOLOGY": topo_file, "EPIC_RUNDIR": run,
                         "EPIC_ENCODERS": ENCODERS_IN_IMAGE, "EPIC_DATA": "/data",
                         "EPIC_MODE": mode, "EPIC_GATHERS": str(gathers), "EPIC_RATE": rate,
                         "EPIC_BROKER_HOST": "link-proxies",
                         "EPIC_DEVICE_ID": str(device.number),
                         "EPIC_BROKER_PORT": str(PROXY_BASE_PORT + index)},
            volumes=dict(device_volumes), depends_on=("link-proxies", "central"),
            labels=labels(device.id, **{"epic.role": "device", "epic.device": device.id,
                                        "epic.receivers": f"{first}-{last}",
                                        "epic.link": device.link, **class_labels}),
            resident=False, nano_cpus=hardware.nano_cpus if hardware is not None else None,
            mem_limit=hardware.mem_limit_bytes if hardware is not None else None)
    return specs
