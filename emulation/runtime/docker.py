"""The docker runtime: the roles of docker-compose.yml as containers, via the Docker SDK.

``DockerRuntime(rundir).up(topology)`` connects with ``docker.from_env()`` (no engine: one-line
:class:`~epic.errors.InputError`), prepares the run directory as every runtime does
(:func:`emulation.testbed.prepare_rundir`, with a broker conf for host ``broker``), creates a
bridge network and starts the resident roles, each with its compose service name as network
alias: ``broker`` (eclipse-mosquitto:2 with our generated conf), ``central`` and the ONE
``link-proxies`` container (device k of the topology, 0-based, on port 18830 + k; one process
because devices may share a medium). Device agents replay and exit (compose's "replay"
profile): :meth:`DockerRuntime.run_devices` starts device-1..N with one shared start instant,
waits for them and removes them.

Faults: ``kill_device`` is ``docker kill`` of the device's container (and the faults.json
record every runtime keeps); ``restart_broker`` stops the broker container (SIGTERM, or
SIGKILL with ``hard``) and starts it again on the same persistence; ``degrade_link`` edits
RUNDIR/topology.yaml, which the link-proxies container hot-reloads (RUNDIR is mounted at its
own path in every container).

:func:`emulation.docker_specs.container_specs` builds every service from the parsed
topology; a unit test compares it with docker-compose.yml service by service.

Images: ``epic-device`` (devices/Dockerfile: numpy, paho-mqtt, LiteRT, never torch) and
``epic-central`` (central/Dockerfile: torch-free decoders on ONNX Runtime; the link proxies
use it too) are built with ``client.images.build`` from the repository root on
``$EPIC_PYTHON_BASE`` (python:3.11-slim), as compose builds them; ``build=False`` uses existing
tags instead. The broker runs ``$EPIC_MOSQUITTO_BASE`` (eclipse-mosquitto:2), pulled when
absent; docker/build-local-base.sh makes local stand-ins for both bases.

Every container and the network carry the labels ``epic.testbed`` (the topology's name),
``epic.rundir`` and ``epic.service``; ``down`` removes exactly what carries this testbed's and
this RUNDIR's labels, after saving each container's log to RUNDIR/logs. RUNDIR/docker.json
records what ``up`` started; without it ``down`` does nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from emulation.docker_specs import (
    BROKER_PORT,
    DOCKERFILES,
    PROXY_BASE_PORT,
    RESIDENT,
    base_images,
    container_specs,
)
from emulation.runtime.base import (
    DEFAULT_LEAD_S,
    AgentRun,
    RoleState,
    Runtime,
    TestbedStatus,
    dead_devices,
    healthy,
    wait_until,
)
from emulation.runtime.process import load_info
from emulation.runtime.processes import is_alive, stop_processes
from emulation.testbed import DEFAULT_CHECKPOINT, check_inputs, check_models, prepare_rundir
from epic.broker import REPO
from epic.errors import InputError
from epic.rundir import RecordError, RoleProcess, RunDir, read_json, write_json
from epic.topology import load_topology

__all__ = ["DockerRuntime", "connect", "engine_problem"]

log = logging.getLogger(__name__)

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


class DockerRuntime(Runtime):
    """The testbed's roles as containers (see the module docstring).

    Args:
        rundir: the run directory (mounted at its own path in every container).
        client: a ``docker.DockerClient`` (default: :func:`connect`, when first needed).
        build: build the images in ``up`` (False: use the existing tags).
        publish_broker: publish the broker's port on the host (``up``'s ``broker_port``,
            default 1883); False publishes none (two testbeds, or a busy 1883).
    """

    kind: ClassVar[str] = "docker"
    record: ClassVar[str] = RunDir.DOCKER

    def __init__(self, rundir: Path, *, client: Any = None, build: bool = True,
                 publish_broker: bool = True) -> None:
        super().__init__(rundir)
        self._client = client
        self.build = build
        self.publish_broker = publish_broker

    @classmethod
    def for_up(cls, rundir: Path, *, build: bool = True) -> DockerRuntime:
        return cls(rundir, build=build)

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = connect()
        return self._client

    def state(self) -> dict | None:
        """RUNDIR/docker.json, or None if there is none."""
        if not self.rundir.exists():
            return None
        state = read_json(self.files.docker)
        if state is not None and "testbed" not in state:
            raise RecordError(f"{self.files.docker}: testbed: missing")
        return state

    def _required_state(self) -> dict:
        state = self.state()
        if state is None:
            raise InputError(f"no docker testbed in {self.rundir} ({RunDir.DOCKER} missing)")
        return state

    def _write_state(self, state: dict) -> None:
        write_json(self.files.docker, state)

    def recorded_devices(self) -> tuple[str, ...] | None:
        state = self.state()
        return None if state is None else tuple(state["devices"])

    def _containers(self, state: dict, **labels: str) -> list:
        """This testbed's containers (all, or those carrying ``labels`` too)."""
        filters = {"label": [f"epic.testbed={state['testbed']}",
                             f"epic.rundir={self.rundir}",
                             *(f"{k.replace('_', '.')}={v}" for k, v in labels.items())]}
        return _docker_call("list containers", self.client.containers.list, all=True,
                            filters=filters)

    # -- up ----------------------------------------------------------------------------------

    def up(self, topology_path: Path, *, checkpoint: Path | None = None,
           raw_checkpoint: Path | None = None, truth: Path | None = None,
           broker_port: int | None = None, timeout_s: float = 90.0) -> TestbedStatus:
        """Start broker, central and the link proxies as containers; wait for health.

        ``broker_port``: the host port the broker is published on (default 1883). Health is
        what the process runtime waits for: RUNDIR/central-status.json says ``connected`` and
        every RUNDIR/proxy-<device>.json exists. Raises InputError, with nothing left running,
        if no engine answers, a testbed already runs here or under this name, an image is
        missing or fails to build; RunError if a role exits or is not healthy within
        ``timeout_s``.
        """
        topology_path = Path(topology_path).resolve()
        topology = check_inputs(topology_path, checkpoint=checkpoint,
                                raw_checkpoint=raw_checkpoint, truth=truth)
        # the image's default checkpoint is the shipped one: check the receivers against it
        check_models(topology_path, topology, checkpoint or DEFAULT_CHECKPOINT, raw_checkpoint)
        client = self.client
        old = load_info(self.rundir) if self.rundir.exists() else None
        if old is not None and any(is_alive(p) for p in old.processes):
            raise InputError(f"a process-mode testbed is running in {self.rundir}; run `epic "
                             f"testbed down --dir {self.rundir}` first")
        if self.state() is not None:
            raise InputError(f"a docker testbed is recorded in {self.rundir} "
                             f"({RunDir.DOCKER}); run `epic testbed down --dir {self.rundir}` "
                             f"first")
        same_name = {"label": f"epic.testbed={topology.testbed}"}
        clash = [*_docker_call("list containers", client.containers.list, all=True,
                               filters=same_name),
                 *_docker_call("list networks", client.networks.list, filters=same_name)]
        if clash:
            where = sorted({(c.attrs.get("Labels") or c.attrs.get("Config", {}).get("Labels")
                             or {}).get("epic.rundir", "?") for c in clash})
            raise InputError(f"containers or a network of testbed {topology.testbed} exist "
                             f"already (RUNDIR {', '.join(where)}); bring that testbed down "
                             f"first")
        _ensure_images(client, self.build)
        prepare_rundir(topology_path, topology, self.rundir, host="broker", port=BROKER_PORT,
                       bind_address="0.0.0.0")
        broker_host_port = (None if not self.publish_broker
                            else BROKER_PORT if broker_port is None else broker_port)
        specs = container_specs(topology, self.rundir, broker_host_port=broker_host_port,
                                checkpoint=checkpoint, raw_checkpoint=raw_checkpoint,
                                truth=truth)
        network = f"{topology.testbed}-net"

        def resolved(path: Path | None) -> str | None:
            return None if path is None else str(Path(path).resolve())

        state = {"runtime": self.kind, "testbed": topology.testbed,
                 "rundir": str(self.rundir), "topology": str(self.files.topology),
                 "network": network, "broker_host_port": broker_host_port,
                 "proxy_base_port": PROXY_BASE_PORT,
                 "devices": [d.id for d in topology.devices], "containers": [],
                 "checkpoint": resolved(checkpoint),
                 "raw_checkpoint": resolved(raw_checkpoint), "truth": resolved(truth),
                 "started_unix_s": None}
        self._write_state(state)  # first, so that `down` finds a half-started testbed
        try:
            _docker_call(f"create network {network}", client.networks.create, network,
                         driver="bridge", labels={"epic.testbed": topology.testbed,
                                                  "epic.rundir": str(self.rundir)})
            containers = []
            for service in RESIDENT:
                spec = specs[service]
                containers.append(_docker_call(f"start {spec.container_name()}",
                                               client.containers.run,
                                               **spec.run_kwargs(client, network)))
                state["containers"].append(spec.container_name())
                self._write_state(state)
            self._wait_healthy(tuple(state["devices"]), containers, timeout_s)
            # central's session and subscriptions are new: have the broker save them now
            # (SIGUSR1), not up to its save interval later, as the process runtime does
            broker = next(c for c in containers if c.labels.get("epic.service") == "broker")
            _docker_call(f"signal {broker.name}", broker.kill, signal="SIGUSR1")
        except BaseException:
            try:
                self.down()
            except InputError as exc:  # keep the original error; say what may be left
                log.error("clean-up after a failed up: %s", exc)
            raise
        state["started_unix_s"] = time.time()
        self._write_state(state)
        log.info("docker testbed %s up in %s: %s", topology.testbed, self.rundir,
                 state["containers"])
        return self.status()

    def _wait_healthy(self, devices: tuple[str, ...], containers: list,
                      timeout_s: float) -> None:
        def exited() -> str | None:
            for container in containers:
                _docker_call(f"inspect {container.name}", container.reload)
                if container.status in ("exited", "dead"):
                    tail = " | ".join(container.logs(tail=8).decode(errors="replace")
                                      .splitlines())
                    return (f"container {container.name} exited while waiting for health: "
                            f"{tail or '(no output)'}")
            return None

        wait_until(lambda: healthy(self.files, devices), exited, timeout_s,
                   lambda: (f"docker testbed not healthy after {timeout_s:.0f} s (central "
                            f"connected and proxy status files); see `docker logs`"),
                   poll_s=0.5)

    def up_line(self, status: TestbedStatus) -> str:
        state = self._required_state()
        return (f"testbed {state['testbed']} up in {state['rundir']} (docker network "
                f"{state['network']}): {', '.join(state['containers'])}")

    # -- down, status ------------------------------------------------------------------------

    def down(self, timeout_s: float = 15.0) -> list[str]:
        """Stop and remove this RUNDIR's containers and network; return the container names.

        Devices go first, then central (it drains and flushes), the proxies, the broker. Each
        container's output is saved to RUNDIR/logs/<service>.log. Safe without docker.json
        (nothing to do, no engine needed); with it, an unreachable engine is an InputError.
        """
        state = self.state()
        if state is None:
            return []
        removed = []
        if state.get("dashboard"):  # a host process beside the containers (start_dashboard)
            dashboard = RoleProcess.from_dict(state["dashboard"], str(self.files.docker))
            removed += [f"dashboard (pid {p.pid})"
                        for p in stop_processes([dashboard], max(1.0, timeout_s))]
        order = {"central": 1, "link-proxies": 2, "broker": 3}  # devices: 0
        for container in sorted(self._containers(state),
                                key=lambda c: order.get(c.labels.get("epic.service"), 0)):
            service = container.labels.get("epic.service", container.name)
            _docker_call(f"stop {container.name}", container.stop,
                         timeout=max(1, round(timeout_s)))
            self.files.logs.mkdir(exist_ok=True)
            self.files.log(service).write_bytes(_docker_call(f"logs of {container.name}",
                                                             container.logs))
            _docker_call(f"remove {container.name}", container.remove, force=True)
            removed.append(container.name)
            log.info("%s stopped and removed", container.name)
        filters = {"label": [f"epic.testbed={state['testbed']}", f"epic.rundir={self.rundir}"]}
        for network in _docker_call("list networks", self.client.networks.list,
                                    filters=filters):
            _docker_call(f"remove network {network.name}", network.remove)
        self.files.docker.unlink(missing_ok=True)
        return removed

    def down_line(self, stopped: list[str]) -> str:
        return f"removed containers {', '.join(stopped) or 'none'}"

    def start_dashboard(self) -> tuple[str, int]:
        """The live dashboard as a host process reading this run dir (docker.json records it;
        ``down`` stops it)."""
        from emulation.dashboard import start_detached

        role, url = start_detached(self.rundir)
        return url, role.pid

    def status(self) -> TestbedStatus:
        """Containers (running?), links, frames and energy so far."""
        state = self._required_state()
        devices = tuple(state["devices"])
        return TestbedStatus(
            runtime=self.kind, testbed=state["testbed"], rundir=str(self.rundir),
            topology=state["topology"], network=state["network"],
            broker=f"broker:{BROKER_PORT} (host port {state['broker_host_port']})",
            devices=devices,
            roles={c.labels.get("epic.service", c.name): RoleState(
                       alive=c.status == "running", container=c.name, state=c.status)
                   for c in self._containers(state)},
            links=self._links(self.files, {d: state["proxy_base_port"] + index
                                           for index, d in enumerate(devices)}),
            truth=state.get("truth"), raw_checkpoint=state.get("raw_checkpoint"),
            **self._central(self.files))

    # -- faults ------------------------------------------------------------------------------

    def restart_broker(self, hard: bool = False, timeout_s: float = 15.0) -> str:
        """Stop the broker container (``docker stop``: SIGTERM, then SIGKILL after
        ``timeout_s``; ``hard``: ``docker kill``) and start it again; its persistence is in
        the mounted RUNDIR. Returns ``container <name>``."""
        state = self._required_state()
        broker = next((c for c in self._containers(state, epic_service="broker")
                       if c.status == "running"), None)
        if broker is None:
            raise InputError(f"no running broker in {self.rundir}")
        if hard:
            _docker_call(f"kill {broker.name}", broker.kill, signal="SIGKILL")
        else:
            _docker_call(f"stop {broker.name}", broker.stop, timeout=max(1, round(timeout_s)))
        _docker_call(f"start {broker.name}", broker.start)
        host_port = state.get("broker_host_port")

        def listening() -> bool:
            _docker_call(f"inspect {broker.name}", broker.reload)
            if broker.status != "running" or host_port is None:
                return broker.status == "running"
            try:
                with socket.create_connection(("127.0.0.1", host_port), 0.5):
                    return True
            except OSError:
                return False

        def exited() -> str | None:
            return (f"restarted broker container {broker.name} exited"
                    if broker.status in ("exited", "dead") else None)

        wait_until(listening, exited, timeout_s,
                   lambda: f"restarted broker {broker.name} not listening on host port "
                           f"{host_port}; see `docker logs {broker.name}`", poll_s=0.05)
        log.info("broker restarted (%s): container %s", "hard" if hard else "soft",
                 broker.name)
        return f"container {broker.name}"

    def _kill_agent(self, device_id: str) -> str | None:
        state = self._required_state()
        running = [c for c in self._containers(state, epic_device=device_id)
                   if c.status == "running"]
        for container in running:
            _docker_call(f"kill {container.name}", container.kill)
        return f"container {running[0].name}" if running else None

    # -- replay ------------------------------------------------------------------------------

    def run_devices(self, mode: str, data: Path, *, shots: int, start: int, rate: str,
                    encoders: Path, timeout_s: float,
                    lead_s: float = DEFAULT_LEAD_S) -> AgentRun:
        """Run device-1..N (compose's "replay" profile) against the running docker testbed,
        all with one shared start instant; see :meth:`Runtime.run_devices`.

        ``data`` is mounted read-only at /data and ``encoders``' directory at its own path.
        Each agent's output goes to RUNDIR/logs/agent-<device>-<mode>.log and its container
        is removed.
        """
        import requests

        state = self.state()
        if state is None:
            raise InputError(f"no docker testbed in {self.rundir} ({RunDir.DOCKER} missing); "
                             f"run `epic testbed up --runtime docker --dir {self.rundir}` first")
        if not Path(data).is_dir():
            raise InputError(f"data directory {data} does not exist")
        run = self._plan_agents(tuple(state["devices"]), mode, lead_s)
        encoders = Path(encoders).resolve()
        specs = container_specs(load_topology(self.files.topology), self.rundir,
                                data_dir=Path(data), mode=mode, gathers=shots, rate=rate)
        started = []
        for device in run.started:
            spec = specs[device]
            spec = replace(spec, environment={
                **spec.environment, "EPIC_START": str(start),
                "EPIC_START_AT_UNIX_S": f"{run.start_at_unix_s:.6f}",
                "EPIC_ENCODERS": str(encoders)},
                volumes={**spec.volumes, str(encoders.parent): {"bind": str(encoders.parent),
                                                                "mode": "ro"}})
            started.append((device, _docker_call(
                f"start {spec.container_name()}", self.client.containers.run,
                **spec.run_kwargs(self.client, state["network"]))))
        for device, container in started:  # killed between our first look and now
            if device in dead_devices(self.rundir):
                _docker_call(f"kill {container.name}", container.kill)
        deadline = time.monotonic() + timeout_s
        failed = []
        try:
            for device, container in started:
                log_path = self.files.log(f"agent-{device}-{mode}")
                try:
                    result = container.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except requests.RequestException:
                    _docker_call(f"kill {container.name}", container.kill)
                    failed.append(f"{device} did not finish within {timeout_s:.0f} s "
                                  f"(see {log_path})")
                    continue
                finally:
                    log_path.write_bytes(_docker_call(f"logs of {container.name}",
                                                      container.logs))
                code = int(result.get("StatusCode", -1))
                if code == 137 and device in dead_devices(self.rundir):
                    log.warning("%s's %s agent was killed (kill-device)", device, mode)
                    run.killed.append(device)
                elif code != 0:
                    failed.append(f"{device} exit {code} (see {log_path})")
        finally:
            for _, container in started:
                _docker_call(f"remove {container.name}", container.remove, force=True)
        return self._finish_agents(run, mode, failed)
