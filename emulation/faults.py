"""Faults on a running process-mode testbed: degrade a link, restart the broker, kill a device.

- ``degrade_link(rundir, "device-2", loss=0.05, bandwidth_bps=1e6)`` gives that device its own
  copy of its link profile (``<link>-<device>``) with the new values, in RUNDIR/topology.yaml,
  which the link proxies hot-reload (from the device's next packet on). On a shared link the
  degraded device leaves the shared medium for a medium of its own.
- ``restart_broker(rundir, hard=False)`` stops Mosquitto (SIGTERM saves its database; ``hard``
  SIGKILLs it) and starts it again on the same port and persistence; QoS 1 sessions resume.

- ``kill_device(rundir, "device-3")`` marks the device dead in RUNDIR/faults.json (replaced
  atomically) and SIGKILLs its agent if a replay is running one (replay records its agents'
  PIDs in RUNDIR/agents.json, see :mod:`emulation.agents`). Later replays do not start a dead
  device's agent; central decodes each gather at its deadline without it (a partial decode).
  ``restore_device(rundir, "device-3")`` brings it back from the next replay on.

Agents live only for one replay (see :mod:`emulation.testbed`), so a dead device is a record
in the run directory rather than a stopped resident process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import yaml

from emulation.testbed import (
    RoleProcess,
    TestbedInfo,
    is_alive,
    load_info,
    spawn_role,
    write_info,
)
from epic.errors import InputError, RunError
from epic.rundir import AgentProcesses, Faults, RunDir, read_record, write_atomic, write_record
from epic.topology import parse_topology

__all__ = [
    "AGENTS_FILE",
    "FAULTS_FILE",
    "dead_devices",
    "degrade_link",
    "kill_device",
    "record_agents",
    "restart_broker",
    "restore_device",
    "running_agents",
]

log = logging.getLogger(__name__)

FAULTS_FILE = RunDir.FAULTS
AGENTS_FILE = RunDir.AGENTS


def dead_devices(rundir: Path) -> dict[str, float]:
    """Devices marked dead in RUNDIR/faults.json: device id -> kill time (Unix s).

    Raises RecordError (an InputError naming the file and field) if the file is invalid.
    """
    faults = read_record(RunDir(rundir).faults, Faults)
    return dict(faults.dead) if faults else {}


def _checked_device(rundir: Path, device_id: str) -> TestbedInfo:
    info = load_info(Path(rundir))
    if info is None:
        raise InputError(f"no testbed in {rundir} (testbed.json missing); run `epic testbed "
                         f"up --dir {rundir}` first")
    if device_id not in info.devices:
        raise InputError(f"unknown device {device_id!r} in {rundir}: known devices are "
                         f"{', '.join(info.devices)}")
    return info


def record_agents(rundir: Path, mode: str, agents: dict[str, RoleProcess]) -> None:
    """Write RUNDIR/agents.json: the running replay's agent processes, by device id."""
    write_record(RunDir(rundir).agents, AgentProcesses(mode=mode, agents=dict(agents)))


def running_agents(rundir: Path) -> dict[str, RoleProcess]:
    """The agents recorded in RUNDIR/agents.json that are still running, by device id."""
    record = read_record(RunDir(rundir).agents, AgentProcesses)
    procs = record.agents if record else {}
    return {d: p for d, p in procs.items() if is_alive(p)}


def kill_device(rundir: Path, device_id: str) -> int | None:
    """Mark ``device_id`` dead and SIGKILL its running agent; return that agent's PID or None.

    Raises InputError if RUNDIR has no testbed or ``device_id`` is not one of its devices.
    Killing a dead device again is not an error (it only kills a running agent, if any).
    """
    rundir = Path(rundir)
    _checked_device(rundir, device_id)
    dead = dead_devices(rundir)
    dead.setdefault(device_id, time.time())
    # faults.json first, agents.json second: a replay writes agents.json and then re-reads
    # faults.json, so an agent started concurrently is killed by one side or the other
    write_record(RunDir(rundir).faults, Faults(dead=dead))
    agent = running_agents(rundir).get(device_id)
    if agent is None:
        log.info("%s marked dead (no agent running)", device_id)
        return None
    with contextlib.suppress(ProcessLookupError):
        os.kill(agent.pid, signal.SIGKILL)
    log.info("%s marked dead; its agent pid %d killed", device_id, agent.pid)
    return agent.pid


def restore_device(rundir: Path, device_id: str) -> bool:
    """Undo ``kill_device``: the next replay starts the agent again. True if it was dead.

    Raises InputError like :func:`kill_device`.
    """
    rundir = Path(rundir)
    _checked_device(rundir, device_id)
    dead = dead_devices(rundir)
    was_dead = dead.pop(device_id, None) is not None
    write_record(RunDir(rundir).faults, Faults(dead=dead))
    log.info("%s restored%s", device_id, "" if was_dead else " (it was not dead)")
    return was_dead


def degrade_link(rundir: Path, device_id: str, *, loss: float | None = None,
                 bandwidth_bps: float | None = None, delay_s: float | None = None) -> Path:
    """Rewrite RUNDIR/topology.yaml so ``device_id`` has a degraded link; return its path.

    Args:
        loss: loss probability per packet, 0..1 (None: unchanged).
        bandwidth_bps: bit rate, bit/s (None: unchanged).
        delay_s: one-way delay, seconds (None: unchanged).

    Raises InputError (the file is left as it was) for an unknown device or invalid values.
    """
    info = load_info(Path(rundir))
    if info is None:
        raise InputError(f"no testbed in {rundir}")
    path = Path(info.topology)
    data = yaml.safe_load(path.read_text())
    device = next((d for d in data["devices"] if d["id"] == device_id), None)
    if device is None:
        raise InputError(f"{device_id} is not in {path} ({', '.join(info.devices)})")
    base = device["link"].split(f"-{device_id}")[0]
    link = dict(data["links"][base])
    for key, value in (("loss", loss), ("bandwidth_bps", bandwidth_bps), ("delay_s", delay_s)):
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


def restart_broker(rundir: Path, hard: bool = False, timeout_s: float = 15.0) -> int:
    """Stop the testbed's broker (SIGTERM, or SIGKILL if ``hard``) and start it again.

    Returns the new PID; RUNDIR/testbed.json is updated. Raises InputError if there is no
    running broker, RunError if the new one does not listen within ``timeout_s`` seconds.
    """
    rundir = Path(rundir)
    info = load_info(rundir)
    old = next((p for p in info.processes if p.role == "broker"), None) if info else None
    if old is None or not is_alive(old):
        raise InputError(f"no running broker in {rundir}")
    mosquitto = _binary_of(old)
    os.killpg(old.pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while is_alive(old):
        if time.monotonic() > deadline:
            os.killpg(old.pid, signal.SIGKILL)
        time.sleep(0.02)
    with open(old.log, "ab") as handle:
        handle.write(f"--- restart ({'SIGKILL' if hard else 'SIGTERM'}) ---\n".encode())
    files = RunDir(rundir)
    _, new = spawn_role("broker", [mosquitto, "-c", str(files.broker_conf)], files.logs)
    info = replace(info, processes=tuple(new if p.role == "broker" else p
                                         for p in info.processes))
    write_info(info)
    while True:
        try:
            with socket.create_connection((info.broker_host, info.broker_port), 0.5):
                break
        except OSError:
            if time.monotonic() > deadline + timeout_s or not is_alive(new):
                raise RunError(f"restarted broker not listening on {info.broker_port}; see "
                                 f"{new.log}") from None
            time.sleep(0.05)
    log.info("broker restarted (%s): pid %d", "hard" if hard else "soft", new.pid)
    return new.pid


def _binary_of(proc: RoleProcess) -> str:
    """The program a running role was started with (the first word of its command line)."""
    return Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
