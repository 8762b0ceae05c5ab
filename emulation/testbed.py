"""Preparing a testbed, for every runtime: the input checks and the run directory.

:mod:`emulation.runtime` starts the testbed's roles as processes or as containers; both, and
the compose init (:func:`prepare_compose_runtime`), prepare the run directory here:

- :func:`check_inputs` and :func:`check_models`: the topology parses, the named files exist,
  central's checkpoints load, and every device's receivers are one of the latent model's
  slots, before anything is written or started;
- :func:`prepare_rundir`: the broker's config, credentials and ACL (:func:`epic.broker.
  prepare_runtime`), RUNDIR/topology.yaml (a copy of the given file: the link proxies
  hot-reload it and the faults edit it, never the user's file), and no stale files: the roles'
  status files, faults.json and agents.json of an earlier testbed go, and its results.jsonl
  and dropped.jsonl are renamed ``results-<unix s>.jsonl`` (the new central starts empty).

Device agents are NOT kept running: an agent replays a given set of gathers and exits (the
runtime's ``run_devices`` starts them per replay, through their proxies). The ACL lets a
device read only central's confirmations for it, so a resident agent could not be commanded
over MQTT anyway.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from epic.broker import REPO, BrokerRuntime, prepare_runtime
from epic.devicespec import DEVICE_SPECS_FILE, write_device_specs
from epic.errors import InputError
from epic.rundir import RunDir
from epic.topology import Topology, check_model_slots, load_topology

__all__ = [
    "BROKER_SAVE_INTERVAL_S",
    "DEFAULT_CHECKPOINT",
    "check_inputs",
    "check_models",
    "prepare_compose_runtime",
    "prepare_rundir",
]

DEFAULT_CHECKPOINT = REPO / "artifacts" / "epic-flatvel-a.pt"


def check_inputs(topology_path: Path, **files: Path | None) -> Topology:
    """The parsed topology, once it and every named file (None: not given) exist.

    ``files``: name -> path, e.g. ``checkpoint=...``; a missing one is an InputError naming it
    (``raw_checkpoint`` reads "raw checkpoint").
    """
    topology = load_topology(topology_path)
    for name, path in files.items():
        if path is not None and not Path(path).exists():
            raise InputError(f"{name.replace('_', ' ')} {path} does not exist")
    return topology


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


BROKER_SAVE_INTERVAL_S = 5
"""The testbed's broker saves its database every 5 s, not after every change (which costs 2.1x
the p99 latency and 1/3.8 the burst rate): its agents keep every frame until central confirms
it and resend after a reconnect, so a SIGKILL loses no frame (docs/wire-format.md). Each save
stalls the broker for a few ms; at 1 s they were 1% of a 100 Hz stream, its p99."""


def _broker_runtime(topology_path: Path, topology: Topology, rundir: Path, *, host: str,
                    port: int, bind_address: str | None) -> BrokerRuntime:
    """Config, credentials and ACL in ``rundir``, and the topology copy the roles read."""
    runtime = prepare_runtime(Path(rundir), testbed=topology.testbed, host=host, port=port,
                              bind_address=bind_address,
                              device_ids=[d.number for d in topology.devices],
                              save_interval_s=BROKER_SAVE_INTERVAL_S)
    files = RunDir(runtime.rundir)
    if Path(topology_path).resolve() != files.topology:  # the roles watch a copy
        shutil.copyfile(topology_path, files.topology)
    # the agents read their devices from this, not from the YAML (no pydantic at launch)
    write_device_specs(files.root / DEVICE_SPECS_FILE, topology.testbed, files.topology,
                       topology.devices)
    return runtime


def prepare_rundir(topology_path: Path, topology: Topology, rundir: Path, *, host: str,
                   port: int, bind_address: str | None = None,
                   kept: list[tuple[Path, Path]] | None = None) -> BrokerRuntime:
    """Prepare ``rundir`` for a new testbed of ``topology``; return the broker runtime.

    Writes the broker's files and RUNDIR/topology.yaml, creates RUNDIR/logs, removes the
    roles' status files, faults.json and agents.json, and moves central's record files aside;
    the ``(original, kept)`` pairs of those are appended to ``kept``, so that a failed start
    can put them back.
    """
    runtime = _broker_runtime(topology_path, topology, rundir, host=host, port=port,
                              bind_address=bind_address)
    files = RunDir(runtime.rundir)
    files.logs.mkdir(exist_ok=True)
    for stale in [*files.status_files(), files.faults, files.agents]:  # a new testbed
        stale.unlink(missing_ok=True)
    moved = files.rotate()  # a new central: keep the old records aside
    if kept is not None:
        kept.extend(moved)
    return runtime


def prepare_compose_runtime(topology_path: Path, rundir: Path, port: int = 1883) -> Path:
    """A broker runtime for docker-compose.yml: clients reach the broker as ``broker``.

    The compose file mounts RUNDIR at the same absolute path in every container (the
    generated conf names absolute paths) and runs them as the host user. The topology is
    copied to RUNDIR/topology.yaml, the file the containers read (and the faults edit).
    """
    topology_path = Path(topology_path).resolve()
    runtime = _broker_runtime(topology_path, load_topology(topology_path), Path(rundir),
                              host="broker", port=port, bind_address="0.0.0.0")
    return runtime.rundir
