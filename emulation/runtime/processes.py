"""Processes and ports of the process runtime: start a role detached, tell it apart from a
recycled PID, stop it; find free ports.

A role runs in a session of its own (so that its process group can be signalled and it
outlives the ``epic`` command that started it), appending its output to
``RUNDIR/logs/<role>.log``. It is recorded as a :class:`~epic.rundir.RoleProcess`: its PID with
the kernel's start time of that PID, so that a later command never signals a recycled PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from epic.broker import REPO, free_port
from epic.errors import InputError
from epic.rundir import RoleProcess

__all__ = [
    "free_block",
    "is_alive",
    "log_tail",
    "port_free",
    "role_of",
    "signal_group",
    "spawn_role",
    "start_ticks",
    "stop_processes",
]

log = logging.getLogger(__name__)


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None if no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited; reap it if it is our child
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return None
    return int(fields[19])


def is_alive(proc: RoleProcess) -> bool:
    """Whether ``proc`` is still the same running process (not exited, PID not recycled)."""
    return start_ticks(proc.pid) == proc.start_ticks


def role_of(role: str, proc: subprocess.Popen, log_path: Path) -> RoleProcess:
    """The record of a just-started process (its /proc entry may lag on a loaded machine)."""
    ticks = None
    for _ in range(100):
        ticks = start_ticks(proc.pid)
        if ticks is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    return RoleProcess(role=role, pid=proc.pid, start_ticks=ticks or -1, log=str(log_path))


def spawn_role(role: str, args: list[str], logs: Path) -> tuple[subprocess.Popen, RoleProcess]:
    """Start ``args`` in its own session, appending to ``logs/<role>.log``."""
    log_path = logs / f"{role}.log"
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    log.info("%s: pid %d, log %s", role, proc.pid, log_path)
    return proc, role_of(role, proc, log_path)


def log_tail(path: str | Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a role's log on one line, joined by `` | ``."""
    try:
        return " | ".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def signal_group(proc: RoleProcess, sig: int) -> None:
    """Signal the role's process group (it leads its own session), else the process alone."""
    if not is_alive(proc):
        return
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_processes(processes: Iterable[RoleProcess], timeout_s: float) -> list[RoleProcess]:
    """SIGTERM each live process in turn, SIGKILL after ``timeout_s``; return those that ran."""
    running = [p for p in processes if is_alive(p)]
    for proc in running:
        signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_alive(proc):
            log.warning("%s pid %d ignored SIGTERM for %.0f s; killing", proc.role, proc.pid,
                        timeout_s)
            signal_group(proc, signal.SIGKILL)
            while is_alive(proc):
                time.sleep(0.02)
        log.info("%s pid %d stopped", proc.role, proc.pid)
    return running


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` could be bound a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_block(host: str, count: int, attempts: int = 50) -> int:
    """A base port P with P .. P+count-1 free a moment ago."""
    for _ in range(attempts):
        base = free_port(host)
        if base + count <= 65535 and all(port_free(host, base + k) for k in range(count)):
            return base
    raise InputError(f"found no {count} consecutive free ports on {host}")
