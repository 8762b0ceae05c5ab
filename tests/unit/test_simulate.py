"""Virtual-time runs: the default testbed, ratios, JSON, reproducibility and sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from emulation.simulate import FrameSizes, simulate
from emulation.sweeps import parse_sweep, sweep
from epic.errors import InputError
from epic.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def topology():
    return load_topology(REPO / "topology.yaml")


def _without_wall_time(data: dict) -> dict:
    for mode in data["modes"]:
        mode.pop("wall_s")
    return data


def test_both_modes_on_the_default_testbed(topology) -> None:
    result = simulate(topology, "both", shots=10, seed=0)
    epic, raw = result.mode("epic"), result.mode("raw")
    assert epic.frames == 5 * 10 and raw.frames == 5 * 10 * 5
    assert raw.uplink_bytes > 250 * epic.uplink_bytes > 0
    assert result.ratios is not None
    assert result.ratios.latency_p50 > 1 and result.ratios.energy_comm > 1
    data = json.loads(result.to_json())
    assert {"latency_p50", "energy_comm"} <= set(data["ratios"])
    assert len(data["modes"][0]["energy"]) == 5
    assert data["modes"][0]["energy"][0]["comm_j"] == pytest.approx(epic.energy[0].comm_j)


def test_raw_gather_is_at_least_its_airtime(topology) -> None:
    sizes = FrameSizes()
    result = simulate(topology, "raw", shots=3, seed=0, frame_sizes=sizes)
    link = topology.links["wifi"]
    wire = sizes.raw_chunks * (sizes.raw_chunk_bytes + sizes.publish_overhead_bytes)
    assert result.mode("raw").gather_latency_s.p50 > wire * 8 / link.bandwidth_bps
    assert result.ratios is None


def test_same_seed_same_result(topology) -> None:
    a = simulate(topology, "both", shots=5, seed=42).to_dict()
    b = simulate(topology, "both", shots=5, seed=42).to_dict()
    assert _without_wall_time(a) == _without_wall_time(b)


def test_bad_arguments_are_input_errors(topology) -> None:
    with pytest.raises(InputError, match="mode"):
        simulate(topology, "fast", shots=1)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="shots"):
        simulate(topology, "epic", shots=0)
    with pytest.raises(InputError, match="latent_frame_bytes"):
        FrameSizes(latent_frame_bytes=0)


def test_parse_sweep() -> None:
    assert parse_sweep("loss=0,0.01") == ("loss", (0.0, 0.01))
    for bad in ("colour=1,2", "loss", "loss=a,b", "loss="):
        with pytest.raises(InputError):
            parse_sweep(bad)


@pytest.mark.parametrize(("key", "values"), [
    ("bandwidth_bps", (5e6, 50e6)),
    ("devices", (2.0, 10.0)),
    ("latent_frame_bytes", (256.0, 4096.0)),
    ("loss", (0.0, 0.05)),
])
def test_sweep_writes_csv_and_png(topology, tmp_path: Path, key: str,
                                  values: tuple[float, ...]) -> None:
    result = sweep(topology, key, values, tmp_path, shots=3)
    rows = list(csv.DictReader(result.csv_path.open()))
    assert [(float(r["value"]), r["mode"]) for r in rows] == [
        (v, m) for v in values for m in ("epic", "raw")]
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if key == "devices":
        assert [int(r["frames"]) for r in rows if r["mode"] == "epic"] == [2 * 3, 10 * 3]
    if key == "bandwidth_bps":
        raw = [float(r["latency_p50_s"]) for r in rows if r["mode"] == "raw"]
        assert raw[0] > 5 * raw[1]


def test_sweep_rejects_a_bad_value(topology, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="loss=2"):
        sweep(topology, "loss", (2.0,), tmp_path, shots=1)


def test_all_frames_lost_gives_null_latency_in_json(topology) -> None:
    data = topology.model_dump()
    data["links"]["wifi"].update(loss=1.0, max_retries=0)
    lossy = type(topology).model_validate(data)
    result = simulate(lossy, "epic", shots=2, seed=0)
    assert result.mode("epic").frames_lost == 10
    assert json.loads(result.to_json())["modes"][0]["gather_latency_s"]["p50"] is None


def test_frame_sizes_come_from_the_real_frame_encoder() -> None:
    from emulation.simulate import wire_frame_sizes
    from epic import wire

    sizes = wire_frame_sizes("epic-5")
    assert sizes.latent_frame_bytes == wire.HEADER_BYTES + 14 * 64
    assert sizes.raw_chunks * (sizes.raw_chunk_bytes - wire.HEADER_BYTES) == 5 * 1000 * 14 * 4
    # fixed header + 3-byte length + topic length + "epic/epic-5/device-1/latent" + id + props
    assert sizes.publish_overhead_bytes == 1 + 3 + 2 + len("epic/epic-5/device-1/latent") + 2 + 1
