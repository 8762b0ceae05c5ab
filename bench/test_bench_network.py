"""Benchmark: virtual-time speed of the SimPy network model, and the default testbed's ratios.

    .venv/bin/pytest bench/test_bench_network.py -m benchmark -s

Targets (issue 6): at least 50,000 frames simulated per wall-clock second, and 1,000 devices ×
100 frames in at most 10 s. Figures are printed; the test fails only above the 10 s bound.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from emulation.network import Message, NetworkModel, Workload
from emulation.simulate import FrameSizes, simulate
from epic.published import PUBLISHED_ENERGY_RATIO, PUBLISHED_LATENCY_RATIO
from epic.topology import Topology, load_topology

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]


def _scaled(n_devices: int, kind: str, loss: float) -> Topology:
    base = load_topology(REPO / "topology.yaml").model_dump()
    base["links"]["wifi"].update(kind=kind, loss=loss)
    template = base["devices"][0]
    base["devices"] = [dict(template, id=f"device-{i + 1}", receivers=[14 * i, 14 * i + 14])
                       for i in range(n_devices)]
    return Topology.model_validate(base)


@pytest.mark.benchmark
@pytest.mark.parametrize(("kind", "loss"), [("dedicated", 0.0), ("dedicated", 0.001),
                                            ("shared", 0.0), ("shared", 0.001)])
def test_frames_per_second_1000_devices_x_100_frames(kind: str, loss: float) -> None:
    topo = _scaled(1000, kind, loss)
    work = Workload((Message(1086, 0.005),), gathers=100, interval_s=1.0)
    started = time.perf_counter()
    result = NetworkModel(topo, seed=0).run(work)
    wall_s = time.perf_counter() - started
    frames = result.frames.lost.size
    print(f"\n{kind:9s} loss={loss:<6g} 1000 devices x 100 frames: {wall_s:6.2f} s wall, "
          f"{frames / wall_s:9,.0f} frames/s")
    assert frames == 100_000
    assert wall_s <= 10.0


@pytest.mark.benchmark
def test_default_topology_ratios() -> None:
    topo = load_topology(REPO / "topology.yaml")
    sizes = FrameSizes()
    result = simulate(topo, "both", shots=200, seed=0, frame_sizes=sizes)
    r = result.ratios
    print(f"\ndefault topology {topo.testbed}, {sizes}")
    for m in result.modes:
        print(f"  {m.mode:4s} gather latency p50/p95/p99 = {m.gather_latency_s.p50 * 1e3:.2f} / "
              f"{m.gather_latency_s.p95 * 1e3:.2f} / {m.gather_latency_s.p99 * 1e3:.2f} ms, "
              f"comm energy {m.comm_j:.3f} J, uplink {m.uplink_bytes:,} B")
    print(f"  raw/EPIC: latency p50 {r.latency_p50:.1f}x, p99 {r.latency_p99:.1f}x, "
          f"comm energy {r.energy_comm:.1f}x, bytes {r.bytes:.1f}x "
          f"(published: {PUBLISHED_LATENCY_RATIO}x latency, "
          f"{PUBLISHED_ENERGY_RATIO}x comm energy)")
    assert r.latency_p50 > 1 and r.energy_comm > 1
