"""The one testbed runtime interface, and what its implementations share.

A :class:`Runtime` brings up the resident roles of a topology (broker, link proxies, central)
in a run directory, reports their status, injects faults, and runs one replay's device agents.
:mod:`emulation.runtime.process` runs the roles as processes, :mod:`emulation.runtime.docker`
as containers. Both share, from here and from :mod:`emulation.testbed`:

- the input checks (:func:`emulation.testbed.check_inputs`) and the run-dir preparation
  (:func:`emulation.testbed.prepare_rundir`: config, credentials, ACL, the topology copy the
  roles read, the stale-file clean-up);
- the health wait (:func:`wait_until`, :func:`healthy`);
- the status type (:class:`TestbedStatus`) and the replay's outcome (:class:`AgentRun`);
- the faults that live in the run directory: a dead device is a record in faults.json
  (``kill_device`` / ``restore_device``), a degraded link an edit of RUNDIR/topology.yaml,
  which the link proxies hot-reload (``degrade_link``).

Each runtime records what it started in a file of its own (testbed.json for processes,
docker.json for containers: :attr:`Runtime.record`), so :func:`emulation.runtime.runtime_for`
finds the right implementation from the run directory alone.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from epic.errors import InputError, RunError
from epic.rundir import (
    AgentSummary,
    CentralStatus,
    Faults,
    ProxyStatus,
    RecordError,
    RunDir,
    read_record,
    write_atomic,
    write_record,
)
from epic.topology import parse_topology

__all__ = [
    "DEFAULT_LEAD_S",
    "AgentRun",
    "LinkState",
    "RoleState",
    "Runtime",
    "TestbedStatus",
    "dead_devices",
    "healthy",
    "read_status_or_none",
    "wait_until",
]

log = logging.getLogger(__name__)

DEFAULT_LEAD_S = 4.0
"""Seconds from launching the agents to their shared start T: time for 5 agents to import,
load the LiteRT encoder and connect (measured 2.8 s on the loaded 2-core development machine).
An agent ready after T starts at once (in real time it catches up within its first gather);
its lag is in RUNDIR/agent-<device>.json ``start_lag_s`` and logged."""


@dataclass
class AgentRun:
    """What happened to one mode's agents.

    Attributes:
        start_at_unix_s: the shared start instant T (wall clock, s).
        started: devices whose agent was started. skipped_dead: devices not started (dead).
        killed: started devices whose agent was killed by ``kill-device`` during the run.
        start_lag_s: device -> how late its agent began streaming after T (s; from its stats).
    """

    start_at_unix_s: float
    started: list[str] = field(default_factory=list)
    skipped_dead: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    start_lag_s: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class RoleState:
    """One resident role in ``status``: a process (pid, log) or a container (name, state)."""

    alive: bool
    pid: int | None = None
    log: str | None = None
    container: str | None = None
    state: str | None = None

    @property
    def where(self) -> str:
        """``pid <n>`` or ``container <name>``, as ``epic testbed status`` prints it."""
        return f"pid {self.pid:>7d}" if self.container is None else f"container {self.container}"

    def to_dict(self) -> dict[str, Any]:
        if self.container is None:
            return {"pid": self.pid, "alive": self.alive, "log": self.log}
        return {"container": self.container, "state": self.state, "alive": self.alive}


@dataclass(frozen=True)
class LinkState:
    """One device's link in ``status``: its proxy port, link, state, publishes, bytes and
    energy (J, by part), from the proxy's status file (None and {} while it wrote none)."""

    port: int
    link: str | None = None
    state: str | None = None
    publishes: int | None = None
    up_wire_bytes: int | None = None
    energy_j: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, proxy: ProxyStatus | None, port: int) -> LinkState:
        if proxy is None:
            return cls(port)
        return cls(port, proxy.link, proxy.state, proxy.publishes, proxy.up_wire_bytes,
                   proxy.energy_j.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return {"port": self.port, "link": self.link, "state": self.state,
                "publishes": self.publishes, "up_wire_bytes": self.up_wire_bytes,
                "energy_j": dict(self.energy_j)}


@dataclass(frozen=True)
class TestbedStatus:
    """What ``status`` (and ``up``) returns, for every runtime.

    Attributes:
        runtime: "process" or "docker". testbed: its name. rundir, topology: absolute paths.
        broker: where the broker listens. network: the docker network (None for processes).
        devices: device ids in topology order. roles: role -> its state.
        links: device -> its link. frames, gathers: central's counters (None before its first
            status). central_connected: None before central's first status.
        truth, raw_checkpoint: what central was started with (None: absent or unknown).
    """

    __test__ = False  # not a pytest test class, despite the name

    runtime: str
    testbed: str
    rundir: str
    topology: str
    broker: str
    devices: tuple[str, ...]
    roles: dict[str, RoleState]
    links: dict[str, LinkState]
    frames: dict[str, Any] | None
    gathers: dict[str, Any] | None
    central_connected: bool | None
    network: str | None = None
    truth: str | None = None
    raw_checkpoint: str | None = None

    @property
    def running(self) -> bool:
        """Whether every resident role is alive."""
        return bool(self.roles) and all(r.alive for r in self.roles.values())

    def to_dict(self) -> dict[str, Any]:
        """The ``epic testbed status --json`` object (the docker one names its network)."""
        head: dict[str, Any] = {"testbed": self.testbed, "rundir": self.rundir,
                                "topology": self.topology}
        if self.network is not None:
            head = {"runtime": self.runtime, **head, "network": self.network}
        return {**head, "broker": self.broker,
                "roles": {name: role.to_dict() for name, role in self.roles.items()},
                "links": {device: link.to_dict() for device, link in self.links.items()},
                "frames": self.frames, "gathers": self.gathers,
                "central_connected": self.central_connected}


def read_status_or_none(path: Path, kind: type) -> Any:
    """A role's status record, or None while it has written none (or none readable)."""
    try:
        return read_record(path, kind)
    except RecordError as exc:
        log.warning("%s", exc)
        return None


def healthy(files: RunDir, devices: tuple[str, ...]) -> bool:
    """Central says ``connected`` and every device's proxy has written its status file."""
    central = read_status_or_none(files.central_status, CentralStatus)
    return central is not None and central.connected and all(
        files.proxy_status(d).is_file() for d in devices)


def wait_until(ready: Callable[[], bool], failure: Callable[[], str | None], timeout_s: float,
               timed_out: Callable[[], str], poll_s: float = 0.2) -> None:
    """Poll ``ready`` until it is true. RunError with ``failure()``'s message as soon as it
    returns one (a role exited), or with ``timed_out()``'s after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        problem = failure()
        if problem is not None:
            raise RunError(problem)
        if time.monotonic() > deadline:
            raise RunError(timed_out())
        time.sleep(poll_s)


def dead_devices(rundir: Path) -> dict[str, float]:
    """Devices marked dead in RUNDIR/faults.json: device id -> kill time (Unix s).

    Raises RecordError (an InputError naming the file and field) if the file is invalid.
    """
    faults = read_record(RunDir(rundir).faults, Faults)
    return dict(faults.dead) if faults else {}


def start_lag_s(rundir: Path, device: str, start_at_unix_s: float) -> float | None:
    """The agent's ``start_lag_s`` from RUNDIR/agent-<device>.json, if it is for this T."""
    try:
        stats = read_record(RunDir(rundir).agent_stats(device), AgentSummary)
    except RecordError as exc:
        log.warning("%s", exc)
        return None
    if stats is None or stats.start_at_unix_s is None or abs(
            stats.start_at_unix_s - start_at_unix_s) > 1e-3:
        return None
    return stats.start_lag_s


class Runtime(ABC):
    """A testbed in one run directory: its resident roles, their faults, and its replays.

    Construct it with the run directory; ``up`` starts the testbed there, and every other
    method works on what ``up`` recorded (in :attr:`record`), from any process.
    """

    kind: ClassVar[str]
    """"process" or "docker": the ``--runtime`` name."""
    record: ClassVar[str]
    """The run-dir file where this runtime records what it started."""

    def __init__(self, rundir: Path) -> None:
        self.rundir = Path(rundir).resolve()
        self.files = RunDir(self.rundir)

    @classmethod
    def for_up(cls, rundir: Path, *, build: bool = True) -> Runtime:
        """The runtime ``epic testbed up`` starts. ``build``: build what the roles run from
        first (the docker images; processes run from this checkout, nothing to build)."""
        return cls(rundir)

    def recorded(self) -> bool:
        """Whether a testbed of this runtime is recorded in the run directory."""
        return (self.rundir / self.record).is_file()

    @abstractmethod
    def up(self, topology_path: Path, *, checkpoint: Path | None = None,
           raw_checkpoint: Path | None = None, truth: Path | None = None,
           broker_port: int | None = None, timeout_s: float = 90.0) -> TestbedStatus:
        """Check the inputs, prepare the run directory, start broker, link proxies and
        central, and wait until they are healthy. A failed ``up`` leaves nothing running.

        Args:
            topology_path: the topology (copied to RUNDIR/topology.yaml, which the roles read).
            checkpoint, raw_checkpoint: central's models (None: the shipped default, and no
                raw decoding). truth: OpenFWI-layout maps for central's metrics, or None.
            broker_port: the broker's (host) port, or None for the runtime's default.
            timeout_s: health wait, seconds.
        """

    @abstractmethod
    def down(self, timeout_s: float = 15.0) -> list[str]:
        """Stop what ``up`` started; return what ran (``"<role> <pid>"`` or a container
        name). Always safe: nothing recorded is nothing to do."""

    @abstractmethod
    def status(self) -> TestbedStatus:
        """Roles (alive?), links, frames and energy so far. InputError if none is recorded."""

    @abstractmethod
    def restart_broker(self, hard: bool = False, timeout_s: float = 15.0) -> str:
        """Stop the broker (SIGTERM saves its database; ``hard``: SIGKILL) and start it again
        on the same port and persistence; return what now runs it (``pid <n>`` or
        ``container <name>``). InputError without a running broker, RunError if the new one
        does not come up within ``timeout_s`` seconds."""

    @abstractmethod
    def run_devices(self, mode: str, data: Path, *, shots: int, start: int, rate: str,
                    encoders: Path, timeout_s: float,
                    lead_s: float = DEFAULT_LEAD_S) -> AgentRun:
        """Run one mode's device agents for gathers ``start .. start + shots`` of ``data``,
        all with one shared start instant T = now + ``lead_s``, and wait until they exit.

        A device marked dead is not started; an agent killed by ``kill_device`` during the
        run is not a failure. Raises InputError if every device is dead; RunError if an agent
        fails or does not finish within ``timeout_s`` seconds.
        """

    @abstractmethod
    def recorded_devices(self) -> tuple[str, ...] | None:
        """The device ids the recorded testbed runs, or None if none is recorded."""

    @abstractmethod
    def up_line(self, status: TestbedStatus) -> str:
        """The one line ``epic testbed up`` prints for a testbed just started."""

    @abstractmethod
    def down_line(self, stopped: list[str]) -> str:
        """The one line ``epic testbed down`` prints for what ``down`` returned."""

    def start_dashboard(self) -> tuple[str, int] | None:
        """Start the live dashboard beside the testbed: (url, pid), or None where this
        runtime does not (then ``epic dashboard --dir RUNDIR`` serves it)."""
        return None

    @abstractmethod
    def _kill_agent(self, device_id: str) -> str | None:
        """Kill ``device_id``'s running agent at once; what was killed, or None."""

    # -- faults kept in the run directory: the same for every runtime -------------------------

    def _checked_device(self, device_id: str) -> tuple[str, ...]:
        devices = self.recorded_devices()
        if devices is None:
            raise InputError(f"no testbed in {self.rundir} ({self.record} missing); run `epic "
                             f"testbed up --dir {self.rundir}` first")
        if device_id not in devices:
            raise InputError(f"unknown device {device_id!r} in {self.rundir}: known devices "
                             f"are {', '.join(devices)}")
        return devices

    def kill_device(self, device_id: str) -> str | None:
        """Mark ``device_id`` dead in faults.json and kill its running agent at once; return
        what was killed (``agent pid <n>``, ``container <name>``) or None.

        Later replays do not start a dead device; central decodes each gather at its deadline
        without it. Raises InputError if no testbed is recorded or the device is not one of
        its devices. Killing a dead device again is not an error.
        """
        self._checked_device(device_id)
        dead = dead_devices(self.rundir)
        dead.setdefault(device_id, time.time())
        # faults.json first, the agent second: a replay records its agents and then re-reads
        # faults.json, so an agent started concurrently is killed by one side or the other
        write_record(self.files.faults, Faults(dead=dead))
        killed = self._kill_agent(device_id)
        if killed is None:
            log.info("%s marked dead (no agent running)", device_id)
        else:
            log.info("%s marked dead; its %s killed", device_id, killed)
        return killed

    def restore_device(self, device_id: str) -> bool:
        """Undo ``kill_device``: the next replay starts the agent again. True if it was dead.

        Raises InputError like :meth:`kill_device`.
        """
        self._checked_device(device_id)
        dead = dead_devices(self.rundir)
        was_dead = dead.pop(device_id, None) is not None
        write_record(self.files.faults, Faults(dead=dead))
        log.info("%s restored%s", device_id, "" if was_dead else " (it was not dead)")
        return was_dead

    def degrade_link(self, device_id: str, *, loss: float | None = None,
                     bandwidth_bps: float | None = None, delay_s: float | None = None) -> Path:
        """Give ``device_id`` its own copy of its link profile (``<link>-<device>``) with the
        new values, in RUNDIR/topology.yaml, which the link proxies hot-reload (from the
        device's next packet on); return that path. On a shared link the degraded device
        leaves the shared medium for a medium of its own.

        Args:
            loss: loss probability per packet, 0..1 (None: unchanged).
            bandwidth_bps: bit rate, bit/s (None: unchanged).
            delay_s: one-way delay, seconds (None: unchanged).

        Raises InputError (the file is left as it was) for an unknown device or invalid values.
        """
        devices = self.recorded_devices()
        if devices is None:
            raise InputError(f"no testbed in {self.rundir}")
        path = self.files.topology
        data = yaml.safe_load(path.read_text())
        device = next((d for d in data["devices"] if d["id"] == device_id), None)
        if device is None:
            raise InputError(f"{device_id} is not in {path} ({', '.join(devices)})")
        base = device["link"].split(f"-{device_id}")[0]
        link = dict(data["links"][base])
        for key, value in (("loss", loss), ("bandwidth_bps", bandwidth_bps),
                           ("delay_s", delay_s)):
            if value is not None:
                link[key] = value
        name = f"{base}-{device_id}"
        data["links"][name] = link
        device["link"] = name
        text = yaml.safe_dump(data, sort_keys=False)
        parse_topology(text, str(path))  # validate before the proxies see it
        write_atomic(path, text.encode())
        log.info("%s now on link %s: %s", device_id, name, link)
        return path

    # -- what run_devices shares -------------------------------------------------------------

    def _plan_agents(self, devices: tuple[str, ...], mode: str, lead_s: float) -> AgentRun:
        """The live devices of a replay, and its shared start instant; InputError if none."""
        dead = dead_devices(self.rundir)
        live = [d for d in devices if d not in dead]
        if not live:
            raise InputError(f"every device of {self.rundir} is dead (faults.json); run `epic "
                             f"testbed fault restore-device ID --dir {self.rundir}` first")
        run = AgentRun(start_at_unix_s=time.time() + lead_s, started=live,
                       skipped_dead=[d for d in devices if d in dead])
        for device in run.skipped_dead:
            log.warning("%s is dead (kill-device): its %s agent is not started", device, mode)
        return run

    def _finish_agents(self, run: AgentRun, mode: str, failed: list[str]) -> AgentRun:
        """RunError naming the ``failed`` agents, if any; else each agent's start lag."""
        if failed:
            raise RunError(f"{mode} agents failed: {'; '.join(failed)}")
        run.start_lag_s = {d: start_lag_s(self.rundir, d, run.start_at_unix_s)
                           for d in run.started if d not in run.killed}
        late = {d: lag for d, lag in run.start_lag_s.items() if lag is not None and lag > 0.05}
        if late:
            log.warning("%s agents were not ready at the shared start (late by %s s); a "
                        "longer lead_s would start them together", mode,
                        ", ".join(f"{d} {lag:.2f}" for d, lag in late.items()))
        return run

    @staticmethod
    def _links(files: RunDir, ports: dict[str, int]) -> dict[str, LinkState]:
        return {device: LinkState.of(read_status_or_none(files.proxy_status(device),
                                                         ProxyStatus), port)
                for device, port in ports.items()}

    @staticmethod
    def _central(files: RunDir) -> dict[str, Any]:
        central = read_status_or_none(files.central_status, CentralStatus)
        if central is None:
            return {"frames": None, "gathers": None, "central_connected": None}
        return {"frames": central.frames.to_dict(), "gathers": central.gathers.to_dict(),
                "central_connected": central.connected}
