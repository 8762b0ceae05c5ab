"""Process-mode testbed: start, watch and stop the long-running roles of a topology.

``up(topology, rundir)`` prepares the broker runtime (credentials, ACL, conf) on a free port and
starts, each as its own process in its own session, logging to ``RUNDIR/logs/<role>.log``:

- ``broker``: our Mosquitto (``mosquitto -c RUNDIR/mosquitto.conf``);
- ``proxies``: ONE ``python -m emulation.proxy`` for every device (a shared medium must live in
  one event loop); device k (0-based, topology order) listens on ``proxy_base_port + k``;
- ``central``: ``python -m central.service`` with the shipped checkpoint.

The roles read RUNDIR/topology.yaml, a copy of the given file: the proxies hot-reload it, and
:mod:`emulation.faults` edits it (never the user's file).

It waits for health (the broker accepts TCP, central-status.json says ``connected``, every
proxy-<device>.json exists) and writes ``RUNDIR/testbed.json``: the PIDs (with their kernel
start times, so a recycled PID is never signalled), ports and paths. A results.jsonl (and
dropped.jsonl) left by an earlier testbed in RUNDIR is renamed ``results-<unix s>.jsonl``
(the new central starts empty).

Device agents are NOT kept running: an agent replays a given set of gathers and exits
(:mod:`emulation.replay` starts them per run, through their proxies). The ACL lets a device
read only central's confirmations for it, so a resident agent could not be commanded over
MQTT anyway.

``down(rundir)`` sends SIGTERM to each recorded process group, SIGKILL after ``timeout_s``,
and is always safe to run (no testbed.json, or dead PIDs, is not an error).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from epic.broker import REPO, free_port, prepare_runtime
from epic.errors import InputError, RunError
from epic.rundir import (
    CentralStatus,
    ProxyStatus,
    RecordError,
    RoleProcess,
    RunDir,
    TestbedInfo,
    read_record,
    write_record,
)
from epic.topology import Topology, check_model_slots, load_topology

__all__ = [
    "DEFAULT_CHECKPOINT",
    "ROLES",
    "TESTBED_FILE",
    "RoleProcess",
    "TestbedInfo",
    "central_summary",
    "check_models",
    "down",
    "is_alive",
    "link_summary",
    "load_info",
    "prepare_compose_runtime",
    "spawn_role",
    "start_ticks",
    "status",
    "up",
    "write_info",
]

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT = REPO / "artifacts" / "epic-flatvel-a.pt"
TESTBED_FILE = RunDir.TESTBED
ROLES: tuple[str, ...] = ("broker", "proxies", "central")


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


def load_info(rundir: Path) -> TestbedInfo | None:
    """RUNDIR/testbed.json, or None if there is none; RecordError (an InputError naming the
    file and field) if it is unreadable."""
    return read_record(RunDir(rundir).testbed, TestbedInfo)


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _free_block(host: str, count: int, attempts: int = 50) -> int:
    """A base port P with P .. P+count-1 free a moment ago."""
    for _ in range(attempts):
        base = free_port(host)
        if base + count <= 65535 and all(_port_free(host, base + k) for k in range(count)):
            return base
    raise InputError(f"found no {count} consecutive free ports on {host}")


def spawn_role(role: str, args: list[str], logs: Path) -> tuple[subprocess.Popen, RoleProcess]:
    """Start ``args`` in its own session, appending to ``logs/<role>.log``."""
    log_path = logs / f"{role}.log"
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    ticks = None
    for _ in range(100):  # /proc appears at once, but be safe on a loaded machine
        ticks = start_ticks(proc.pid)
        if ticks is not None or proc.poll() is not None:
            break
        time.sleep(0.01)
    log.info("%s: pid %d, log %s", role, proc.pid, log_path)
    return proc, RoleProcess(role, proc.pid, ticks or -1, str(log_path))


def _tail(path: str, lines: int = 8) -> str:
    try:
        return " | ".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _central_status(files: RunDir) -> CentralStatus | None:
    """Central's status, or None while it has written none (or none readable)."""
    try:
        return read_record(files.central_status, CentralStatus)
    except RecordError as exc:
        log.warning("%s", exc)
        return None


def _proxy_status(files: RunDir, device_id: str) -> ProxyStatus | None:
    """A link proxy's status, or None while it has written none (or none readable)."""
    try:
        return read_record(files.proxy_status(device_id), ProxyStatus)
    except RecordError as exc:
        log.warning("%s", exc)
        return None


def up(topology_path: Path, rundir: Path, *, checkpoint: Path = DEFAULT_CHECKPOINT,
       raw_checkpoint: Path | None = None, truth: Path | None = None,
       broker_port: int | None = None, host: str = "127.0.0.1",
       mosquitto_bin: str = "mosquitto", timeout_s: float = 90.0) -> TestbedInfo:
    """Start broker, link proxies and central for ``topology_path``; wait for health.

    Args:
        topology_path: the topology file (the proxies hot-reload it).
        rundir: run directory (created); logs go to rundir/logs.
        checkpoint: central's latent model. raw_checkpoint: InversionNet for raw mode, or
            None (raw gathers are then assembled and timed but get no map).
        truth: OpenFWI-layout dir with the true maps (central computes MAE/SSIM), or None.
        broker_port: a fixed port (refused if taken), or None for a free one.
        mosquitto_bin: the broker binary (looked up on PATH and in /usr/sbin).
        timeout_s: health wait, seconds.

    Raises InputError (nothing left running) if a testbed already runs in ``rundir``, the port
    is taken, mosquitto or an input file is missing, a checkpoint is unreadable, a device's
    receivers are not one of the latent model's slots (`check_models`; these are checked
    before anything is written or started); RunError if a role fails to become healthy. A failed
    ``up`` stops what it started and removes what it wrote: a run dir it created is removed,
    and in an existing one only what it added (and its testbed.json) goes.
    """
    topology_path, rundir = Path(topology_path).resolve(), Path(rundir).resolve()
    topology = load_topology(topology_path)
    for name, path in (("checkpoint", checkpoint), ("raw checkpoint", raw_checkpoint),
                       ("truth", truth)):
        if path is not None and not Path(path).exists():
            raise InputError(f"{name} {path} does not exist")
    old = load_info(rundir) if rundir.exists() else None
    if old is not None and any(is_alive(p) for p in old.processes):
        live = [f"{p.role} pid {p.pid}" for p in old.processes if is_alive(p)]
        raise InputError(f"a testbed is already running in {rundir} ({', '.join(live)}); "
                         f"run `epic testbed down --dir {rundir}` first")
    mosquitto = shutil.which(mosquitto_bin) or (
        f"/usr/sbin/{mosquitto_bin}" if Path(f"/usr/sbin/{mosquitto_bin}").exists() else None)
    if mosquitto is None:
        raise InputError(f"{mosquitto_bin} not found on PATH or in /usr/sbin "
                         f"(apt install mosquitto)")
    if broker_port is not None and not _port_free(host, broker_port):
        raise InputError(f"broker port {host}:{broker_port} is already in use")
    check_models(topology_path, topology, checkpoint, raw_checkpoint)
    created = not rundir.exists()
    before = set() if created else {p.name for p in rundir.iterdir()}
    started: list[tuple[subprocess.Popen, RoleProcess]] = []
    kept_results: list[tuple[Path, Path]] = []  # (central's record file, where it was kept)
    try:
        return _start(topology_path, topology, rundir, checkpoint, raw_checkpoint, truth,
                      broker_port, host, mosquitto, timeout_s, started, kept_results)
    except BaseException:
        _stop(reversed([p for _, p in started]), timeout_s=15.0)
        _remove_partial(rundir, created, before, kept_results, keep=topology_path)
        raise


def _start(topology_path: Path, topology: Topology, rundir: Path, checkpoint: Path,
           raw_checkpoint: Path | None, truth: Path | None, broker_port: int | None,
           host: str, mosquitto: str, timeout_s: float,
           started: list[tuple[subprocess.Popen, RoleProcess]],
           kept_results: list[tuple[Path, Path]]) -> TestbedInfo:
    """`up` once its inputs are checked; appends to ``started`` and ``kept_results`` (an
    earlier results.jsonl or dropped.jsonl moved aside) as it goes, so that `up` can undo a
    failure."""
    port = broker_port or free_port(host)
    devices = tuple(d.id for d in topology.devices)
    runtime = prepare_runtime(rundir, testbed=topology.testbed, host=host, port=port,
                              device_ids=[d.number for d in topology.devices])
    files = RunDir(rundir)
    logs = files.logs
    logs.mkdir(exist_ok=True)
    for stale in [*files.status_files(), files.faults, files.agents]:  # new testbed: no faults
        stale.unlink(missing_ok=True)
    kept_results.extend(files.rotate())  # a new central: keep the old records aside
    if topology_path != files.topology:  # the roles watch a copy: faults edit it
        shutil.copyfile(topology_path, files.topology)
        topology_path = files.topology
    proxy_base = _free_block(host, len(devices))
    py = sys.executable
    central_args = [py, "-m", "central.service", "--topology", str(topology_path),
                    "--rundir", str(rundir), "--checkpoint", str(Path(checkpoint).resolve())]
    if raw_checkpoint is not None:
        central_args += ["--raw-checkpoint", str(Path(raw_checkpoint).resolve())]
    if truth is not None:
        central_args += ["--truth", str(Path(truth).resolve())]
    commands = {
        "broker": [mosquitto, "-c", str(runtime.conf_path)],
        "proxies": [py, "-m", "emulation.proxy", "--topology", str(topology_path), "--rundir",
                    str(rundir), "--broker-host", host, "--broker-port", str(port),
                    "--listen-host", host, "--listen-port", str(proxy_base)],
        "central": central_args,
    }
    info = TestbedInfo(
        rundir=str(rundir), topology=str(topology_path), testbed=topology.testbed,
        broker_host=host, broker_port=port, proxy_base_port=proxy_base, devices=devices,
        checkpoint=str(Path(checkpoint).resolve()),
        raw_checkpoint=str(Path(raw_checkpoint).resolve()) if raw_checkpoint else None,
        truth=str(Path(truth).resolve()) if truth else None,
        processes=(), started_unix_s=time.time())
    for role in ROLES:
        started.append(spawn_role(role, commands[role], logs))
        info = replace(info, processes=tuple(p for _, p in started))
        write_info(info)  # written at once, so `down` can stop a half-started testbed
        if role == "broker":
            _wait(lambda: _accepts(host, port), started, timeout_s, "broker accepting")
    _wait(lambda: _healthy(rundir, devices), started, timeout_s,
          "central connected and proxy status files")
    info = replace(info, started_unix_s=time.time(), processes=tuple(p for _, p in started))
    write_info(info)
    log.info("testbed %s up in %s: broker :%d, proxies :%d..", info.testbed, rundir, port,
             proxy_base)
    return info


def check_models(topology_path: Path, topology: Topology, checkpoint: Path,
                 raw_checkpoint: Path | None = None) -> None:
    """Load central's checkpoints as central will, and check that every device's receivers
    are one of the latent model's slots, before anything starts.

    Raises `DataError` for an unreadable checkpoint, InputError for a model that takes no
    latents (or a raw checkpoint that is not InversionNet), and `TopologyError`
    (``FILE:LINE: devices[i].receivers: ...``) for receivers the model cannot place.
    """
    from epic.models.checkpoint import load_checkpoint  # torch: only once the cheap checks pass
    from epic.models.registry import DISTRIBUTED

    model, ckpt = load_checkpoint(checkpoint)
    if ckpt["model"] not in DISTRIBUTED:
        raise InputError(f"{checkpoint}: model {ckpt['model']!r} takes no latents; expected "
                         f"one of {sorted(DISTRIBUTED)}")
    check_model_slots(topology_path, topology, n_devices=model.n_devices,
                      rx_per_device=model.rx_per_device, model=Path(checkpoint).name)
    if raw_checkpoint is not None:
        load_checkpoint(raw_checkpoint, expected_model="inversionnet")


def _remove_partial(rundir: Path, created: bool, before: set[str],
                    kept_results: list[tuple[Path, Path]], keep: Path) -> None:
    """Undo a failed `up` in ``rundir`` (its processes stopped): remove the run dir if `up`
    created it, else what `up` added (testbed.json and the roles' status files included),
    and put an earlier results.jsonl and dropped.jsonl back. ``keep`` (the user's topology
    file) is kept."""
    if not rundir.is_dir():
        return
    if created and not keep.is_relative_to(rundir):
        shutil.rmtree(rundir, ignore_errors=True)
        return
    for original, kept in kept_results:
        if kept.is_file():
            os.replace(kept, original)
    ours = {RunDir.TESTBED, RunDir.CENTRAL_STATUS}
    for entry in rundir.iterdir():
        status = entry.match(RunDir.PROXY_GLOB) or entry.name.startswith(f".{RunDir.TESTBED}.")
        if entry == keep or (entry.name in before and entry.name not in ours and not status):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    log.info("removed what the failed up wrote in %s", rundir)


def write_info(info: TestbedInfo) -> None:
    """Replace RUNDIR/testbed.json atomically."""
    write_record(RunDir(info.rundir).testbed, info)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), 0.5):
            return True
    except OSError:
        return False


def _healthy(rundir: Path, devices: tuple[str, ...]) -> bool:
    files = RunDir(rundir)
    central = _central_status(files)
    return central is not None and central.connected and all(
        files.proxy_status(d).is_file() for d in devices)


def _wait(ready, started: list[tuple[subprocess.Popen, RoleProcess]], timeout_s: float,
          what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        for proc, role in started:
            if proc.poll() is not None:
                raise RunError(f"{role.role} exited with {proc.returncode} while waiting "
                                 f"for {what}: {_tail(role.log)}")
        if time.monotonic() > deadline:  # the logs go with the failed run dir: quote them
            tails = "; ".join(f"{role.role}: {_tail(role.log, 2)}" for _, role in started)
            raise RunError(f"testbed not healthy after {timeout_s:.0f} s (waiting for "
                             f"{what}); last log lines: {tails}")
        time.sleep(0.2)


def down(rundir: Path, timeout_s: float = 15.0) -> list[RoleProcess]:
    """Stop every process recorded in RUNDIR/testbed.json (SIGTERM, then SIGKILL).

    Central is stopped first (it drains and flushes), then the proxies, then the broker.
    Returns the processes that were running. Always safe: a missing file or dead PIDs are fine.
    """
    info = load_info(Path(rundir)) if Path(rundir).exists() else None
    if info is None:
        return []
    return _stop(reversed(info.processes), timeout_s)


def _stop(processes, timeout_s: float) -> list[RoleProcess]:
    """SIGTERM each live process in turn, SIGKILL after ``timeout_s``; return those that ran."""
    running = [p for p in processes if is_alive(p)]
    for proc in running:
        _signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while is_alive(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        if is_alive(proc):
            log.warning("%s pid %d ignored SIGTERM for %.0f s; killing", proc.role, proc.pid,
                        timeout_s)
            _signal(proc, signal.SIGKILL)
            while is_alive(proc):
                time.sleep(0.02)
        log.info("%s pid %d stopped", proc.role, proc.pid)
    return running


def _signal(proc: RoleProcess, sig: int) -> None:
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


def status(rundir: Path) -> dict:
    """Roles (alive?), links, frames accepted/rejected and energy so far, from the status files.

    Raises InputError if RUNDIR has no testbed.json.
    """
    rundir = Path(rundir)
    info = load_info(rundir)
    if info is None:
        raise InputError(f"no testbed in {rundir} ({TESTBED_FILE} missing)")
    files = RunDir(rundir)
    central = _central_status(files)
    links = {device: link_summary(_proxy_status(files, device), info.proxy_port(device))
             for device in info.devices}
    return {
        "testbed": info.testbed, "rundir": info.rundir, "topology": info.topology,
        "broker": f"{info.broker_host}:{info.broker_port}",
        "roles": {p.role: {"pid": p.pid, "alive": is_alive(p), "log": p.log}
                  for p in info.processes},
        "links": links, **central_summary(central),
    }


def link_summary(proxy: ProxyStatus | None, port: int) -> dict:
    """One device's line in ``status``: its proxy port, link, state, publishes, bytes, energy
    (None and {} while the proxy has written no status)."""
    if proxy is None:
        return {"port": port, "link": None, "state": None, "publishes": None,
                "up_wire_bytes": None, "energy_j": {}}
    return {"port": port, "link": proxy.link, "state": proxy.state,
            "publishes": proxy.publishes, "up_wire_bytes": proxy.up_wire_bytes,
            "energy_j": proxy.energy_j.to_dict()}


def central_summary(central: CentralStatus | None) -> dict:
    """Central's part of ``status``: frames, gathers, connected (None without a status)."""
    if central is None:
        return {"frames": None, "gathers": None, "central_connected": None}
    return {"frames": central.frames.to_dict(), "gathers": central.gathers.to_dict(),
            "central_connected": central.connected}


def prepare_compose_runtime(topology_path: Path, rundir: Path, port: int = 1883) -> Path:
    """A broker runtime for docker-compose.yml: clients reach the broker as ``broker``.

    The compose file mounts RUNDIR at the same absolute path in every container (the
    generated conf names absolute paths) and runs them as the host user. The topology is
    copied to RUNDIR/topology.yaml, the file the containers read (and the faults edit).
    """
    topology_path = Path(topology_path).resolve()
    topology = load_topology(topology_path)
    runtime = prepare_runtime(Path(rundir), testbed=topology.testbed, port=port, host="broker",
                              bind_address="0.0.0.0",
                              device_ids=[d.number for d in topology.devices])
    files = RunDir(runtime.rundir)
    if topology_path != files.topology:
        shutil.copyfile(topology_path, files.topology)
    return runtime.rundir
