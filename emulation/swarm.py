"""docker-stack.yml, generated from a topology (``epic testbed stack``), and its steps.

The same services as docker-compose.yml, for ``docker stack deploy`` on a Docker Swarm. A stack
ignores ``build:``, ``depends_on`` and ``service_completed_successfully``, has no bind-mounted
run directory shared across hosts, and places tasks on nodes; so:

* **Images are built first** (``docker compose build``; for more than one host, tagged and
  pushed to a registry every node can pull from: ``EPIC_IMAGE_PREFIX``, e.g.
  ``registry.example:5000/``).
* **Credentials are Swarm secrets.** ``python -m emulation.swarm secrets --out DIR`` (in the
  epic-central image, which has mosquitto_passwd) writes the broker's files (credentials.json,
  passwd, acl, mosquitto.conf), one ``device-<n>.json`` per device holding only that device's
  password, and a random ``deploy-id``. ``docker stack deploy`` creates one secret per file
  (``<stack>_device-1``, ...), Swarm ships each, encrypted, only to the node that runs a task
  that names it, and ``docker stack rm`` deletes them. A device's node never sees another
  device's credential, nor the broker's.
* **The topology is a Swarm config**, readable on every node.
* **Ordering comes from the services.** ``init`` (manager, one-shot) copies the broker files
  into the manager's ``run`` volume, runs :func:`emulation.compose_steps.init` (topology, demo
  gathers, ownership) and writes ``swarm-ready`` holding the deploy id. Broker, central, the
  link proxies, ``gate`` and ``results`` wait for that file to hold *their* deploy id (so a
  stale volume from an earlier deploy cannot start them early). ``gate`` (manager) waits until
  central is connected and every link proxy reports, then answers each device one shared
  start instant (the first request + ``EPIC_START_LEAD_S``); devices (devices/swarm_entry.py)
  poll it before they stream, as compose's shared start does through a file.
* **One-shots** (init, device-N, results) have ``restart_policy: condition: none``; the
  resident roles restart on failure.
* **Placement**: init, broker, central, link-proxies, gate and results on a manager
  (``node.role == manager``: they share the node-local ``run`` volume); devices on nodes
  labelled ``epic.devices=true`` (``docker node update --label-add epic.devices=true NODE``);
  ``--pin`` adds one label per device (``epic.device-3=true``) to place each one.
* **Networks** are attachable overlays: ``core`` (broker, central, link proxies) and one
  ``edge-<device>`` per device (its link proxy and the gate), so a device reaches the broker
  only through its link proxy and no other device. Services resolve by DNS round robin
  (``endpoint_mode: dnsrr``): no IPVS virtual IP, whose idle timeout cuts long-lived MQTT
  connections.
* **Data**: each device node reads its gathers from ``EPIC_DATA`` (default ./docker/demo,
  packed or OpenFWI layout) bind-mounted read-only: the same path must exist on every device
  node (a sensor's own recordings, in a real deployment). Devices keep their run files on a
  tmpfs.
* **Results**: ``results`` (manager) waits until central decoded every gather and copies the
  results to ``EPIC_RESULTS`` (default ./runs/swarm, which must exist on the manager).

Deploy (see docs/deployment.md)::

    docker compose build
    docker run --rm -v "$PWD/runs/swarm:/out" epic-central \
        python -m emulation.swarm secrets --topology /app/topology.yaml --out /out/secrets
    docker node update --label-add epic.devices=true "$(docker node ls -q --filter role=manager)"
    mkdir -p runs/swarm && docker stack deploy -c docker-stack.yml epic
    docker service logs -f epic_results
    docker stack rm epic && docker volume rm epic_run   # then: rm -r runs/swarm/secrets

:func:`stack_text` is pure; tests/unit/test_swarm.py checks the committed docker-stack.yml.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets as _secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from emulation.compose import (
    BROKER_BUILD_IMAGE,
    CENTRAL_BUILD_IMAGE,
    DEFAULT_GATHERS,
    DEVICE_BUILD_IMAGE,
    GATHERS,
    MODE,
    RATE,
    RESULTS_DIR,
    RUN_DIR,
    RUN_USER,
    _Dumper,
    _python_check,
    compose_config,
)
from emulation.docker_specs import BROKER_PORT, DECODERS_IN_IMAGE, PROXY_BASE_PORT
from epic.errors import InputError
from epic.rundir import RunDir
from epic.topology import Topology, load_topology

__all__ = [
    "DEVICE_LABEL",
    "GATE_PORT",
    "STACK_FILE",
    "main",
    "make_secrets",
    "stack_config",
    "stack_text",
    "write_stack",
]

log = logging.getLogger("swarm")

REPO = Path(__file__).resolve().parents[1]
STACK_FILE = REPO / "docker-stack.yml"
GATE_PORT = 18820  # the start gate, on every edge network
DEVICE_LABEL = "epic.devices"  # node label: `docker node update --label-add epic.devices=true`
READY_FILE = "swarm-ready"  # in the run volume: the deploy id, written last by init
SECRETS_DIR = "${EPIC_SECRETS:-./runs/swarm/secrets}"
RESULTS = "${EPIC_RESULTS:-./runs/swarm}"
PREFIX = "${EPIC_IMAGE_PREFIX:-}"
BROKER_FILES = ("credentials.json", "passwd", "acl", "mosquitto.conf")
DEPLOY_ID = "deploy-id"
SECRETS_IN = "/run/secrets"
CONFIG_TOPOLOGY = "/config/topology.yaml"
MANAGER = ["node.role == manager"]
ONE_SHOT = {"condition": "none"}
RESIDENT = {"condition": "on-failure", "delay": "2s"}
RESULTS_TIMEOUT_S = 600

_HEADER = """\
# GENERATED from {source} by `epic testbed stack` (emulation/swarm.py): do not edit by hand;
# edit the topology and run the command again (a unit test checks they agree).
#
# Docker Swarm: `docker stack deploy` ignores build:, so build (and, for several hosts, push)
# the images first, then make the credentials (one Swarm secret per device) and deploy:
#
#   docker compose build
#   docker run --rm -v "$PWD/runs/swarm:/out" epic-central \\
#       python -m emulation.swarm secrets --topology /app/topology.yaml --out /out/secrets
#   docker node update --label-add {label}=true NODE     # every node that may run devices
#   mkdir -p runs/swarm && docker stack deploy -c docker-stack.yml epic
#   docker service logs -f epic_results                   # results land in ./runs/swarm
#   docker stack rm epic && docker volume rm epic_run     # and rm -r runs/swarm/secrets
#
# Knobs (environment, read by `docker stack deploy`): EPIC_GATHERS ({gathers}), EPIC_RATE,
# EPIC_MODE, EPIC_DATA (on every device node and the manager), EPIC_RESULTS, EPIC_SECRETS,
# EPIC_START_LEAD_S, EPIC_IMAGE_PREFIX (registry/ for several hosts). Secret modes are
# decimal (256 = 0400). See docs/deployment.md.
"""


def _image(name: str) -> str:
    return f"{PREFIX}{name}"


def _secret(source: str, target: str, uid: str = "10001") -> dict[str, Any]:
    return {"source": source, "target": target, "uid": uid, "gid": uid, "mode": 0o400}


def _deploy(restart: dict[str, Any], constraints: list[str]) -> dict[str, Any]:
    return {"endpoint_mode": "dnsrr", "restart_policy": restart,
            "placement": {"constraints": constraints}}


def _after_init(*command: str) -> list[str]:
    """Run ``command`` once init wrote this deploy's id to the run volume (python roles)."""
    return ["python", "-m", "emulation.swarm", "after-init", "--rundir", RUN_DIR,
            "--deploy-id", f"{SECRETS_IN}/{DEPLOY_ID}", "--", *command]


def _device_limits(service: dict[str, Any]) -> dict[str, Any] | None:
    """A compose device service's CPU quota and memory limit (its hardware class), as Swarm
    resource limits."""
    limits = dict(service.get("deploy", {}).get("resources", {}).get("limits", {}))
    if service.get("cpus") is not None:
        limits["cpus"] = str(service["cpus"])
    if service.get("mem_limit") is not None:
        limits["memory"] = str(service["mem_limit"])
    return {"limits": limits} if limits else None


def stack_config(topology: Topology, topology_file: str = "./topology.yaml",
                 pin: bool = False) -> dict[str, Any]:
    """The stack file for ``topology`` as a dict. ``pin``: one node label per device too."""
    run = f"run:{RUN_DIR}"
    labels = {"epic.testbed": topology.testbed}
    n = len(topology.devices)
    edges = [f"edge-{d.id}" for d in topology.devices]
    deploy_id = _secret(DEPLOY_ID, DEPLOY_ID)
    topo_config = [{"source": "topology", "target": CONFIG_TOPOLOGY}]
    topo = f"{RUN_DIR}/topology.yaml"
    services: dict[str, Any] = {
        "init": {
            "image": _image(CENTRAL_BUILD_IMAGE), "user": "0:0",
            "command": ["python", "-m", "emulation.swarm", "init", "--secrets", SECRETS_IN,
                        "--topology", CONFIG_TOPOLOGY, "--rundir", RUN_DIR, "--data", "/data",
                        "--gathers", GATHERS, "--owner", RUN_USER],
            "volumes": [run, "${EPIC_DATA:-./docker/demo}:/data:ro"],
            "configs": topo_config,
            "secrets": [*(_secret(f, f, "0") for f in BROKER_FILES), _secret(DEPLOY_ID,
                                                                             DEPLOY_ID, "0")],
            "networks": ["core"],
            "labels": {**labels, "epic.role": "init"},
            "deploy": _deploy(ONE_SHOT, MANAGER),
        },
        "broker": {
            "image": _image(BROKER_BUILD_IMAGE), "user": RUN_USER,
            # sh: Mosquitto's image (busybox) and the local Debian stand-in; $$ is the stack
            # file's escape for a literal $
            "command": ["sh", "-c", f"until [ \"$$(cat {RUN_DIR}/{READY_FILE} 2>/dev/null)\" "
                        f"= \"$$(cat {SECRETS_IN}/{DEPLOY_ID})\" ]; do sleep 0.2; done; "
                        f"exec /usr/sbin/mosquitto -c {RUN_DIR}/mosquitto.conf"],
            "volumes": [run], "secrets": [deploy_id], "networks": ["core"],
            "labels": {**labels, "epic.role": "broker"},
            "deploy": _deploy(RESIDENT, MANAGER),
        },
        "central": {
            "image": _image(CENTRAL_BUILD_IMAGE), "user": RUN_USER,
            "command": _after_init("python", "-m", "central.service"),
            "environment": {"EPIC_TOPOLOGY": topo, "EPIC_RUNDIR": RUN_DIR,
                            "EPIC_DECODER": DECODERS_IN_IMAGE,
                            "EPIC_TRUTH": f"{RUN_DIR}/data", "EPIC_BROKER_HOST": "broker",
                            "EPIC_BROKER_PORT": str(BROKER_PORT)},
            "volumes": [run], "secrets": [deploy_id], "networks": ["core"],
            "healthcheck": _python_check(
                f"import json; assert json.load(open('{RUN_DIR}/central-status.json'))"
                "['connected']"),
            "labels": {**labels, "epic.role": "central"},
            "deploy": _deploy(RESIDENT, MANAGER),
        },
        "link-proxies": {
            "image": _image(CENTRAL_BUILD_IMAGE), "user": RUN_USER,
            "command": _after_init(
                "python", "-m", "emulation.proxy", "--topology", topo, "--rundir", RUN_DIR,
                "--broker-host", "broker", "--broker-port", str(BROKER_PORT), "--listen-host",
                "0.0.0.0", "--listen-port", str(PROXY_BASE_PORT)),
            "volumes": [run], "secrets": [deploy_id], "networks": ["core", *edges],
            "healthcheck": _python_check(
                f"import glob; assert len(glob.glob('{RUN_DIR}/proxy-*.json')) >= {n}"),
            "labels": {**labels, "epic.role": "link-proxies",
                       "epic.listen_base_port": str(PROXY_BASE_PORT)},
            "deploy": _deploy(RESIDENT, MANAGER),
        },
        "gate": {
            "image": _image(CENTRAL_BUILD_IMAGE), "user": RUN_USER,
            "command": ["python", "-m", "emulation.swarm", "gate", "--rundir", RUN_DIR,
                        "--deploy-id", f"{SECRETS_IN}/{DEPLOY_ID}", "--devices", str(n),
                        "--port", str(GATE_PORT), "--lead-s", "${EPIC_START_LEAD_S:-10}"],
            "volumes": [run], "secrets": [deploy_id], "networks": edges,
            "labels": {**labels, "epic.role": "gate"},
            "deploy": _deploy(RESIDENT, MANAGER),
        },
    }
    composed = compose_config(topology)["services"]  # the same devices as `docker compose up`
    for index, device in enumerate(topology.devices):
        first, last = device.receivers
        service = composed.get(device.id, {})
        constraints = [f"node.labels.{DEVICE_LABEL} == true"]
        if pin:
            constraints.append(f"node.labels.epic.{device.id} == true")
        deploy = _deploy(ONE_SHOT, constraints)
        resources = _device_limits(service)
        if resources:
            deploy["resources"] = resources
        services[device.id] = {
            "image": _image(DEVICE_BUILD_IMAGE), "user": RUN_USER,
            "entrypoint": ["python", "-m", "devices.swarm_entry"],
            "environment": {"EPIC_TOPOLOGY": CONFIG_TOPOLOGY, "EPIC_RUNDIR": RUN_DIR,
                            "EPIC_CREDENTIALS": f"{SECRETS_IN}/credentials",
                            "EPIC_SOURCE_DATA": "/data",
                            "EPIC_START_GATE": f"gate:{GATE_PORT}",
                            "EPIC_ENCODERS": "/models/epic-flatvel-a/manifest.json",
                            "EPIC_MODE": MODE, "EPIC_GATHERS": GATHERS, "EPIC_RATE": RATE,
                            "EPIC_BROKER_HOST": "link-proxies",
                            "EPIC_BROKER_PORT": str(PROXY_BASE_PORT + index),
                            "EPIC_DEVICE_ID": str(device.number)},
            "volumes": [{"type": "tmpfs", "target": RUN_DIR},
                        "${EPIC_DATA:-./docker/demo}:/data:ro"],
            "configs": topo_config,
            "secrets": [_secret(device.id, "credentials")],
            "networks": [f"edge-{device.id}"],
            "labels": {**labels, "epic.role": "device", "epic.device": device.id,
                       "epic.receivers": f"{first}-{last}", "epic.link": device.link,
                       **service.get("labels", {})},
            "deploy": deploy,
        }
    services["results"] = {
        "image": _image(CENTRAL_BUILD_IMAGE), "user": "0:0",
        "command": _after_init(
            "python", "-m", "emulation.compose_steps", "collect", "--rundir", RUN_DIR,
            "--out", RESULTS_DIR, "--gathers", GATHERS, "--mode", MODE, "--rate", RATE,
            "--owner-of", RESULTS_DIR, "--shown-as", RESULTS,
            "--timeout-s", str(RESULTS_TIMEOUT_S), "--deployment", "swarm"),
        "volumes": [run, f"{RESULTS}:{RESULTS_DIR}"], "secrets": [deploy_id],
        "networks": ["core"],
        "labels": {**labels, "epic.role": "results"},
        "deploy": _deploy(ONE_SHOT, MANAGER),
    }
    overlay = {"driver": "overlay", "attachable": True, "labels": labels}
    secret_files = {f: {"file": f"{SECRETS_DIR}/{f}"} for f in (*BROKER_FILES, DEPLOY_ID)}
    secret_files.update({d.id: {"file": f"{SECRETS_DIR}/{d.id}.json"}
                         for d in topology.devices})
    return {
        "version": "3.8",
        "services": services,
        "networks": {"core": overlay, **{e: overlay for e in edges}},
        "volumes": {"run": {"labels": labels}},
        "configs": {"topology": {"file": topology_file}},
        "secrets": secret_files,
    }


def stack_text(topology: Topology, source: str = "topology.yaml", pin: bool = False) -> str:
    """The text of docker-stack.yml for ``topology`` (a header, then the YAML)."""
    body = yaml.dump(stack_config(topology, f"./{source}", pin), Dumper=_Dumper,
                     sort_keys=False, width=100, default_flow_style=False)
    header = _HEADER.format(source=source, label=DEVICE_LABEL, gathers=DEFAULT_GATHERS)
    return header + "\n" + body


def write_stack(topology_path: Path = REPO / "topology.yaml", out: Path = STACK_FILE,
                pin: bool = False) -> Path:
    """Write the stack file for ``topology_path`` to ``out``; return ``out``."""
    topology_path, out = Path(topology_path).resolve(), Path(out).resolve()
    source = os.path.relpath(topology_path, out.parent)
    out.write_text(stack_text(load_topology(topology_path), source=source, pin=pin))
    return out


# --- the steps (run in the epic-central image) ------------------------------------------------

def make_secrets(topology_path: Path, out: Path) -> list[Path]:
    """Write the stack's secret files to ``out`` (mode 0600); return them.

    The broker runtime is prepared in a scratch directory and its conf re-pointed at the run
    volume's path (/run/epic), where init puts the files.
    """
    from emulation.testbed import prepare_compose_runtime

    topology = load_topology(topology_path)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    written = []
    with tempfile.TemporaryDirectory(prefix="epic-secrets-") as scratch:
        rundir = Path(scratch) / "run"
        prepare_compose_runtime(Path(topology_path), rundir)
        rundir = rundir.resolve()
        conf = (rundir / "mosquitto.conf").read_text().replace(str(rundir), RUN_DIR)
        (rundir / "mosquitto.conf").write_text(conf)
        credentials = json.loads((rundir / "credentials.json").read_text())
        for name in BROKER_FILES:
            written.append(_write_private(out / name, (rundir / name).read_text()))
    for device in topology.devices:
        own = {**credentials, "passwords": {device.id: credentials["passwords"][device.id]}}
        written.append(_write_private(out / f"{device.id}.json", json.dumps(own, indent=2)))
    written.append(_write_private(out / DEPLOY_ID, _secrets.token_hex(16)))
    log.info("secrets: %d files in %s (broker: %s; one per device; a deploy id); "
             "`docker stack deploy` makes each a Swarm secret", len(written), out,
             ", ".join(BROKER_FILES))
    return written


def _write_private(path: Path, text: str) -> Path:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return path


def init(secrets_dir: Path, topology_path: Path, rundir: Path, data: Path, gathers: int,
         owner: str) -> None:
    """The stack's ``init`` service: broker files from the secrets, then compose's init."""
    from emulation import compose_steps

    deploy_id = (secrets_dir / DEPLOY_ID).read_text().strip()
    rundir.mkdir(parents=True, exist_ok=True)
    (rundir / READY_FILE).unlink(missing_ok=True)
    credentials = json.loads((secrets_dir / "credentials.json").read_text())
    topology = load_topology(topology_path)
    users = {d.id for d in topology.devices}
    have = {u for u in credentials.get("passwords", {}) if u.startswith("device-")}
    if credentials.get("testbed") != topology.testbed or have != users:
        raise InputError(f"the secrets are for testbed {credentials.get('testbed')!r} with "
                         f"{sorted(have)}, the topology is {topology.testbed!r} with "
                         f"{sorted(users)}: run `python -m emulation.swarm secrets` again, "
                         "then `docker stack rm` and deploy")
    for name in BROKER_FILES:
        shutil.copyfile(secrets_dir / name, rundir / name)
        os.chmod(rundir / name, 0o600)
    (rundir / RunDir.PERSISTENCE).mkdir(exist_ok=True)
    compose_steps.init(topology_path, rundir, data, gathers, owner)  # keeps these credentials
    uid, gid = (int(x) for x in owner.split(":"))
    ready = rundir / READY_FILE
    tmp = rundir / f".{READY_FILE}.tmp"
    tmp.write_text(deploy_id)
    os.chown(tmp, uid, gid)
    os.replace(tmp, ready)
    log.info("init: run volume ready for deploy %s… (broker, central, link proxies, gate and "
             "results were waiting for it)", deploy_id[:8])


def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float | None = None,
             poll_s: float = 0.2) -> None:
    """Poll ``predicate`` until true; log what is awaited once; TimeoutError after timeout_s."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    logged = False
    while not predicate():
        if not logged:
            log.info("waiting for %s", what)
            logged = True
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"no {what} within {timeout_s:.0f} s")
        time.sleep(poll_s)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def wait_for_init(rundir: Path, deploy_id_file: Path) -> None:
    """Return once init wrote this deploy's id to ``rundir``."""
    want = deploy_id_file.read_text().strip()
    wait_for(lambda: _read(rundir / READY_FILE) == want,
             f"init to prepare {rundir} for deploy {want[:8]}…")


def _central_connected(rundir: Path) -> bool:
    try:
        return bool(json.loads(RunDir(rundir).central_status.read_text()).get("connected"))
    except (OSError, ValueError, AttributeError):
        return False


class StartGate:
    """Answers every device the same start instant: the first request + ``lead_s``."""

    def __init__(self, lead_s: float) -> None:
        self.lead_s = lead_s
        self.start_at_unix_s: float | None = None
        self._lock = threading.Lock()

    def answer(self, who: str) -> bytes:
        with self._lock:
            if self.start_at_unix_s is None:
                self.start_at_unix_s = time.time() + self.lead_s
            start = self.start_at_unix_s
        log.info("gate: %s starts at %.3f (%+.1f s from now)", who or "?", start,
                 start - time.time())
        return (json.dumps({"start_at_unix_s": start}) + "\n").encode()

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        with socket.create_server((host, port), reuse_port=False) as server:
            log.info("gate: open on port %d: devices may start", port)
            while True:
                conn, _addr = server.accept()
                with conn:
                    conn.settimeout(5.0)
                    try:
                        who = conn.makefile("rb").readline(200).decode(errors="replace").strip()
                        conn.sendall(self.answer(who))
                    except OSError as exc:
                        log.warning("gate: a request failed: %s", exc)


def gate(rundir: Path, deploy_id_file: Path, devices: int, port: int, lead_s: float) -> None:
    """The ``gate`` service: after init, central connected and every link proxy up, serve."""
    wait_for_init(rundir, deploy_id_file)
    files = RunDir(rundir)
    wait_for(lambda: _central_connected(rundir), "central to connect to the broker")
    wait_for(lambda: len(list(rundir.glob(files.PROXY_GLOB))) >= devices,
             f"{devices} link proxies")
    StartGate(lead_s).serve(port)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: secrets | init | after-init | gate; 2 on bad input."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m emulation.swarm")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("secrets", help="write the stack's secret files")
    p.add_argument("--topology", type=Path, default=Path("topology.yaml"))
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("init")
    p.add_argument("--secrets", type=Path, required=True)
    p.add_argument("--topology", type=Path, required=True)
    p.add_argument("--rundir", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--gathers", type=int, required=True)
    p.add_argument("--owner", default=RUN_USER)
    p = sub.add_parser("after-init", help="wait for init, then exec the command after --")
    p.add_argument("--rundir", type=Path, required=True)
    p.add_argument("--deploy-id", type=Path, required=True)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("gate")
    p.add_argument("--rundir", type=Path, required=True)
    p.add_argument("--deploy-id", type=Path, required=True)
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--port", type=int, default=GATE_PORT)
    p.add_argument("--lead-s", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        if args.step == "secrets":
            make_secrets(args.topology, args.out)
        elif args.step == "init":
            init(args.secrets, args.topology, args.rundir, args.data, args.gathers, args.owner)
        elif args.step == "after-init":
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("after-init needs a command after --")
            wait_for_init(args.rundir, args.deploy_id)
            sys.stdout.flush()
            os.execvp(command[0], command)
        else:
            gate(args.rundir, args.deploy_id, args.devices, args.port, args.lead_s)
    except InputError as exc:  # also TopologyError
        log.error("%s: %s", args.step, exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
