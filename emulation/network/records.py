"""The network model's inputs and outputs.

Inputs: `Message` (one MQTT PUBLISH per shot-gather) and `Workload` (the messages every
device sends, how many gathers, how often). Outputs: `FrameRecords` (per-frame latency by
stage, in `STAGES` order, loss and wire bytes) and `NetworkResult` (one run: frames, energy
per device, bytes each way, the run's length).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emulation.energy import DeviceEnergy
from epic.errors import InputError

__all__ = ["STAGES", "FrameRecords", "Message", "NetworkResult", "Workload"]

#: Latency stages of one frame, in the column order of `FrameRecords.stages_s`.
STAGES: tuple[str, ...] = ("compute", "queue", "transmit", "retransmission", "propagation",
                           "broker", "central")


@dataclass(frozen=True)
class Message:
    """One MQTT PUBLISH a device sends per shot-gather.

    Args:
        payload_bytes: application bytes (frame plus MQTT header), >= 0.
        compute_s: compute time on the reference CPU before it is ready, seconds (scaled by
            the device's hardware class, `Topology.compute_of`, or its ``cpu_scale``).
    """

    payload_bytes: int
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        if self.payload_bytes < 0:
            raise InputError(f"Message.payload_bytes must be >= 0, got {self.payload_bytes}")
        if not self.compute_s >= 0:
            raise InputError(f"Message.compute_s must be >= 0, got {self.compute_s}")


@dataclass(frozen=True)
class Workload:
    """Every device sends ``messages`` (in order) for each of ``gathers`` shot-gathers, the
    g-th gather becoming available at ``g × interval_s`` seconds."""

    messages: tuple[Message, ...]
    gathers: int
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.messages:
            raise InputError("Workload.messages must not be empty")
        if self.gathers < 1:
            raise InputError(f"Workload.gathers must be >= 1, got {self.gathers}")
        if not self.interval_s >= 0:
            raise InputError(f"Workload.interval_s must be >= 0, got {self.interval_s}")


@dataclass(frozen=True)
class FrameRecords:
    """Per-frame results; N = devices × gathers × messages, rows sorted by (device, gather,
    message).

    Attributes:
        device, gather, message: (N,) int64 indices.
        start_s: (N,) float64, when the frame's gather became available, seconds.
        end_s: (N,) float64, when central finished with it (or when it was given up).
        stages_s: (N, 7) float64, seconds per stage in `STAGES` order; rows sum to
            ``end_s - start_s``.
        lost: (N,) bool, the frame exhausted its retries.
        wire_bytes: (N,) int64, bytes put on the air for it, headers and resends included.
    """

    device: np.ndarray
    gather: np.ndarray
    message: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    stages_s: np.ndarray
    lost: np.ndarray
    wire_bytes: np.ndarray

    @property
    def latency_s(self) -> np.ndarray:
        """(N,) float64 end-to-end latency, seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class NetworkResult:
    """One run: frame records, energy per device, bytes each way and the run's length."""

    frames: FrameRecords
    energy: tuple[DeviceEnergy, ...]
    uplink_bytes: int
    downlink_bytes: int
    horizon_s: float
