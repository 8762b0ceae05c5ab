"""Virtual-time runs of the testbed: EPIC latent frames against raw traces.

``simulate(topology, "both", shots=100, seed=0)`` runs the same topology twice in virtual time,
once with EPIC frames and once with raw chunks, and returns latency percentiles, bytes, energy
per device and the ratios raw over EPIC. Sweeps over one parameter (the CSV table, the plot,
the runs on local cores or a Dask cluster) are in :mod:`emulation.sweeps`.

Frame sizes are an input (`FrameSizes`): the defaults below stand in until `epic.wire` gives
the real encoder's sizes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from emulation.energy import DeviceEnergy
from emulation.network import STAGES, Message, NetworkModel, Workload
from epic.errors import InputError
from epic.topology import Topology, model_slot_problems

__all__ = [
    "MODES",
    "ComputeTimes",
    "FrameSizes",
    "ModeSummary",
    "ModelFit",
    "Percentiles",
    "Ratios",
    "SimulationResult",
    "shipped_model_fit",
    "simulate",
    "wire_frame_sizes",
]

log = logging.getLogger(__name__)

Mode = Literal["epic", "raw", "both"]
MODES: tuple[str, ...] = ("epic", "raw", "both")

_RAW_GATHER_BYTES = 5 * 1000 * 14 * 4  # (shots, samples, receivers) float32 = 280,000 bytes
#: The encoder manifest of the shipped checkpoint: its slots (n_devices x rx_per_device) are
#: the live testbed's, read without torch.
SHIPPED_ENCODERS = (Path(__file__).resolve().parents[1] / "artifacts" / "encoders"
                    / "epic-flatvel-a" / "manifest.json")


@dataclass(frozen=True)
class FrameSizes:
    """Bytes per MQTT message, the MQTT PUBLISH header excluded.

    Attributes:
        latent_frame_bytes: one EPIC frame per device per shot-gather (default: 1,024-byte
            int8 latent plus an assumed 32-byte wire header).
        raw_chunk_bytes: one raw chunk (default: one shot, 1000 × 14 float32 = 56,000 bytes,
            plus the same 32-byte header).
        raw_chunks: raw chunks per device per shot-gather (default 5: 280,000 bytes in all).
        publish_overhead_bytes: MQTT PUBLISH fixed header, topic and packet id per message.
    """

    latent_frame_bytes: int = 1024 + 32
    raw_chunk_bytes: int = _RAW_GATHER_BYTES // 5 + 32
    raw_chunks: int = 5
    publish_overhead_bytes: int = 30

    def __post_init__(self) -> None:
        for name in ("latent_frame_bytes", "raw_chunk_bytes", "raw_chunks"):
            if getattr(self, name) < 1:
                raise InputError(f"FrameSizes.{name} must be >= 1, got {getattr(self, name)}")
        if self.publish_overhead_bytes < 0:
            raise InputError(f"FrameSizes.publish_overhead_bytes must be >= 0, "
                             f"got {self.publish_overhead_bytes}")


@dataclass(frozen=True)
class ComputeTimes:
    """Compute before sending, seconds on one unconstrained host core (scaled per device by
    its hardware class, ``t_host × cpu_scale × max(1, 1 / cpus)``, or by its ``cpu_scale``).

    ``encode_s`` is a placeholder for the measured LiteRT encoder time; ``raw_pack_s`` is the
    time to pack one raw chunk (a memory copy).
    """

    encode_s: float = 0.005
    raw_pack_s: float = 0.0


@dataclass(frozen=True)
class Percentiles:
    """p50, p95 and p99 of a sample, seconds (NaN when empty)."""

    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: np.ndarray) -> Percentiles:
        if values.size == 0:
            return cls(float("nan"), float("nan"), float("nan"))
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return cls(float(p50), float(p95), float(p99))


@dataclass(frozen=True)
class ModeSummary:
    """One mode's run.

    ``gather_latency_s`` is per device and shot-gather: from the gather being available to
    central finishing the device's last message of it (gathers with a lost message are left
    out). ``stage_mean_s`` is the mean seconds per frame in each of `STAGES`.
    """

    mode: str
    frames: int
    frames_lost: int
    gather_latency_s: Percentiles
    frame_latency_s: Percentiles
    stage_mean_s: dict[str, float]
    uplink_bytes: int
    downlink_bytes: int
    energy: tuple[DeviceEnergy, ...]
    comm_j: float
    wall_s: float


@dataclass(frozen=True)
class Ratios:
    """Raw over EPIC: latency percentiles (per device gather), comm energy and bytes."""

    latency_p50: float
    latency_p95: float
    latency_p99: float
    energy_comm: float
    bytes: float


@dataclass(frozen=True)
class ModelFit:
    """Whether the topology could run on the shipped models (`epic testbed up` with the
    shipped checkpoint): every device's receivers must be one of its slots. The simulation
    itself models any receiver layout.

    Attributes:
        models: the checkpoint the slots are those of. slots: its ``n_devices`` and
            ``rx_per_device``. fits: no problem. problems: one ``FILE:LINE: PATH: REASON``
            per device that does not fit.
    """

    models: str
    slots: dict[str, int]
    fits: bool
    problems: tuple[str, ...]


def shipped_model_fit(topology: Topology, source: str | Path | None = None,
                      manifest: Path = SHIPPED_ENCODERS) -> ModelFit | None:
    """`ModelFit` of ``topology`` against the shipped models (slots from the encoder manifest,
    no torch); ``source``, the topology file, gives the problems their lines. None when the
    manifest cannot be read (the fit is then unknown)."""
    try:
        data = json.loads(Path(manifest).read_text())
        n_devices, k = int(data["n_devices"]), int(data["rx_per_device"])
        models = Path(data.get("source_checkpoint", {}).get("path") or manifest).name
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("cannot read the shipped models' slots from %s: %s", manifest, exc)
        return None
    text = None
    if source is not None:
        with contextlib.suppress(OSError):
            text = Path(source).read_text(encoding="utf-8")
    problems = model_slot_problems(topology, n_devices=n_devices, rx_per_device=k,
                                   model=models, source=str(source or topology.testbed),
                                   text=text)
    return ModelFit(models, {"n_devices": n_devices, "rx_per_device": k}, not problems,
                    tuple(str(p) for p in problems))


@dataclass(frozen=True)
class SimulationResult:
    """The result of `simulate`: one summary per mode, the ratios when both ran, and whether
    the topology could run on the shipped models (`ModelFit`; None if unknown)."""

    testbed: str
    seed: int
    shots: int
    frame_sizes: FrameSizes
    compute: ComputeTimes
    modes: tuple[ModeSummary, ...]
    ratios: Ratios | None
    shipped_models: ModelFit | None = None

    def mode(self, name: str) -> ModeSummary:
        """The summary of mode ``name`` ("epic" or "raw")."""
        for m in self.modes:
            if m.mode == name:
                return m
        raise KeyError(name)

    def to_dict(self) -> dict:
        """Plain JSON-able data (energy per device with its comm/radio/total sums)."""
        data = dataclasses.asdict(self)
        for summary, out in zip(self.modes, data["modes"], strict=True):
            for e, row in zip(summary.energy, out["energy"], strict=True):
                row.update(comm_j=e.comm_j, radio_j=e.radio_j, total_j=e.total_j)
        return data

    def to_json(self, indent: int = 2) -> str:
        """`to_dict` as JSON text (NaN written as null)."""
        return json.dumps(_nan_to_none(self.to_dict()), indent=indent, allow_nan=False)


def _varint_bytes(n: int) -> int:
    """Bytes of an MQTT variable-byte integer holding ``n``."""
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def wire_frame_sizes(testbed: str, latent_shape: tuple[int, ...] = (14, 64),
                     raw_shape: tuple[int, ...] = (5, 1000, 14)) -> FrameSizes:
    """Message sizes measured on the real frame encoder (:mod:`epic.wire`).

    Args:
        testbed: the testbed name (it is part of every topic, so of every PUBLISH).
        latent_shape: one device's int8 latent per shot-gather (14 tokens x 64 by default).
        raw_shape: one device's raw float32 traces per shot-gather (5 shots x 1000 x 14 rx).

    The MQTT v5 PUBLISH overhead counts the fixed header, the remaining-length varint, the
    topic, the packet id (QoS 1) and an empty property block, for the longer topic.
    """
    from epic import wire

    latent = wire.Frame(kind=wire.Kind.LATENT, device_id=1, gather_id=0,
                        dtype=wire.Dtype.INT8, shape=tuple(latent_shape),
                        payload=bytes(int(np.prod(latent_shape))))
    chunks = wire.split_array(wire.Kind.RAW_CHUNK, 1, 0, np.zeros(raw_shape, np.float32))
    chunk_bytes = max(len(c.encode()) for c in chunks)
    topic = wire.topic_for(testbed, 1, wire.Channel.LATENT)
    largest = max(chunk_bytes, len(latent.encode()))
    overhead = 1 + _varint_bytes(largest) + 2 + len(topic.encode()) + 2 + 1
    return FrameSizes(latent_frame_bytes=len(latent.encode()), raw_chunk_bytes=chunk_bytes,
                      raw_chunks=len(chunks), publish_overhead_bytes=overhead)


def _nan_to_none(value):
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def _workload(mode: str, shots: int, sizes: FrameSizes, compute: ComputeTimes,
              interval_s: float) -> Workload:
    if mode == "epic":
        messages = (Message(sizes.latent_frame_bytes + sizes.publish_overhead_bytes,
                            compute.encode_s),)
    else:
        messages = (Message(sizes.raw_chunk_bytes + sizes.publish_overhead_bytes,
                            compute.raw_pack_s),) * sizes.raw_chunks
    return Workload(messages, shots, interval_s)


def _run_mode(topology: Topology, mode: str, shots: int, seed: int, sizes: FrameSizes,
              compute: ComputeTimes, interval_s: float) -> ModeSummary:
    started = time.perf_counter()
    result = NetworkModel(topology, seed).run(_workload(mode, shots, sizes, compute, interval_s))
    wall_s = time.perf_counter() - started
    f = result.frames
    ok = ~f.lost
    n_dev, n_msg = len(topology.devices), (1 if mode == "epic" else sizes.raw_chunks)
    # rows are sorted by (device, gather, message): one row of the reshape per device gather
    end = f.end_s.reshape(n_dev * shots, n_msg).max(axis=1)
    gather_ok = ok.reshape(n_dev * shots, n_msg).all(axis=1)
    gather_latency = (end - f.start_s.reshape(n_dev * shots, n_msg)[:, 0])[gather_ok]
    stage_mean = f.stages_s[ok].mean(axis=0) if ok.any() else np.full(len(STAGES), np.nan)
    log.info("%s: %d frames (%d lost) in %.3f s wall", mode, f.lost.size, int(f.lost.sum()),
             wall_s)
    return ModeSummary(
        mode=mode, frames=int(f.lost.size), frames_lost=int(f.lost.sum()),
        gather_latency_s=Percentiles.of(gather_latency),
        frame_latency_s=Percentiles.of(f.latency_s[ok]),
        stage_mean_s=dict(zip(STAGES, map(float, stage_mean), strict=True)),
        uplink_bytes=result.uplink_bytes, downlink_bytes=result.downlink_bytes,
        energy=result.energy, comm_j=float(sum(e.comm_j for e in result.energy)),
        wall_s=wall_s)


def simulate(topology: Topology, mode: Mode = "both", shots: int = 100, seed: int = 0,
             frame_sizes: FrameSizes = FrameSizes(), compute: ComputeTimes = ComputeTimes(),
             interval_s: float = 1.0, source: str | Path | None = None) -> SimulationResult:
    """Run ``shots`` shot-gathers through the topology in virtual time.

    Args:
        topology: a validated topology.
        mode: "epic" (latent frames), "raw" (raw chunks) or "both" (two runs, same seed).
        shots: shot-gathers per device, >= 1; gather g is available at ``g × interval_s``.
        seed: seed of the loss and jitter draws.
        frame_sizes: message sizes per mode, bytes.
        compute: compute times per message on the reference CPU, seconds.
        interval_s: time between shot-gathers, seconds (1 s: 1000 samples at 1 kHz).
        source: the topology's file, for the lines in ``shipped_models`` problems.

    Raises `InputError` for a bad mode or count.
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if shots < 1:
        raise InputError(f"shots must be >= 1, got {shots}")
    names = ("epic", "raw") if mode == "both" else (mode,)
    summaries = tuple(_run_mode(topology, m, shots, seed, frame_sizes, compute, interval_s)
                      for m in names)
    ratios = None
    if mode == "both":
        e, r = summaries
        ratios = Ratios(
            latency_p50=r.gather_latency_s.p50 / e.gather_latency_s.p50,
            latency_p95=r.gather_latency_s.p95 / e.gather_latency_s.p95,
            latency_p99=r.gather_latency_s.p99 / e.gather_latency_s.p99,
            energy_comm=r.comm_j / e.comm_j if e.comm_j else float("nan"),
            bytes=r.uplink_bytes / e.uplink_bytes)
    return SimulationResult(topology.testbed, seed, shots, frame_sizes, compute, summaries,
                            ratios, shipped_model_fit(topology, source))
