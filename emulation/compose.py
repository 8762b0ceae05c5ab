"""docker-compose.yml, generated from a topology: ``epic testbed compose`` writes it.

One command, ``docker compose up``, runs the whole testbed (Compose v2, and v1 1.29):

1. ``init`` (epic-central image, as root, no network): generates credentials, ACL and the
   broker conf into the ``run`` volume (:func:`emulation.testbed.prepare_compose_runtime`,
   kept across ups while the topology's devices are unchanged), copies ./topology.yaml there
   (the file the roles read and the faults edit), unpacks the demo gathers, gives the volume
   to the unprivileged user the roles run as, and exits;
2. ``broker`` (Mosquitto 2), ``central`` and ``link-proxies`` (ONE emulation.proxy process:
   devices may share a medium; device k of the topology, 0-based, on port 18830 + k) start;
   the proxies follow ./topology.yaml (``--follow``): a link edited there hot-reloads, as
   ``epic testbed fault degrade-link`` and edits of the run volume's copy do;
   central and the proxies report healthy through their status files in the volume;
   ``dashboard`` serves the live page on the host's loopback (``$EPIC_DASHBOARD_PORT``, 8050;
   its log line gives the URL with the token init generated into the run volume);
3. ``device-1..N`` replay the demo gathers through their link proxies from one shared start
   instant (devices/start_at.py) and exit;
4. ``results`` waits until central decoded every gather, writes a replay summary, copies the
   results (never the credentials) to ./runs/compose (``$EPIC_RESULTS``), owned like
   ./topology.yaml, and logs what happened and where the results are.

Hardware: a device with a hardware class (``hardware:`` in the topology, `epic.hardware`) gets
its class's CPU quota (``cpus:``, Docker's nano_cpus) and memory limit (``mem_limit:``).

Isolation: each device has its own container, its own network ``edge-<id>`` (internal: no
route out) shared only with the link proxies, and its own volume ``device-<id>`` holding its
own credential (init writes a credentials.json with that device's password alone), its
topology copy and its stats. The broker, central and the proxies share ``core``; the ``run``
volume (every credential, the ACL, the broker database) is never mounted in a device. So a
device reaches the broker only through its link proxy, cannot reach another device, and
knows no other credential. Shared with the devices are only ``data`` (the gathers, read-only)
and ``sync`` (the shared start instant). ``docker compose down -v`` removes the containers,
the networks and every volume (the credentials); ./runs/compose stays.

Base images are build arguments: ``EPIC_PYTHON_BASE`` (python:3.11-slim) and
``EPIC_MOSQUITTO_BASE`` (eclipse-mosquitto:2); docker/build-local-base.sh makes local stand-ins
for machines without a registry. Other knobs: ``EPIC_GATHERS``, ``EPIC_RATE``, ``EPIC_MODE``,
``EPIC_DATA`` (OpenFWI-layout dir or packed demo, default ./docker/demo), ``EPIC_RESULTS``.

:func:`compose_text` is pure (no engine, no files); tests/unit/test_compose.py checks that the
committed docker-compose.yml equals ``compose_text(load_topology("topology.yaml"))``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from emulation.docker_specs import BROKER_PORT, DECODERS_IN_IMAGE, PROXY_BASE_PORT
from epic.topology import Topology, load_topology

__all__ = [
    "BROKER_BUILD_IMAGE",
    "CENTRAL_BUILD_IMAGE",
    "COMPOSE_FILE",
    "DEFAULT_GATHERS",
    "DEVICE_BUILD_IMAGE",
    "RESULTS_DIR",
    "RUN_DIR",
    "RUN_USER",
    "compose_config",
    "compose_text",
    "write_compose",
]

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
RUN_DIR = "/run/epic"  # the run volume, at this path in every container
RUN_USER = "10001:10001"  # the roles' user (the images' `epic`); init chowns the volume to it
RESULTS_DIR = "/results"
DATA_DIR = "/data"  # the `data` volume: the gathers to replay and their true maps (read-only)
SYNC_DIR = "/sync"  # the `sync` volume: the devices' shared start instant, nothing else
DEVICES_DIR = "/devices"  # init and results see each device's own volume at DEVICES_DIR/<id>
SOURCE_DIR = "/source"  # init's read-only view of $EPIC_DATA
DASHBOARD_PORT = 8050  # in its container
DASHBOARD_HOST_PORT = "${EPIC_DASHBOARD_PORT:-8050}"  # on the host's loopback
USER_TOPOLOGY_DIR = "/topology"  # the proxies' read-only view of the user's topology folder
DEFAULT_GATHERS = 6  # the shipped demo set (docker/demo)
CENTRAL_BUILD_IMAGE = "epic-central"
DEVICE_BUILD_IMAGE = "epic-device"
BROKER_BUILD_IMAGE = "epic-broker"
PYTHON_BASE = "${EPIC_PYTHON_BASE:-python:3.11-slim}"
MOSQUITTO_BASE = "${EPIC_MOSQUITTO_BASE:-eclipse-mosquitto:2}"
GATHERS = f"${{EPIC_GATHERS:-{DEFAULT_GATHERS}}}"
MODE = "${EPIC_MODE:-epic}"
RATE = "${EPIC_RATE:-realtime}"
HEALTH = {"interval": "2s", "timeout": "10s", "retries": 60}

_HEADER = """\
# GENERATED from {source} by `epic testbed compose` (emulation/compose.py): do not edit by
# hand; edit the topology and run the command again (a unit test checks they agree).
#
#   docker compose up        # builds the images, generates credentials, runs broker, central,
#                            # link proxies and {n} devices, decodes the demo gathers; results
#                            # go to ./runs/compose (`epic report runs/compose --out DIR`)
#   docker compose down -v   # removes containers, networks and the run volume (credentials)
#
# Knobs (environment): EPIC_GATHERS ({gathers}), EPIC_RATE (realtime|max), EPIC_MODE (epic|raw),
# EPIC_DATA (OpenFWI-layout dir, default ./docker/demo), EPIC_RESULTS (./runs/compose),
# EPIC_PYTHON_BASE / EPIC_MOSQUITTO_BASE (base images; docker/build-local-base.sh builds
# local ones for machines without a registry). See emulation/compose.py and README.md.
"""


def _build(dockerfile: str, base: str) -> dict[str, Any]:
    return {"context": ".", "dockerfile": dockerfile, "args": {"BASE": base}}


def _python_check(code: str) -> dict[str, Any]:
    return {"test": ["CMD", "python", "-c", code], **HEALTH}


def compose_config(topology: Topology, topology_file: str = "./topology.yaml") -> dict[str, Any]:
    """The compose file for ``topology`` as a dict (services in start order)."""
    run = f"run:{RUN_DIR}"
    data_ro = f"data:{DATA_DIR}:ro"
    topo = f"{RUN_DIR}/topology.yaml"
    central_build = _build("central/Dockerfile", PYTHON_BASE)
    device_build = _build("devices/Dockerfile", PYTHON_BASE)
    labels = {"epic.testbed": topology.testbed}
    devices = [d.id for d in topology.devices]
    own_volume = {d: f"device-{d.removeprefix('device-')}" for d in devices}
    topology_dir, topology_name = os.path.split(topology_file)
    topology_dir = topology_dir or "."
    edge = {d: f"edge-{d.removeprefix('device-')}" for d in devices}
    after_init = {"init": {"condition": "service_completed_successfully"}}
    services: dict[str, Any] = {
        "init": {
            "build": central_build, "image": CENTRAL_BUILD_IMAGE, "user": "0:0",
            "network_mode": "none",
            "command": ["python", "-m", "emulation.compose_steps", "init", "--topology",
                        "/config/topology.yaml", "--rundir", RUN_DIR, "--data", SOURCE_DIR,
                        "--data-out", DATA_DIR, "--devices-dir", DEVICES_DIR, "--sync-dir",
                        SYNC_DIR, "--gathers", GATHERS, "--owner", RUN_USER],
            "volumes": [run, f"data:{DATA_DIR}", f"sync:{SYNC_DIR}",
                        *(f"{own_volume[d]}:{DEVICES_DIR}/{d}" for d in devices),
                        f"{topology_file}:/config/topology.yaml:ro",
                        f"${{EPIC_DATA:-./docker/demo}}:{SOURCE_DIR}:ro"],
            "labels": {**labels, "epic.role": "init"},
        },
        "broker": {
            "build": _build("broker/Dockerfile", MOSQUITTO_BASE), "image": BROKER_BUILD_IMAGE,
            "user": RUN_USER, "depends_on": after_init,
            "command": ["/usr/sbin/mosquitto", "-c", f"{RUN_DIR}/mosquitto.conf"],
            "volumes": [run], "networks": ["core"],
            "labels": {**labels, "epic.role": "broker"},
        },
        "central": {
            "build": central_build, "image": CENTRAL_BUILD_IMAGE, "user": RUN_USER,
            "depends_on": {**after_init, "broker": {"condition": "service_started"}},
            "environment": {"EPIC_TOPOLOGY": topo, "EPIC_RUNDIR": RUN_DIR,
                            "EPIC_DECODER": DECODERS_IN_IMAGE,
                            "EPIC_TRUTH": DATA_DIR, "EPIC_BROKER_HOST": "broker",
                            "EPIC_BROKER_PORT": str(BROKER_PORT)},
            "volumes": [run, data_ro], "networks": ["core"],
            "healthcheck": _python_check(
                f"import json; assert json.load(open('{RUN_DIR}/central-status.json'))"
                "['connected']"),
            "labels": {**labels, "epic.role": "central"},
        },
        "link-proxies": {
            "build": central_build, "image": CENTRAL_BUILD_IMAGE, "user": RUN_USER,
            "depends_on": {**after_init, "broker": {"condition": "service_started"},
                           "central": {"condition": "service_started"}},
            "command": ["python", "-m", "emulation.proxy", "--topology", topo, "--rundir",
                        RUN_DIR, "--broker-host", "broker", "--broker-port", str(BROKER_PORT),
                        "--listen-host", "0.0.0.0", "--listen-port", str(PROXY_BASE_PORT),
                        "--follow", f"{USER_TOPOLOGY_DIR}/{topology_name}"],
            # the user's topology's folder (not the file: an editor that saves by renaming
            # would leave a file mount on the old version), followed for link changes
            "volumes": [run, f"{topology_dir}:{USER_TOPOLOGY_DIR}:ro"],
            "networks": ["core", *(edge[d] for d in devices)],
            "healthcheck": _python_check(
                f"import glob; assert len(glob.glob('{RUN_DIR}/proxy-*.json')) >= {len(devices)}"),
            "labels": {**labels, "epic.role": "link-proxies",
                       "epic.listen_base_port": str(PROXY_BASE_PORT)},
        },
        "dashboard": {
            "build": central_build, "image": CENTRAL_BUILD_IMAGE, "user": RUN_USER,
            "depends_on": after_init,
            # beyond loopback inside its container, so with the token init wrote; published
            # on the host's loopback only; the run volume read-only: it never writes there
            "command": ["python", "-m", "emulation.dashboard", "--dir", RUN_DIR, "--host",
                        "0.0.0.0", "--port", str(DASHBOARD_PORT), "--token-file",
                        f"{RUN_DIR}/dashboard-token", "--truth", DATA_DIR, "--url-host",
                        "127.0.0.1", "--url-port", DASHBOARD_HOST_PORT],
            "volumes": [f"run:{RUN_DIR}:ro", data_ro], "networks": ["dashboard"],
            "ports": [f"127.0.0.1:{DASHBOARD_HOST_PORT}:{DASHBOARD_PORT}"],
            "labels": {**labels, "epic.role": "dashboard"},
        },
    }
    for index, device in enumerate(topology.devices):
        first, last = device.receivers
        services[device.id] = {
            "build": device_build, "image": DEVICE_BUILD_IMAGE, "user": RUN_USER,
            "depends_on": {"central": {"condition": "service_healthy"},
                           "link-proxies": {"condition": "service_healthy"}},
            "entrypoint": ["python", "-m", "devices.start_at"],
            "environment": {"EPIC_TOPOLOGY": topo, "EPIC_RUNDIR": RUN_DIR,
                            "EPIC_SYNC_DIR": SYNC_DIR,
                            "EPIC_ENCODERS": "/models/epic-flatvel-a/manifest.json",
                            "EPIC_DATA": DATA_DIR, "EPIC_MODE": MODE,
                            "EPIC_GATHERS": GATHERS, "EPIC_RATE": RATE,
                            "EPIC_BROKER_HOST": "link-proxies",
                            "EPIC_BROKER_PORT": str(PROXY_BASE_PORT + index),
                            "EPIC_DEVICE_ID": str(device.number)},
            "volumes": [f"{own_volume[device.id]}:{RUN_DIR}", data_ro, f"sync:{SYNC_DIR}"],
            "networks": [edge[device.id]], "restart": "no",
            "labels": {**labels, "epic.role": "device", "epic.device": device.id,
                       "epic.receivers": f"{first}-{last}", "epic.link": device.link},
        }
        hardware = topology.hardware_of(device)
        if hardware is not None:  # its class: CPU quota (nano_cpus) and memory limit
            services[device.id].update(cpus=hardware.cpus, mem_limit=hardware.mem_limit_bytes)
            services[device.id]["labels"]["epic.hardware"] = device.hardware
    services["results"] = {
        "build": central_build, "image": CENTRAL_BUILD_IMAGE, "user": "0:0",
        "network_mode": "none",
        "depends_on": {d: {"condition": "service_completed_successfully"} for d in devices},
        "command": ["python", "-m", "emulation.compose_steps", "collect", "--rundir", RUN_DIR,
                    "--out", RESULTS_DIR, "--data", DATA_DIR, "--devices-dir", DEVICES_DIR,
                    "--gathers", GATHERS, "--mode", MODE, "--rate", RATE,
                    "--owner-of", "/config/topology.yaml",
                    "--shown-as", "${EPIC_RESULTS:-./runs/compose}"],
        "volumes": [run, data_ro, *(f"{own_volume[d]}:{DEVICES_DIR}/{d}:ro" for d in devices),
                    f"{topology_file}:/config/topology.yaml:ro",
                    f"${{EPIC_RESULTS:-./runs/compose}}:{RESULTS_DIR}"],
        "labels": {**labels, "epic.role": "results"},
    }
    return {
        "services": services,
        "networks": {"core": {"labels": labels}, "dashboard": {"labels": labels},
                     **{edge[d]: {"internal": True, "labels": {**labels, "epic.device": d}}
                        for d in devices}},
        "volumes": {"run": {"labels": labels}, "data": {"labels": labels},
                    "sync": {"labels": labels},
                    **{own_volume[d]: {"labels": {**labels, "epic.device": d}}
                       for d in devices}},
    }


class _Dumper(yaml.SafeDumper):
    """Block style, no anchors; lists of scalars on one line; strings with ':' or '$' quoted."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(x, str | int | float) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = '"' if any(c in data for c in ":$'{}[]#,") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(list, _list)
_Dumper.add_representer(str, _str)


def compose_text(topology: Topology, source: str = "topology.yaml") -> str:
    """The text of docker-compose.yml for ``topology`` (a header, then the YAML)."""
    body = yaml.dump(compose_config(topology, f"./{source}"), Dumper=_Dumper,
                     sort_keys=False, width=100, default_flow_style=False)
    header = _HEADER.format(source=source, n=len(topology.devices), gathers=DEFAULT_GATHERS)
    return header + "\n" + body


def write_compose(topology_path: Path = REPO / "topology.yaml",
                  out: Path = COMPOSE_FILE) -> Path:
    """Write the compose file for ``topology_path`` to ``out``; return ``out``.

    Compose bind-mounts the topology by its path relative to the compose file's directory.
    """
    topology_path, out = Path(topology_path).resolve(), Path(out).resolve()
    topology = load_topology(topology_path)
    source = os.path.relpath(topology_path, out.parent)
    out.write_text(compose_text(topology, source=source))
    return out
