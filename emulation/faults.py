"""Faults on a running process-mode testbed: degrade one device's link, restart the broker.

- ``degrade_link(rundir, "device-2", loss=0.05, bandwidth_bps=1e6)`` gives that device its own
  copy of its link profile (``<link>-<device>``) with the new values, in RUNDIR/topology.yaml,
  which the link proxies hot-reload (from the device's next packet on). On a shared link the
  degraded device leaves the shared medium for a medium of its own.
- ``restart_broker(rundir, hard=False)`` stops Mosquitto (SIGTERM saves its database; ``hard``
  SIGKILLs it) and starts it again on the same port and persistence; QoS 1 sessions resume.

Killing a device is not here: agents live only for one replay (see :mod:`emulation.testbed`).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from dataclasses import replace
from pathlib import Path

import yaml

from emulation.testbed import RoleProcess, is_alive, load_info, spawn_role, write_info
from epic.errors import InputError
from epic.topology import parse_topology

__all__ = ["degrade_link", "restart_broker"]

log = logging.getLogger(__name__)


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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    log.info("%s now on link %s: %s", device_id, name, link)
    return path


def restart_broker(rundir: Path, hard: bool = False, timeout_s: float = 15.0) -> int:
    """Stop the testbed's broker (SIGTERM, or SIGKILL if ``hard``) and start it again.

    Returns the new PID; RUNDIR/testbed.json is updated. Raises InputError if there is no
    running broker or the new one does not listen within ``timeout_s`` seconds.
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
    _, new = spawn_role("broker", [mosquitto, "-c", str(rundir / "mosquitto.conf")],
                    rundir / "logs")
    info = replace(info, processes=tuple(new if p.role == "broker" else p
                                         for p in info.processes))
    write_info(info)
    while True:
        try:
            with socket.create_connection((info.broker_host, info.broker_port), 0.5):
                break
        except OSError:
            if time.monotonic() > deadline + timeout_s or not is_alive(new):
                raise InputError(f"restarted broker not listening on {info.broker_port}; see "
                                 f"{new.log}") from None
            time.sleep(0.05)
    log.info("broker restarted (%s): pid %d", "hard" if hard else "soft", new.pid)
    return new.pid


def _binary_of(proc: RoleProcess) -> str:
    """The program a running role was started with (the first word of its command line)."""
    return Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
