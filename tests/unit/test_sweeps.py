"""Sweeps in parallel (local processes, a local Dask cluster): the serial run's results, and a
resumed sweep runs only the points it lacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulation.simulate import ComputeTimes, FrameSizes, SimulationResult
from emulation.sweeps import Point, SweepRunner, _vary, result_from_dict, sweep
from epic.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
VALUES = (1e6, 2e6, 5e6, 20e6)


def _text(result: SimulationResult) -> str:
    data = json.loads(result.to_json())
    for mode in data["modes"]:
        mode.pop("wall_s")
    return json.dumps(data, sort_keys=True)


@pytest.fixture(scope="module")
def points() -> list[Point]:
    topology = load_topology(REPO / "topology.yaml")
    varied = [_vary(topology, FrameSizes(), "bandwidth_bps", v) for v in VALUES]
    return [Point(topo, sizes, 3, 0, ComputeTimes()) for topo, sizes in varied]


@pytest.fixture(scope="module")
def serial(points: list[Point]) -> list[str]:
    return [_text(p.run()) for p in points]


def test_result_from_dict_round_trips(points: list[Point], serial: list[str]) -> None:
    result = points[0].run()
    assert _text(result_from_dict(json.loads(result.to_json()))) == serial[0]


def test_local_processes_equal_serial_and_resume(points, serial, tmp_path: Path) -> None:
    runner = SweepRunner(tmp_path, workers=2, batch=1)
    assert [_text(r) for r in runner(points[:2])] == serial[:2]
    assert sorted(runner.computed) == sorted(p.key for p in points[:2])
    (tmp_path / f"{points[0].key}.json").write_text("{truncated")  # an interrupted write
    again = SweepRunner(tmp_path, workers=2)
    assert [_text(r) for r in again(points)] == serial
    assert sorted(again.computed) == sorted([points[0].key, *(p.key for p in points[2:])])
    cached = SweepRunner(tmp_path)
    assert [_text(r) for r in cached(points)] == serial and cached.computed == []


def test_dask_local_cluster_equals_serial_and_resumes(points, serial, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="the sweeps extra (Dask) is absent")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        first = SweepRunner(tmp_path, cluster=cluster.scheduler_address, batch=2)
        assert [_text(r) for r in first(points[1:])] == serial[1:]
        assert sorted(first.computed) == sorted(p.key for p in points[1:])
        resumed = SweepRunner(tmp_path, cluster=cluster.scheduler_address)
        assert [_text(r) for r in resumed(points)] == serial
        assert resumed.computed == [points[0].key]


def test_sweep_with_a_runner_writes_the_serial_csv(tmp_path: Path) -> None:
    topology = load_topology(REPO / "topology.yaml")
    plain = sweep(topology, "loss", (0.0, 0.01), tmp_path / "serial", shots=2)
    runner = SweepRunner(tmp_path / "points", workers=2)
    pooled = sweep(topology, "loss", (0.0, 0.01), tmp_path / "pooled", shots=2, runner=runner)
    assert pooled.csv_path.read_text() == plain.csv_path.read_text()
    assert len(runner.computed) == 2


def test_bad_runner_settings_are_input_errors(tmp_path: Path) -> None:
    from epic.errors import InputError

    with pytest.raises(InputError, match="workers must be >= 1, got 0"):
        SweepRunner(tmp_path, workers=0)
    with pytest.raises(InputError, match="batch must be >= 1, got 0"):
        SweepRunner(tmp_path, batch=0)
