"""The process runtime: the testbed's roles as local processes.

``ProcessRuntime(rundir).up(topology)`` prepares the run directory (:mod:`emulation.testbed`)
on a free broker port and starts, each in its own session, logging to
``RUNDIR/logs/<role>.log``:

- ``broker``: our Mosquitto, through :class:`epic.broker.BrokerProcess` (the broker lifecycle
  the broker tests exercise), detached;
- ``proxies``: ONE ``python -m emulation.proxy`` for every device (a shared medium must live in
  one event loop); device k (0-based, topology order) listens on ``proxy_base_port + k``;
- ``central``: ``python -m central.service`` with the shipped checkpoint.

It waits for health (the broker accepts TCP, central-status.json says ``connected``, every
proxy-<device>.json exists) and records RUNDIR/testbed.json: the PIDs (with their kernel start
times, so a recycled PID is never signalled), ports and paths.

``run_devices`` starts one ``python -m devices.agent`` per live device (through its link
proxy), all with the same ``--start-at-unix-s T``: each agent loads its LiteRT encoder and
connects first, then sleeps until T, so the devices capture together. The started agents'
PIDs go to RUNDIR/agents.json, so that ``kill_device`` can SIGKILL one mid-replay.

``down`` sends SIGTERM to each recorded process group, SIGKILL after ``timeout_s``, and is
always safe to run (no testbed.json, or dead PIDs, is not an error).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

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
from emulation.runtime.processes import (
    free_block,
    is_alive,
    log_tail,
    port_free,
    spawn_role,
    start_ticks,
    stop_processes,
)
from emulation.testbed import DEFAULT_CHECKPOINT, check_inputs, check_models, prepare_rundir
from epic.broker import REPO, BrokerError, BrokerProcess, free_port, load_runtime
from epic.errors import InputError, RunError
from epic.rundir import (
    AgentProcesses,
    RoleProcess,
    RunDir,
    TestbedInfo,
    read_record,
    write_record,
)

__all__ = [
    "ROLES",
    "ProcessRuntime",
    "load_info",
    "running_agents",
    "write_info",
]

log = logging.getLogger(__name__)

ROLES: tuple[str, ...] = ("broker", "proxies", "central")


def load_info(rundir: Path) -> TestbedInfo | None:
    """RUNDIR/testbed.json, or None if there is none; RecordError (an InputError naming the
    file and field) if it is unreadable."""
    return read_record(RunDir(rundir).testbed, TestbedInfo)


def write_info(info: TestbedInfo) -> None:
    """Replace RUNDIR/testbed.json atomically."""
    write_record(RunDir(info.rundir).testbed, info)


def running_agents(rundir: Path) -> dict[str, RoleProcess]:
    """The agents recorded in RUNDIR/agents.json that are still running, by device id."""
    record = read_record(RunDir(rundir).agents, AgentProcesses)
    procs = record.agents if record else {}
    return {d: p for d, p in procs.items() if is_alive(p)}


def _mosquitto(binary: str) -> str:
    found = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None)
    if found is None:
        raise InputError(f"{binary} not found on PATH or in /usr/sbin (apt install mosquitto)")
    return found


class ProcessRuntime(Runtime):
    """The testbed's roles as processes on this machine (see the module docstring).

    Args:
        rundir: the run directory. host: where the broker and proxies listen.
        mosquitto_bin: the broker program (looked up on PATH and in /usr/sbin).
    """

    kind: ClassVar[str] = "process"
    record: ClassVar[str] = RunDir.TESTBED

    def __init__(self, rundir: Path, *, host: str = "127.0.0.1",
                 mosquitto_bin: str = "mosquitto") -> None:
        super().__init__(rundir)
        self.host = host
        self.mosquitto_bin = mosquitto_bin

    def info(self) -> TestbedInfo | None:
        """RUNDIR/testbed.json, or None (see :func:`load_info`)."""
        return load_info(self.rundir) if self.rundir.exists() else None

    def recorded_devices(self) -> tuple[str, ...] | None:
        info = self.info()
        return None if info is None else info.devices

    # -- up ----------------------------------------------------------------------------------

    def up(self, topology_path: Path, *, checkpoint: Path | None = None,
           raw_checkpoint: Path | None = None, truth: Path | None = None,
           broker_port: int | None = None, timeout_s: float = 90.0) -> TestbedStatus:
        """Start broker, link proxies and central; wait for health (see :meth:`Runtime.up`).

        ``broker_port``: a fixed port (refused if taken), or None for a free one.

        Raises InputError (nothing left running) if a testbed already runs in the run
        directory, the port is taken, mosquitto or an input file is missing, a checkpoint is
        unreadable, a device's receivers are not one of the latent model's slots (these are
        checked before anything is written or started); RunError if a role fails to become
        healthy. A failed ``up`` stops what it started and removes what it wrote: a run dir it
        created is removed, and in an existing one only what it added (and its testbed.json).
        """
        topology_path = Path(topology_path).resolve()
        checkpoint = checkpoint or DEFAULT_CHECKPOINT
        topology = check_inputs(topology_path, checkpoint=checkpoint,
                                raw_checkpoint=raw_checkpoint, truth=truth)
        old = self.info()
        if old is not None and any(is_alive(p) for p in old.processes):
            live = [f"{p.role} pid {p.pid}" for p in old.processes if is_alive(p)]
            raise InputError(f"a testbed is already running in {self.rundir} "
                             f"({', '.join(live)}); run `epic testbed down --dir "
                             f"{self.rundir}` first")
        mosquitto = _mosquitto(self.mosquitto_bin)
        if broker_port is not None and not port_free(self.host, broker_port):
            raise InputError(f"broker port {self.host}:{broker_port} is already in use")
        check_models(topology_path, topology, checkpoint, raw_checkpoint)
        created = not self.rundir.exists()
        before = set() if created else {p.name for p in self.rundir.iterdir()}
        started: list[RoleProcess] = []
        kept: list[tuple[Path, Path]] = []  # (central's record file, where it was kept)
        try:
            info = self._start(topology_path, topology, mosquitto, broker_port, timeout_s,
                               checkpoint=Path(checkpoint).resolve(),
                               raw_checkpoint=raw_checkpoint, truth=truth, started=started,
                               kept=kept)
        except BaseException:
            stop_processes(reversed(started), timeout_s=15.0)
            self._remove_partial(created, before, kept, keep=topology_path)
            raise
        log.info("testbed %s up in %s: broker :%d, proxies :%d..", info.testbed, self.rundir,
                 info.broker_port, info.proxy_base_port)
        return self.status()

    def _start(self, topology_path, topology, mosquitto: str, broker_port: int | None,
               timeout_s: float, *, checkpoint: Path, raw_checkpoint: Path | None,
               truth: Path | None, started: list[RoleProcess],
               kept: list[tuple[Path, Path]]) -> TestbedInfo:
        """`up` once its inputs are checked; appends to ``started`` and ``kept`` as it goes,
        so that `up` can undo a failure."""
        host = self.host
        port = broker_port or free_port(host)
        runtime = prepare_rundir(topology_path, topology, self.rundir, host=host, port=port,
                                 kept=kept)
        files = self.files
        devices = tuple(d.id for d in topology.devices)
        proxy_base = free_block(host, len(devices))
        info = TestbedInfo(
            rundir=str(self.rundir), topology=str(files.topology), testbed=topology.testbed,
            broker_host=host, broker_port=port, proxy_base_port=proxy_base, devices=devices,
            checkpoint=str(checkpoint),
            raw_checkpoint=str(Path(raw_checkpoint).resolve()) if raw_checkpoint else None,
            truth=str(Path(truth).resolve()) if truth else None,
            processes=(), started_unix_s=time.time())
        popens: list[tuple[subprocess.Popen, RoleProcess]] = []

        def record(role: RoleProcess) -> None:
            started.append(role)
            write_info(replace(info, processes=tuple(started)))  # so `down` finds a half-up

        record(self._start_broker(runtime, mosquitto, files.log("broker"), timeout_s))
        for role, args in (("proxies", self._proxy_args(info)),
                           ("central", self._central_args(info))):
            popens.append(spawn_role(role, args, files.logs))
            record(popens[-1][1])

        def exited() -> str | None:
            if not is_alive(started[0]):
                return (f"broker exited while waiting for central connected and proxy "
                        f"status files: {log_tail(started[0].log)}")
            for proc, role in popens:
                if proc.poll() is not None:
                    return (f"{role.role} exited with {proc.returncode} while waiting for "
                            f"central connected and proxy status files: {log_tail(role.log)}")
            return None

        def timed_out() -> str:  # the logs go with the failed run dir: quote them
            tails = "; ".join(f"{role.role}: {log_tail(role.log, 2)}" for role in started)
            return (f"testbed not healthy after {timeout_s:.0f} s (waiting for central "
                    f"connected and proxy status files); last log lines: {tails}")

        wait_until(lambda: healthy(files, devices), exited, timeout_s, timed_out)
        if runtime.save_interval_s is not None:
            # central's session and subscriptions are new: have the broker save them now
            # (SIGUSR1), not up to save_interval_s later, so that a SIGKILL during the first
            # replay cannot lose them while devices resend
            with contextlib.suppress(ProcessLookupError):
                os.kill(started[0].pid, signal.SIGUSR1)
        info = replace(info, started_unix_s=time.time(), processes=tuple(started))
        write_info(info)
        return info

    @staticmethod
    def _start_broker(runtime, mosquitto: str, log_path: Path, timeout_s: float) -> RoleProcess:
        """Start the broker with :class:`BrokerProcess` and wait until it accepts TCP."""
        broker = BrokerProcess(runtime, log_path=log_path, binary=mosquitto, detached=True)
        try:
            broker.start(timeout_s)
        except BrokerError as exc:
            raise RunError(f"broker: {' | '.join(str(exc).splitlines())}") from exc
        log.info("broker: pid %d, log %s", broker.pid, log_path)
        return RoleProcess(role="broker", pid=broker.pid,
                           start_ticks=start_ticks(broker.pid) or -1, log=str(log_path))

    @staticmethod
    def _proxy_args(info: TestbedInfo) -> list[str]:
        return [sys.executable, "-m", "emulation.proxy",
                "--topology", info.topology,
                "--rundir", info.rundir,
                "--broker-host", info.broker_host,
                "--broker-port", str(info.broker_port),
                "--listen-host", info.broker_host,
                "--listen-port", str(info.proxy_base_port)]

    @staticmethod
    def _central_args(info: TestbedInfo) -> list[str]:
        args = [sys.executable, "-m", "central.service",
                "--topology", info.topology,
                "--rundir", info.rundir,
                "--checkpoint", info.checkpoint]
        if info.raw_checkpoint is not None:
            args += ["--raw-checkpoint", info.raw_checkpoint]
        if info.truth is not None:
            args += ["--truth", info.truth]
        return args

    def _remove_partial(self, created: bool, before: set[str],
                        kept: list[tuple[Path, Path]], keep: Path) -> None:
        """Undo a failed `up` (its processes stopped): remove the run dir if `up` created it,
        else what `up` added (testbed.json and the roles' status files included), and put an
        earlier results.jsonl and dropped.jsonl back. ``keep`` (the user's topology) stays."""
        rundir = self.rundir
        if not rundir.is_dir():
            return
        if created and not keep.is_relative_to(rundir):
            shutil.rmtree(rundir, ignore_errors=True)
            return
        for original, kept_as in kept:
            if kept_as.is_file():
                os.replace(kept_as, original)
        ours = {RunDir.TESTBED, RunDir.CENTRAL_STATUS}
        for entry in rundir.iterdir():
            status = (entry.match(RunDir.PROXY_GLOB)
                      or entry.name.startswith(f".{RunDir.TESTBED}."))
            if entry == keep or (entry.name in before and entry.name not in ours
                                 and not status):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        log.info("removed what the failed up wrote in %s", rundir)

    def up_line(self, status: TestbedStatus) -> str:
        info = self.info()
        roles = ", ".join(f"{p.role} {p.pid}" for p in info.processes)
        return (f"testbed {info.testbed} up in {info.rundir}: broker {info.broker_host}:"
                f"{info.broker_port}, proxies {info.proxy_base_port}.."
                f"{info.proxy_base_port + len(info.devices) - 1} ({roles})")

    def start_dashboard(self) -> tuple[str, int]:
        from emulation.dashboard import start_detached

        role, url = start_detached(self.rundir)
        return url, role.pid

    # -- down, status ------------------------------------------------------------------------

    def down(self, timeout_s: float = 15.0) -> list[str]:
        """Stop every process recorded in RUNDIR/testbed.json (SIGTERM, then SIGKILL).

        Central is stopped first (it drains and flushes), then the proxies, then the broker.
        Returns ``"<role> <pid>"`` of the processes that were running.
        """
        info = self.info()
        if info is None:
            return []
        return [f"{p.role} {p.pid}" for p in stop_processes(reversed(info.processes),
                                                             timeout_s)]

    def down_line(self, stopped: list[str]) -> str:
        return (f"stopped {', '.join(stopped)}" if stopped
                else f"no processes running in {self.rundir}")

    def status(self) -> TestbedStatus:
        """Roles (alive?), links, frames accepted/rejected and energy so far.

        Raises InputError if the run directory has no testbed.json.
        """
        info = load_info(self.rundir)
        if info is None:
            raise InputError(f"no testbed in {self.rundir} ({RunDir.TESTBED} missing)")
        return TestbedStatus(
            runtime=self.kind, testbed=info.testbed, rundir=info.rundir,
            topology=info.topology, broker=f"{info.broker_host}:{info.broker_port}",
            devices=info.devices,
            roles={p.role: RoleState(alive=is_alive(p), pid=p.pid, log=p.log)
                   for p in info.processes},
            links=self._links(self.files, {d: info.proxy_port(d) for d in info.devices}),
            truth=info.truth, raw_checkpoint=info.raw_checkpoint, **self._central(self.files))

    # -- faults ------------------------------------------------------------------------------

    def restart_broker(self, hard: bool = False, timeout_s: float = 15.0) -> str:
        """Stop the broker (SIGTERM, or SIGKILL if ``hard``) and start it again with
        :class:`BrokerProcess`; testbed.json is updated. Returns ``pid <new pid>``."""
        info = self.info()
        old = next((p for p in info.processes if p.role == "broker"), None) if info else None
        if old is None or not is_alive(old):
            raise InputError(f"no running broker in {self.rundir}")
        mosquitto = Path(f"/proc/{old.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        sig = signal.SIGKILL if hard else signal.SIGTERM
        os.killpg(old.pid, sig)
        deadline = time.monotonic() + timeout_s
        while is_alive(old):
            if time.monotonic() > deadline:
                os.killpg(old.pid, signal.SIGKILL)
            time.sleep(0.02)
        with open(old.log, "ab") as handle:
            handle.write(f"--- restart ({sig.name}) ---\n".encode())
        new = self._start_broker(load_runtime(self.rundir), mosquitto, Path(old.log), timeout_s)
        write_info(replace(info, processes=tuple(new if p.role == "broker" else p
                                                 for p in info.processes)))
        log.info("broker restarted (%s): pid %d", "hard" if hard else "soft", new.pid)
        return f"pid {new.pid}"

    def _kill_agent(self, device_id: str) -> str | None:
        agent = running_agents(self.rundir).get(device_id)
        if agent is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            os.kill(agent.pid, signal.SIGKILL)
        return f"agent pid {agent.pid}"

    # -- replay ------------------------------------------------------------------------------

    def run_devices(self, mode: str, data: Path, *, shots: int, start: int, rate: str,
                    encoders: Path, timeout_s: float,
                    lead_s: float = DEFAULT_LEAD_S) -> AgentRun:
        """One ``python -m devices.agent`` per live device, through its link proxy; see
        :meth:`Runtime.run_devices`. Agents log to RUNDIR/logs/agent-<device>-<mode>.log."""
        info = self.info()
        if info is None:
            raise InputError(f"no running testbed in {self.rundir}; run `epic testbed up` "
                             f"first")
        run = self._plan_agents(info.devices, mode, lead_s)
        procs: dict[str, tuple[Path, subprocess.Popen]] = {}
        for device in run.started:
            log_path = self.files.log(f"agent-{device}-{mode}")
            args = [sys.executable, "-m", "devices.agent",
                    "--device-id", device.rsplit("-", 1)[1],
                    "--topology", info.topology,
                    "--rundir", info.rundir,
                    "--encoders", str(encoders),
                    "--data", str(data),
                    "--mode", mode,
                    "--gathers", str(shots),
                    "--start", str(start),
                    "--rate", rate,
                    "--start-at-unix-s", f"{run.start_at_unix_s:.6f}",
                    "--broker-host", info.broker_host,
                    "--broker-port", str(info.proxy_port(device))]
            with open(log_path, "ab") as handle:
                procs[device] = (log_path, subprocess.Popen(
                    args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    cwd=REPO))
        agents = {d: RoleProcess(role=f"agent-{d}", pid=p.pid,
                                 start_ticks=start_ticks(p.pid) or -1, log=str(log_path))
                  for d, (log_path, p) in procs.items()}
        write_record(self.files.agents, AgentProcesses(mode=mode, agents=agents))
        for device in dead_devices(self.rundir):  # killed between our first look and now
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
                failed.append(f"{device} did not finish within {timeout_s:.0f} s "
                              f"(see {log_path})")
                continue
            if proc.returncode == -signal.SIGKILL and device in dead_devices(self.rundir):
                log.warning("%s's %s agent was killed (kill-device)", device, mode)
                run.killed.append(device)
            elif proc.returncode != 0:
                failed.append(f"{device} exit {proc.returncode} (see {log_path})")
        return self._finish_agents(run, mode, failed)
