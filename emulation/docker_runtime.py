"""Docker runtime of the testbed: the roles of docker-compose.yml as containers, via the SDK.

``epic testbed up --runtime docker`` calls :func:`up`: it connects with ``docker.from_env()``
(no engine: one-line :class:`~epic.errors.InputError`), writes the broker runtime into RUNDIR
(:func:`emulation.testbed.prepare_compose_runtime`: credentials, ACL, a conf for host
``broker``, and RUNDIR/topology.yaml, the copy the roles read and the faults edit), creates a
bridge network and starts the resident roles, each with its compose service name as network
alias: ``broker`` (eclipse-mosquitto:2 with our generated conf), ``central`` and the ONE
``link-proxies`` container (device k of the topology, 0-based, on port 18830 + k; one process
because devices may share a medium). Device agents replay and exit (compose's "replay"
profile): :func:`run_devices` starts device-1..N, waits for them and removes them.

:func:`emulation.docker_specs.container_specs` builds every service from the parsed
topology; a unit test compares it with docker-compose.yml service by service.

Images: ``epic-device`` (devices/Dockerfile: numpy, paho-mqtt, LiteRT, never torch) and
``epic-central`` (central/Dockerfile: torch-free decoders on ONNX Runtime; the link proxies
use it too) are built with ``client.images.build`` from the repository root (.dockerignore
keeps .venv, data and runs out of the context) on ``$EPIC_PYTHON_BASE`` (python:3.11-slim),
as compose builds them; ``build=False`` uses existing tags instead (e.g. from ``docker
compose build``). The broker runs ``$EPIC_MOSQUITTO_BASE`` (eclipse-mosquitto:2), pulled when
absent; docker/build-local-base.sh makes local stand-ins for both bases.

Every container and the network carry the labels ``epic.testbed`` (the topology's name),
``epic.rundir`` and ``epic.service``; :func:`down` removes exactly what carries this
testbed's and this RUNDIR's labels, after saving each container's log to RUNDIR/logs.
RUNDIR/docker.json records what :func:`up` started; without it :func:`down` does nothing.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from emulation.docker_specs import (
    BROKER_PORT,
    DOCKERFILES,
    PROXY_BASE_PORT,
    RESIDENT,
    base_images,
    container_specs,
)
from emulation.testbed import (
    DEFAULT_CHECKPOINT,
    REPO,
    central_summary,
    check_models,
    is_alive,
    link_summary,
    load_info,
    prepare_compose_runtime,
)
from epic.errors import InputError, RunError
from epic.rundir import (
    CentralStatus,
    ProxyStatus,
    RecordError,
    RunDir,
    read_json,
    read_record,
    write_json,
)
from epic.topology import load_topology

__all__ = [
    "STATE_FILE",
    "connect",
    "down",
    "engine_problem",
    "run_devices",
    "status",
    "up",
]

log = logging.getLogger(__name__)

STATE_FILE = RunDir.DOCKER
_NO_ENGINE_HINT = "run without --runtime docker to use processes"


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def connect(timeout_s: float = 10.0) -> Any:
    """A ``docker.DockerClient`` that answered a ping; InputError (one line) if there is none."""
    try:
        import docker
        import requests
    except ImportError as exc:
        raise InputError("the docker Python package is not installed (pip install -e "
                         f"'.[docker]'); {_NO_ENGINE_HINT}") from exc
    try:
        client = docker.from_env(timeout=max(1, round(timeout_s)))
        client.ping()
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise InputError(f"no Docker engine reachable ({_one_line(exc)}); "
                         f"{_NO_ENGINE_HINT}") from exc
    return client


def engine_problem() -> str | None:
    """Why no Docker engine can be used here, or None if one answers (for test skips)."""
    try:
        connect().close()
    except InputError as exc:
        return str(exc)
    return None


def _docker_call(what: str, call, *args, **kwargs):
    """Run an SDK call; its errors become one-line InputErrors naming ``what``."""
    import docker
    import requests

    try:
        return call(*args, **kwargs)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise InputError(f"docker: {what}: {_one_line(exc)}") from exc


def _ensure_images(client: Any, build: bool) -> None:
    import docker

    bases = base_images()  # $EPIC_PYTHON_BASE / $EPIC_MOSQUITTO_BASE, as in compose
    try:
        client.images.get(bases["mosquitto"])
    except docker.errors.ImageNotFound:
        log.info("pulling %s", bases["mosquitto"])
        _docker_call(f"pull {bases['mosquitto']}", client.images.pull,
                     *bases["mosquitto"].rsplit(":", 1))
    for tag, dockerfile in DOCKERFILES.items():
        if build:
            log.info("building %s from %s on %s (minutes the first time)", tag, dockerfile,
                     bases["python"])
            _docker_call(f"build {tag} from {dockerfile}", client.images.build,
                         path=str(REPO), dockerfile=dockerfile, tag=tag, rm=True,
                         buildargs={"BASE": bases["python"]})
            continue
        try:
            client.images.get(tag)
        except docker.errors.ImageNotFound as exc:
            raise InputError(f"image {tag} not found; build it (`docker compose build`) or "
                             f"let `up` build it (drop --no-build)") from exc


def _label_filter(testbed: str, rundir: Path) -> dict[str, list[str]]:
    return {"label": [f"epic.testbed={testbed}", f"epic.rundir={rundir}"]}


def _read_or_none(path: Path, kind: type) -> Any:
    """A role's status record, or None while it has written none (or none readable)."""
    try:
        return read_record(path, kind)
    except RecordError as exc:
        log.warning("%s", exc)
        return None


def up(topology_path: Path, rundir: Path, *, build: bool = True,
       broker_host_port: int | None = BROKER_PORT, checkpoint: Path | None = None,
       raw_checkpoint: Path | None = None, truth: Path | None = None,
       timeout_s: float = 90.0, client: Any = None) -> dict:
    """Start broker, central and the link proxies as containers; wait for health.

    Health is what process mode waits for: RUNDIR/central-status.json says ``connected`` and
    every RUNDIR/proxy-<device>.json exists (RUNDIR is mounted at its own path). Returns the
    state written to RUNDIR/docker.json. Raises InputError, with nothing left running, if no
    engine answers, a testbed already runs here or under this name, an image is missing or
    fails to build, or a role exits or is not healthy within ``timeout_s``.
    """
    topology_path, rundir = Path(topology_path).resolve(), Path(rundir).resolve()
    topology = load_topology(topology_path)
    for name, path in (("checkpoint", checkpoint), ("raw checkpoint", raw_checkpoint),
                       ("truth", truth)):
        if path is not None and not Path(path).exists():
            raise InputError(f"{name} {path} does not exist")
    # the image's default checkpoint is the shipped one: check the receivers against its slots
    check_models(topology_path, topology, checkpoint or DEFAULT_CHECKPOINT, raw_checkpoint)
    client = client or connect()
    old = load_info(rundir) if rundir.exists() else None
    if old is not None and any(is_alive(p) for p in old.processes):
        raise InputError(f"a process-mode testbed is running in {rundir}; run `epic testbed "
                         f"down --dir {rundir}` first")
    if rundir.exists() and _load_state(rundir) is not None:
        raise InputError(f"a docker testbed is recorded in {rundir} ({STATE_FILE}); run `epic "
                         f"testbed down --dir {rundir}` first")
    same_name = {"label": f"epic.testbed={topology.testbed}"}
    clash = [*_docker_call("list containers", client.containers.list, all=True,
                           filters=same_name),
             *_docker_call("list networks", client.networks.list, filters=same_name)]
    if clash:
        where = sorted({(c.attrs.get("Labels") or c.attrs.get("Config", {}).get("Labels")
                         or {}).get("epic.rundir", "?") for c in clash})
        raise InputError(f"containers or a network of testbed {topology.testbed} exist "
                         f"already (RUNDIR {', '.join(where)}); bring that testbed down first")
    _ensure_images(client, build)
    prepare_compose_runtime(topology_path, rundir, port=BROKER_PORT)
    files = RunDir(rundir)
    files.logs.mkdir(exist_ok=True)
    for stale in files.status_files():
        stale.unlink(missing_ok=True)
    files.rotate()  # a new central: keep the old records aside
    specs = container_specs(topology, rundir, broker_host_port=broker_host_port,
                            checkpoint=checkpoint, raw_checkpoint=raw_checkpoint, truth=truth)
    network = f"{topology.testbed}-net"
    state = {"runtime": "docker", "testbed": topology.testbed, "rundir": str(rundir),
             "topology": str(files.topology), "network": network,
             "broker_host_port": broker_host_port, "proxy_base_port": PROXY_BASE_PORT,
             "devices": [d.id for d in topology.devices], "containers": [],
             "started_unix_s": None}
    _write_state(rundir, state)  # first, so that `down` finds a half-started testbed
    try:
        _docker_call(f"create network {network}", client.networks.create, network,
                     driver="bridge", labels={"epic.testbed": topology.testbed,
                                              "epic.rundir": str(rundir)})
        containers = []
        for service in RESIDENT:
            spec = specs[service]
            containers.append(_docker_call(f"start {spec.container_name()}",
                                           client.containers.run,
                                           **spec.run_kwargs(client, network)))
            state["containers"].append(spec.container_name())
            _write_state(rundir, state)
        _wait_healthy(rundir, state["devices"], containers, timeout_s)
    except BaseException:
        try:
            down(rundir, client=client)
        except InputError as exc:  # keep the original error; say what may be left
            log.error("clean-up after a failed up: %s", exc)
        raise
    state["started_unix_s"] = time.time()
    _write_state(rundir, state)
    log.info("docker testbed %s up in %s: %s", topology.testbed, rundir, state["containers"])
    return state


def _write_state(rundir: Path, state: dict) -> None:
    write_json(RunDir(rundir).docker, state)


def _wait_healthy(rundir: Path, devices: list[str], containers: list, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    files = RunDir(rundir)
    while True:
        central = _read_or_none(files.central_status, CentralStatus)
        if central is not None and central.connected and all(
                files.proxy_status(d).is_file() for d in devices):
            return
        for container in containers:
            _docker_call(f"inspect {container.name}", container.reload)
            if container.status in ("exited", "dead"):
                tail = " | ".join(container.logs(tail=8).decode(errors="replace").splitlines())
                raise RunError(f"container {container.name} exited while waiting for "
                                 f"health: {tail or '(no output)'}")
        if time.monotonic() > deadline:
            raise RunError(f"docker testbed not healthy after {timeout_s:.0f} s (central "
                             f"connected and proxy status files); see `docker logs`")
        time.sleep(0.5)


def _load_state(rundir: Path) -> dict | None:
    path = RunDir(rundir).docker
    state = read_json(path)
    if state is not None and "testbed" not in state:
        raise RecordError(f"{path}: testbed: missing")
    return state


def down(rundir: Path, timeout_s: float = 15.0, client: Any = None) -> list[str]:
    """Stop and remove this RUNDIR's containers and network; return the container names.

    Devices go first, then central (it drains and flushes), the proxies, the broker. Each
    container's output is saved to RUNDIR/logs/<service>.log. Safe without RUNDIR/docker.json
    (nothing to do, no engine needed); with it, an unreachable engine is an InputError.
    """
    rundir = Path(rundir).resolve()
    state = _load_state(rundir) if rundir.exists() else None
    if state is None:
        return []
    client = client or connect()
    filters = _label_filter(state["testbed"], rundir)
    order = {"central": 1, "link-proxies": 2, "broker": 3}  # devices: 0
    found = _docker_call("list containers", client.containers.list, all=True, filters=filters)
    removed = []
    for container in sorted(found, key=lambda c: order.get(c.labels.get("epic.service"), 0)):
        service = container.labels.get("epic.service", container.name)
        _docker_call(f"stop {container.name}", container.stop, timeout=max(1, round(timeout_s)))
        logs = rundir / "logs"
        logs.mkdir(exist_ok=True)
        (logs / f"{service}.log").write_bytes(_docker_call(f"logs of {container.name}",
                                                           container.logs))
        _docker_call(f"remove {container.name}", container.remove, force=True)
        removed.append(container.name)
        log.info("%s stopped and removed", container.name)
    for network in _docker_call("list networks", client.networks.list, filters=filters):
        _docker_call(f"remove network {network.name}", network.remove)
    (rundir / STATE_FILE).unlink(missing_ok=True)
    return removed


def status(rundir: Path, client: Any = None) -> dict:
    """Containers (running?), links, frames and energy so far; the shape of process status."""
    rundir = Path(rundir).resolve()
    state = _load_state(rundir) if rundir.exists() else None
    if state is None:
        raise InputError(f"no docker testbed in {rundir} ({STATE_FILE} missing)")
    client = client or connect()
    found = _docker_call("list containers", client.containers.list, all=True,
                         filters=_label_filter(state["testbed"], rundir))
    files = RunDir(rundir)
    links = {device: link_summary(_read_or_none(files.proxy_status(device), ProxyStatus),
                                  state["proxy_base_port"] + index)
             for index, device in enumerate(state["devices"])}
    return {
        "runtime": "docker", "testbed": state["testbed"], "rundir": str(rundir),
        "topology": state["topology"], "network": state["network"],
        "broker": f"broker:{BROKER_PORT} (host port {state['broker_host_port']})",
        "roles": {c.labels.get("epic.service", c.name): {"container": c.name,
                                                          "state": c.status,
                                                          "alive": c.status == "running"}
                  for c in found},
        "links": links,
        **central_summary(_read_or_none(files.central_status, CentralStatus)),
    }


def run_devices(rundir: Path, data_dir: Path, *, mode: str = "epic", gathers: int = 10,
                rate: str = "realtime", timeout_s: float = 600.0,
                client: Any = None) -> dict[str, int]:
    """Run device-1..N (compose's "replay" profile) against the running docker testbed.

    Each agent replays ``gathers`` gathers of ``data_dir`` and exits; its output goes to
    RUNDIR/logs/<device>.log and its container is removed. Returns each device's exit status.
    """
    rundir = Path(rundir).resolve()
    state = _load_state(rundir) if rundir.exists() else None
    if state is None:
        raise InputError(f"no docker testbed in {rundir} ({STATE_FILE} missing); run `epic "
                         f"testbed up --runtime docker --dir {rundir}` first")
    if not Path(data_dir).is_dir():
        raise InputError(f"data directory {data_dir} does not exist")
    client = client or connect()
    topology = load_topology(RunDir(rundir).topology)
    specs = container_specs(topology, rundir, data_dir=Path(data_dir), mode=mode,
                            gathers=gathers, rate=rate)
    started = [_docker_call(f"start {spec.container_name()}", client.containers.run,
                            **spec.run_kwargs(client, state["network"]))
               for spec in specs.values() if not spec.resident]
    codes: dict[str, int] = {}
    try:
        for container in started:
            result = _docker_call(f"wait for {container.name}", container.wait,
                                  timeout=timeout_s)
            service = container.labels.get("epic.service", container.name)
            codes[service] = int(result.get("StatusCode", -1))
            RunDir(rundir).log(service).write_bytes(container.logs())
    finally:
        for container in started:
            _docker_call(f"remove {container.name}", container.remove, force=True)
    return codes

