"""Start one replay's device agents with a shared start instant, record them, wait for them.

``run_agents(info, mode, data, shots, start, rate, encoders, timeout_s)`` starts one
``python -m devices.agent`` per live device (through its link proxy), all with the same
``--start-at-unix-s T``, T = now + ``lead_s``: each agent loads its LiteRT encoder and connects
first, then sleeps until T, so the devices capture together and central does not wait for a
device that merely started late (the ``assembly`` stage). In real time gather k's stream
starts at T + k x 5 s on every device; as fast as possible, every agent starts at T.

Fault handling (see :mod:`emulation.faults`): a device marked dead in RUNDIR/faults.json is not
started (logged); the started agents' PIDs go to RUNDIR/agents.json so ``kill-device`` can
SIGKILL one mid-replay, and an agent that died that way is not a failure of the replay.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from emulation.faults import dead_devices, record_agents
from emulation.testbed import REPO, start_ticks
from epic.errors import InputError, RunError
from epic.rundir import AgentSummary, RecordError, RoleProcess, RunDir, TestbedInfo, read_record

__all__ = ["DEFAULT_LEAD_S", "AgentRun", "run_agents"]

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


def run_agents(info: TestbedInfo, mode: str, data: Path, shots: int, start: int, rate: str,
               encoders: Path, timeout_s: float, lead_s: float = DEFAULT_LEAD_S) -> AgentRun:
    """Run one mode's agents for gathers ``start .. start + shots`` and wait until they exit.

    Raises InputError if every device is dead; RunError if an agent fails (other than by
    kill-device) or does not finish within ``timeout_s`` seconds.
    """
    rundir = Path(info.rundir)
    dead = dead_devices(rundir)
    live = [d for d in info.devices if d not in dead]
    if not live:
        raise InputError(f"every device of {rundir} is dead (faults.json); run `epic testbed "
                         f"fault restore-device ID --dir {rundir}` first")
    run = AgentRun(start_at_unix_s=time.time() + lead_s, started=live,
                   skipped_dead=[d for d in info.devices if d in dead])
    for device in run.skipped_dead:
        log.warning("%s is dead (kill-device): its %s agent is not started", device, mode)
    procs: dict[str, tuple[Path, subprocess.Popen]] = {}
    for device in live:
        log_path = RunDir(rundir).log(f"agent-{device}-{mode}")
        args = [sys.executable, "-m", "devices.agent",
                "--device-id", device.rsplit("-", 1)[1], "--topology", info.topology,
                "--rundir", info.rundir, "--encoders", str(encoders), "--data", str(data),
                "--mode", mode, "--gathers", str(shots), "--start", str(start), "--rate", rate,
                "--start-at-unix-s", f"{run.start_at_unix_s:.6f}",
                "--broker-host", info.broker_host, "--broker-port", str(info.proxy_port(device))]
        with open(log_path, "ab") as handle:
            procs[device] = (log_path, subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO))
    record_agents(rundir, mode, {d: RoleProcess(f"agent-{d}", p.pid, start_ticks(p.pid) or -1,
                                                str(log_path))
                                 for d, (log_path, p) in procs.items()})
    for device in dead_devices(rundir):  # killed between our first look and agents.json
        if device in procs and procs[device][1].poll() is None:
            procs[device][1].send_signal(signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    failed = []
    for device, (log_path, proc) in procs.items():
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            failed.append(f"{device} did not finish within {timeout_s:.0f} s (see {log_path})")
            continue
        if proc.returncode == -signal.SIGKILL and device in dead_devices(rundir):
            log.warning("%s's %s agent was killed (kill-device)", device, mode)
            run.killed.append(device)
        elif proc.returncode != 0:
            failed.append(f"{device} exit {proc.returncode} (see {log_path})")
    if failed:
        raise RunError(f"{mode} agents failed: {'; '.join(failed)}")
    run.start_lag_s = {d: _start_lag_s(rundir, d, run.start_at_unix_s) for d in live
                       if d not in run.killed}
    late = {d: lag for d, lag in run.start_lag_s.items() if lag is not None and lag > 0.05}
    if late:
        log.warning("%s agents were not ready at the shared start (late by %s s); a longer "
                    "lead_s would start them together", mode,
                    ", ".join(f"{d} {lag:.2f}" for d, lag in late.items()))
    return run


def _start_lag_s(rundir: Path, device: str, start_at_unix_s: float) -> float | None:
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
