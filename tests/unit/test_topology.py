"""Topology schema: the default file, line-accurate errors, hot reload and the JSON Schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from epic.errors import InputError
from epic.topology import (
    FirstOrderEnergy,
    PresetEnergy,
    Topology,
    TopologyError,
    check_model_slots,
    json_schema_text,
    load_topology,
    model_slot_problems,
    parse_topology,
    reload_topology,
)

REPO = Path(__file__).resolve().parents[2]

# Line numbers matter: the tests below name them.
BASE = """\
testbed: t
central:
  decode_deadline_s: 1.0
  processing_s: 0.001
links:
  wifi:
    kind: shared
    bandwidth_bps: 20.0e+6
    delay_s: 0.002
    loss: 0.01
devices:
  - id: device-1
    receivers: [0, 14]
    link: wifi
    energy: wifi-80211n
  - id: device-2
    receivers: [14, 28]
    link: wifi
    energy: {model: state, tx_w: 1.0, rx_w: 0.5, idle_w: 0.1}
"""


def test_base_parses() -> None:
    topo = parse_topology(BASE)
    assert [d.id for d in topo.devices] == ["device-1", "device-2"]
    assert [d.number for d in topo.devices] == [1, 2]
    assert topo.devices[0].energy == PresetEnergy(model="preset", name="wifi-80211n")
    assert topo.link_of(topo.devices[1]).bandwidth_bps == 20e6


def test_default_topology_is_the_5_device_testbed() -> None:
    topo = load_topology(REPO / "topology.yaml")
    assert topo.testbed == "epic-5"
    assert len(topo.devices) == 5
    for i, d in enumerate(topo.devices, start=1):
        assert d.receivers == (14 * (i - 1), 14 * i)
    assert topo.links[topo.devices[0].link].kind == "shared"


@pytest.mark.parametrize(("old", "new", "where", "reason"), [
    ("bandwidth_bps: 20.0e+6", "bandwidth_bps: fast", ":8: links.wifi.bandwidth_bps:",
     "valid number"),
    ("bandwidth_bps: 20.0e+6", "bandwidth_bps: -5", ":8: links.wifi.bandwidth_bps:",
     "must be > 0, got -5"),
    ("loss: 0.01", "loss: 1.5", ":10: links.wifi.loss:", "must be <= 1, got 1.5"),
    ("energy: wifi-80211n", "energy: wifi-9000", ":15: devices[0].energy",
     "got 'wifi-9000'"),
    ("receivers: [14, 28]", "receivers: [10, 28]", ":17: devices[1].receivers:",
     "overlaps devices[0]"),
    ("id: device-2", "id: device-1", ":16: devices[1].id:", "duplicate device id 'device-1'"),
    ("id: device-2", "id: sensor-2", ":16: devices[1].id:", "should match pattern"),
    ("    energy: wifi-80211n", "    energy: wifi-80211n\n    colour: red",
     ":16: devices[0].colour:", "unknown key"),
    ("link: wifi\n    energy: {", "link: wify\n    energy: {", ":18: devices[1].link:",
     "unknown link 'wify'"),
    ("    delay_s: 0.002\n", "", ":6: links.wifi.delay_s:", "required field is missing"),
    ("receivers: [0, 14]", "receivers: [14, 0]", ":13: devices[0].receivers:",
     "stop must be > start"),
    ("testbed: t", "testbed: epic/5", ":1: testbed:", "got 'epic/5'"),
    ("testbed: t", "testbed: '-t'", ":1: testbed:", "MQTT topic level"),
    ("tx_w: 1.0", "tx_w: -1.0", ":19: devices[1].energy.tx_w:", "must be >= 0"),
    ("    loss: 0.01", "    loss: 0.01\n    loss: 0.02", ":11: links.wifi.loss:",
     "duplicate key"),
])
def test_errors_name_file_line_path_and_reason(tmp_path: Path, old: str, new: str, where: str,
                                               reason: str) -> None:
    assert old in BASE
    path = tmp_path / "topology.yaml"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    message = str(info.value)
    assert isinstance(info.value, InputError)
    assert f"{path}{where}" in message, message
    assert reason in message, message


def test_reversed_receivers_are_named_once() -> None:
    with pytest.raises(TopologyError) as info:
        parse_topology(BASE.replace("receivers: [0, 14]", "receivers: [14, 0]"), "x.yaml")
    assert str(info.value) == "x.yaml:13: devices[0].receivers: stop must be > start, got [14, 0]"


def test_receivers_are_checked_against_the_model_slots(tmp_path: Path) -> None:
    topo = parse_topology(BASE)
    assert model_slot_problems(topo, n_devices=5, rx_per_device=14, model="m") == ()
    for receivers, line in (("[56, 84]", 17), ("[56, 66]", 17), ("[70, 84]", 17)):
        text = BASE.replace("receivers: [14, 28]", f"receivers: {receivers}")
        path = tmp_path / "topology.yaml"
        path.write_text(text)
        topo = load_topology(path)  # any disjoint layout is a valid topology
        problems = model_slot_problems(topo, n_devices=5, rx_per_device=14, model="m",
                                       source=str(path), text=text)
        assert [(p.line, p.path) for p in problems] == [(line, "devices[1].receivers")]
        with pytest.raises(TopologyError) as info:
            check_model_slots(path, topo, n_devices=5, rx_per_device=14, model="ckpt.pt")
        message = str(info.value)
        assert message.startswith(f"{path}:{line}: devices[1].receivers: not one of the 5 "
                                  f"slots of 14 receivers of ckpt.pt"), message
        assert message.endswith(f"got {receivers}") and "\n" not in message, message


def test_yaml_syntax_error_has_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BASE.replace("loss: 0.01", "loss: [0.01"))
    with pytest.raises(TopologyError, match=rf"{path.name}:\d+: "):
        load_topology(path)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        load_topology(tmp_path / "nope.yaml")


@settings(max_examples=25, deadline=None)
@given(st.one_of(st.floats(max_value=-1e-9, min_value=-1e9), st.floats(min_value=1.000001,
                                                                          max_value=1e9)))
def test_any_loss_outside_0_1_is_rejected_at_its_line(loss: float) -> None:
    with pytest.raises(TopologyError, match=r"^x\.yaml:10: links\.wifi\.loss: must be"):
        parse_topology(BASE.replace("loss: 0.01", f"loss: {loss!r}"), "x.yaml")


def test_first_order_crossover() -> None:
    spec = FirstOrderEnergy(model="first-order", distance_m=10.0)
    assert spec.crossover_m == pytest.approx((10e-12 / 0.0013e-12) ** 0.5)
    assert 87.0 < spec.crossover_m < 88.0


def test_models_are_frozen() -> None:
    topo = parse_topology(BASE)
    with pytest.raises(Exception, match="frozen"):
        topo.testbed = "other"  # type: ignore[misc]


def test_reload_keeps_old_topology_on_error(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(BASE)
    current = load_topology(path)
    path.write_text(BASE.replace("bandwidth_bps: 20.0e+6", "bandwidth_bps: -1"))
    result = reload_topology(path, current)
    assert result.topology is current and not result.changed
    assert result.error is not None and ":8: links.wifi.bandwidth_bps:" in str(result.error)
    path.write_text(BASE.replace("bandwidth_bps: 20.0e+6", "bandwidth_bps: 5.0e+6"))
    result = reload_topology(path, current)
    assert result.error is None and result.changed
    assert result.topology.links["wifi"].bandwidth_bps == 5e6


def test_json_schema_file_is_current() -> None:
    on_disk = (REPO / "docs" / "topology.schema.json").read_text(encoding="utf-8")
    assert on_disk == json_schema_text(), (
        "docs/topology.schema.json is stale: regenerate with "
        "python -c 'from epic.topology import write_json_schema as w; "
        "w(\"docs/topology.schema.json\")'")


def test_json_schema_forbids_unknown_keys() -> None:
    schema = Topology.model_json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["LinkSpec"]["additionalProperties"] is False


def test_docs_state_the_id_and_name_rules_the_loader_checks() -> None:
    from epic.topology import DeviceSpec

    doc = (REPO / "docs" / "topology.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in doc.splitlines()
            if line.startswith("| `")}
    id_pattern = DeviceSpec.model_fields["id"].metadata
    pattern = next(m.pattern for m in id_pattern if hasattr(m, "pattern"))
    assert f"`{pattern}`" in rows["`devices[i].id`"], rows["`devices[i].id`"]
    assert "`[A-Za-z0-9_.-]`" in rows["`testbed`"], rows["`testbed`"]
    for name in ("device-1", "device-999999999"):
        assert parse_topology(BASE.replace("id: device-1", f"id: {name}")).devices[0].id == name
    for bad in ("sensor_1", "device-0", "device-01"):
        with pytest.raises(TopologyError, match=r":12: devices\[0\]\.id: "):
            parse_topology(BASE.replace("id: device-1", f"id: {bad}"), "t.yaml")


def test_docs_epic_vs_raw_table_is_what_simulate_gives() -> None:
    import re

    from emulation.simulate import simulate, wire_frame_sizes
    from epic import wire

    doc = (REPO / "docs" / "topology.md").read_text()
    section = doc[doc.index("### EPIC against raw on the default topology"):]
    sizes = wire_frame_sizes("epic-5")
    assert sizes.latent_frame_bytes == wire.HEADER_BYTES + 14 * 64
    assert f"latent frame of {sizes.latent_frame_bytes} B" in section
    result = simulate(load_topology(REPO / "topology.yaml"), "both", shots=200, seed=0,
                      frame_sizes=sizes)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
            for line in section.splitlines()[:20] if line.startswith("| ")}

    def numbers(text: str) -> list[float]:
        return [float(x) for x in re.findall(r"[0-9]+(?:\.[0-9]+)?", text)]

    for mode, row in (("epic", rows["EPIC"]), ("raw", rows["raw"])):
        m = result.mode(mode)
        lat = m.gather_latency_s
        assert numbers(row[0]) == pytest.approx([lat.p50 * 1e3, lat.p95 * 1e3, lat.p99 * 1e3],
                                                abs=0.51), (mode, row)
        assert numbers(row[1]) == pytest.approx([m.comm_j], abs=0.051), (mode, row)
        assert numbers(row[2]) == pytest.approx([m.uplink_bytes / 1e6], rel=0.005), (mode, row)
    r = result.ratios
    assert numbers(rows["raw / EPIC"][0]) == pytest.approx(
        [r.latency_p50, r.latency_p95, r.latency_p99], abs=0.051)
    assert numbers(rows["raw / EPIC"][1]) == pytest.approx([r.energy_comm], abs=0.051)
    assert numbers(rows["raw / EPIC"][2]) == pytest.approx([r.bytes], abs=0.51)
