"""Device hardware classes: CPU share, memory limit, compute power, and their presets.

A hardware class stands for an edge board (a Raspberry-Pi-4-class board, a Jetson Nano, a
small x86 gateway). The live testbed gives a device's container the class's CPU share as its
CPU quota (``cpus`` cores of the host: Docker ``nano_cpus`` / compose ``cpus:``) and its memory
limit (``mem_limit_bytes``); the network model (`emulation.network`) uses the same class for
the device's compute time and compute energy:

- encode time on the class: ``t_class = t_host × cpu_scale × max(1, threads / cpus)``, where
  ``t_host`` is the encode time measured on one unconstrained host core and ``threads`` the
  encoder's interpreter threads (1, the agent's default): a single-threaded encoder gains
  nothing beyond one core and is slowed by ``1 / cpus`` below it (the CFS quota's long-run
  rate; see docs/topology.md for the burst caveat);
- compute energy over a run of ``T`` seconds with ``t_busy`` seconds of encoding:
  ``E = active_w × t_busy + idle_w × (T − t_busy)``.

The presets' numbers and their sources are in `PRESETS` and docs/topology.md. This module
imports nothing of the testbed, so `epic.topology` and the roles can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ENCODER_THREADS",
    "HARDWARE_PRESET_NAMES",
    "PRESETS",
    "HardwareClass",
    "HardwarePreset",
]

#: The device agent's encoder threads (devices/agent.py ``--threads``, default 1).
ENCODER_THREADS = 1

HardwarePresetName = Literal["rpi4", "jetson-nano-10w", "jetson-nano-5w", "x86-gateway"]
#: The hardware presets a topology may name without defining them.
HARDWARE_PRESET_NAMES: tuple[str, ...] = HardwarePresetName.__args__  # type: ignore[attr-defined]

_GIB = 1024**3


class _HardwareFieldError(ValueError):
    """A cross-field failure naming its field (`epic.topology` turns it into FILE:LINE)."""

    def __init__(self, loc: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.loc = loc
        self.reason = reason


class HardwareClass(BaseModel):
    """One device class: what the container gets and what the model charges.

    Attributes:
        cpus: CPU share, cores of the host (> 0): the container's CPU quota.
        mem_limit_bytes: the container's memory limit, bytes (>= 64 MiB: the agent's peak
            resident set is ~53 MiB, docs/benchmarks.md).
        active_w: board power while encoding, watts (>= idle_w).
        idle_w: board power otherwise, watts (>= 0).
        cpu_scale: extra compute time multiplier for the model only (per-core speed against
            the host core; > 0, default 1). A quota cannot make one core slower, so the
            containers do not emulate it; leave it at 1 to keep the model and the testbed
            in step.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    cpus: float = Field(gt=0, le=1024, description="CPU share, cores of the host: the "
                                                   "container's CPU quota.")
    mem_limit_bytes: int = Field(ge=64 * 1024**2, description="The container's memory limit, "
                                                             "bytes.")
    active_w: float = Field(ge=0, description="Board power while encoding, watts.")
    idle_w: float = Field(ge=0, description="Board power when not encoding, watts.")
    cpu_scale: float = Field(1.0, gt=0, description="Model-only compute time multiplier "
                                                    "(per-core speed vs the host core).")

    @model_validator(mode="after")
    def _active_at_least_idle(self) -> HardwareClass:
        if self.active_w < self.idle_w:
            raise _HardwareFieldError(("active_w",), f"must be >= idle_w ({self.idle_w:g}), "
                                                     f"got {self.active_w:g}")
        return self

    @property
    def nano_cpus(self) -> int:
        """The CPU quota as Docker's ``nano_cpus`` (1e9 per core)."""
        return round(self.cpus * 1e9)

    @property
    def compute_scale(self) -> float:
        """``t_class / t_host`` for the encoder: ``cpu_scale × max(1, threads / cpus)``."""
        return self.cpu_scale * max(1.0, ENCODER_THREADS / self.cpus)

    def encode_time_s(self, host_encode_s: float) -> float:
        """The class's encode time, seconds, from one on an unconstrained host core."""
        return host_encode_s * self.compute_scale

    def compute_energy_j(self, busy_s: float, horizon_s: float) -> float:
        """``active_w × busy_s + idle_w × max(horizon_s − busy_s, 0)``, joules."""
        return self.active_w * busy_s + self.idle_w * max(horizon_s - busy_s, 0.0)


@dataclass(frozen=True)
class HardwarePreset:
    """A named class, where its numbers come from, and the board it stands for."""

    name: str
    hardware: HardwareClass
    board: str
    source: str


# The CPU shares are an emulation choice, not a measurement: the host core time that stands
# in for the board's single-threaded encoder (the clock ratio to a ~3 GHz x86 core, rounded;
# docs/topology.md). Calibrate by running bench/bench_encode.py on the real board.
PRESETS: dict[str, HardwarePreset] = {
    "rpi4": HardwarePreset(
        "rpi4", HardwareClass(cpus=0.5, mem_limit_bytes=2 * _GIB, active_w=6.4, idle_w=2.7),
        "Raspberry Pi 4 Model B (4x Cortex-A72 1.5 GHz, 2 GB)",
        "RasPi.TV (A. Eames, 2019), 'How much power does Pi4B use? Power Measurements': "
        "idle 540 mA = 2.7 W, stress --cpu 4 1280 mA = 6.4 W at 5 V"),
    "jetson-nano-10w": HardwarePreset(
        "jetson-nano-10w",
        HardwareClass(cpus=0.4, mem_limit_bytes=4 * _GIB, active_w=10.0, idle_w=1.9),
        "NVIDIA Jetson Nano module, MAXN mode (4x Cortex-A57 1.479 GHz, 4 GB)",
        "NVIDIA Jetson Nano module data sheet (DA-09366-001) and L4T power management: MAXN "
        "budget 10 W; idle 1.9 W is an estimate of the module at idle (CPU 1.0 + GPU 0.5 + "
        "DRAM 0.3 + eMMC 0.1 W), not a datasheet figure"),
    "jetson-nano-5w": HardwarePreset(
        "jetson-nano-5w",
        HardwareClass(cpus=0.25, mem_limit_bytes=4 * _GIB, active_w=5.0, idle_w=1.9),
        "NVIDIA Jetson Nano module, 5W mode (2x Cortex-A57 0.918 GHz, 4 GB)",
        "NVIDIA L4T power management: 5W mode budget 5 W (2 cores at 918 MHz); idle as "
        "jetson-nano-10w"),
    "x86-gateway": HardwarePreset(
        "x86-gateway",
        HardwareClass(cpus=1.0, mem_limit_bytes=8 * _GIB, active_w=30.0, idle_w=12.0),
        "small x86 gateway, NUC class (e.g. ASRock Industrial NUC BOX-255H, 8 GB)",
        "Linux Today, 'ASRock Industrial NUC BOX-255H Running Linux: Power Consumption' "
        "(Kill A Watt EZ at the wall): idle ~12 W, CPU load ~30 W"),
}
assert tuple(PRESETS) == HARDWARE_PRESET_NAMES, "presets out of step with their names"
