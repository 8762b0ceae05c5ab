"""Device hardware classes: presets, validation at the topology boundary (FILE:LINE), the
model's compute time and energy against the analytic formulas, and the container limits that
compose and the SDK specs carry."""

from __future__ import annotations

import pytest

from emulation.compose import compose_config
from emulation.docker_specs import container_specs
from emulation.network import Message, NetworkModel, Workload
from epic.hardware import HARDWARE_PRESET_NAMES, PRESETS, HardwareClass
from epic.topology import TopologyError, load_topology, parse_topology
from tests.conftest import REPO

HEAD = """\
testbed: hw
central: {decode_deadline_s: 1.0, processing_s: 0.0}
links:
  l: {kind: dedicated, bandwidth_bps: 1.0e+6, delay_s: 0.0}
"""


def topo(classes: str = "", devices: str = "") -> str:
    return HEAD + (f"hardware_classes:\n{classes}" if classes else "") + "devices:\n" + (
        devices or "  - {id: device-1, receivers: [0, 14], link: l, energy: ble-1m, "
                   "hardware: mine}\n")


MINE = "  mine: {cpus: 0.25, mem_limit_bytes: 536870912, active_w: 5.0, idle_w: 1.0}\n"


def problems(text: str) -> list[str]:
    with pytest.raises(TopologyError) as info:
        parse_topology(text, "t.yaml")
    return [str(p) for p in info.value.problems]


def test_presets_have_sources_and_sane_numbers() -> None:
    assert tuple(PRESETS) == HARDWARE_PRESET_NAMES
    for name, preset in PRESETS.items():
        hw = preset.hardware
        assert preset.name == name and preset.source and preset.board
        assert hw.active_w > hw.idle_w > 0, name
        assert 0 < hw.cpus <= 1 and hw.mem_limit_bytes >= 2**30, name
    assert (PRESETS["rpi4"].hardware.idle_w, PRESETS["rpi4"].hardware.active_w) == (2.7, 6.4)
    assert PRESETS["rpi4"].hardware.nano_cpus == 500_000_000


@pytest.mark.parametrize(("cpus", "cpu_scale", "scale"),
                         [(1.0, 1.0, 1.0), (0.5, 1.0, 2.0), (0.25, 1.0, 4.0), (2.0, 1.0, 1.0),
                          (0.5, 1.5, 3.0)])
def test_encode_time_follows_the_share_below_one_core(cpus, cpu_scale, scale) -> None:
    """t_class = t_host x cpu_scale x max(1, 1 / cpus): a one-thread encoder."""
    hw = HardwareClass(cpus=cpus, mem_limit_bytes=2**30, active_w=2.0, idle_w=1.0,
                       cpu_scale=cpu_scale)
    assert hw.compute_scale == pytest.approx(scale, rel=1e-12)
    assert hw.encode_time_s(0.004) == pytest.approx(0.004 * scale, rel=1e-12)


def test_compute_energy_is_active_while_busy_and_idle_otherwise() -> None:
    hw = HardwareClass(cpus=1, mem_limit_bytes=2**30, active_w=6.4, idle_w=2.7)
    assert hw.compute_energy_j(2.0, 100.0) == pytest.approx(6.4 * 2.0 + 2.7 * 98.0, rel=1e-12)
    assert hw.compute_energy_j(5.0, 3.0) == pytest.approx(6.4 * 5.0, rel=1e-12)  # no negative


def test_a_device_names_a_preset_or_its_own_class() -> None:
    t = parse_topology(topo(MINE, "  - {id: device-1, receivers: [0, 14], link: l, energy: "
                                  "ble-1m, hardware: mine}\n  - {id: device-2, receivers: [14, "
                                  "28], link: l, energy: ble-1m, hardware: jetson-nano-5w}\n"
                                  "  - {id: device-3, receivers: [28, 42], link: l, energy: "
                                  "ble-1m}\n"))
    a, b, c = t.devices
    assert t.hardware_of(a).cpus == 0.25
    assert t.hardware_of(b) == PRESETS["jetson-nano-5w"].hardware
    assert t.hardware_of(c) is None
    assert t.compute_of(a) == (4.0, 5.0, 1.0)
    assert t.compute_of(c) == (1.0, 3.0, 0.0)  # no class: the older cpu_scale and compute_w


@pytest.mark.parametrize(("classes", "devices", "expected"), [
    ("  mine: {cpus: 0, mem_limit_bytes: 536870912, active_w: 5.0, idle_w: 1.0}\n", "",
     "t.yaml:6: hardware_classes.mine.cpus: must be > 0, got 0"),
    ("  mine: {cpus: 1, mem_limit_bytes: 536870912, active_w: -5.0, idle_w: 1.0}\n", "",
     "t.yaml:6: hardware_classes.mine.active_w: must be >= 0, got -5.0"),
    ("  mine: {cpus: 1, mem_limit_bytes: 536870912, active_w: 5.0, idle_w: -1}\n", "",
     "t.yaml:6: hardware_classes.mine.idle_w: must be >= 0, got -1"),
    ("  mine: {cpus: 1, mem_limit_bytes: 536870912, active_w: 0.5, idle_w: 1.0}\n", "",
     "t.yaml:6: hardware_classes.mine.active_w: must be >= idle_w (1), got 0.5"),
    ("  mine: {cpus: 1, mem_limit_bytes: 0, active_w: 5.0, idle_w: 1.0}\n", "",
     "t.yaml:6: hardware_classes.mine.mem_limit_bytes: must be >= 6.71089e+07, got 0"),
    ("  mine: {cpus: 1, mem_limit_bytes: 536870912, active_w: 5, idle_w: 1, gpus: 1}\n", "",
     "t.yaml:6: hardware_classes.mine.gpus: unknown key"),
    ("", "  - {id: device-1, receivers: [0, 14], link: l, energy: ble-1m, hardware: pi9}\n",
     "t.yaml:6: devices[0].hardware: unknown hardware class 'pi9'; known: rpi4, "
     "jetson-nano-10w, jetson-nano-5w, x86-gateway"),
    ("", "  - {id: device-1, receivers: [0, 14], link: l, energy: ble-1m, hardware: rpi4,\n"
         "     cpu_scale: 2.0}\n",
     "t.yaml:7: devices[0].cpu_scale: the hardware class 'rpi4' sets this (through its "
     "`cpu_scale`); remove it from the device, got 2"),
    ("  rpi4: {cpus: 1, mem_limit_bytes: 536870912, active_w: 5.0, idle_w: 1.0}\n",
     "  - {id: device-1, receivers: [0, 14], link: l, energy: ble-1m, hardware: rpi4}\n",
     "t.yaml:6: hardware_classes.rpi4: 'rpi4' is a preset's name; name the class otherwise "
     "(presets: rpi4, jetson-nano-10w, jetson-nano-5w, x86-gateway)"),
])
def test_bad_classes_are_reported_at_their_line(classes, devices, expected) -> None:
    assert problems(topo(classes, devices)) == [expected]


def test_old_topologies_load_and_keep_their_cpu_scale() -> None:
    t = parse_topology(topo(devices="  - {id: device-1, receivers: [0, 14], link: l, energy: "
                                    "ble-1m, cpu_scale: 2.0, compute_w: 4.0}\n"))
    result = NetworkModel(t, 0).run(Workload((Message(100, 0.01),), 3, 1.0))
    assert result.frames.stages_s[:, 0] == pytest.approx([0.02] * 3)
    assert result.energy[0].compute_j == pytest.approx(4.0 * 0.06, rel=1e-12)


def test_the_model_uses_the_class_for_compute_time_and_energy() -> None:
    """Analytic: t = t_host x max(1, 1/0.25) = 4 t_host per gather; energy = P_active x busy
    + P_idle x (T - busy) over the model's run T."""
    t = parse_topology(topo(MINE))
    gathers, host_s = 10, 0.01
    result = NetworkModel(t, 0).run(Workload((Message(100, host_s),), gathers, 1.0))
    assert result.frames.stages_s[:, 0] == pytest.approx([4 * host_s] * gathers, rel=1e-12)
    busy_s = gathers * 4 * host_s
    expected = 5.0 * busy_s + 1.0 * (result.horizon_s - busy_s)
    e = result.energy[0]
    assert e.compute_j == pytest.approx(expected, rel=1e-12)
    assert e.total_j == pytest.approx(e.compute_j + e.radio_j, rel=1e-12)


def test_compose_and_sdk_specs_carry_the_quota_and_the_memory_limit(tmp_path) -> None:
    t = parse_topology(topo(MINE, "  - {id: device-1, receivers: [0, 14], link: l, energy: "
                                  "ble-1m, hardware: mine}\n  - {id: device-2, receivers: [14, "
                                  "28], link: l, energy: ble-1m}\n"))
    services = compose_config(t)["services"]
    assert (services["device-1"]["cpus"], services["device-1"]["mem_limit"]) == (0.25, 2**29)
    assert services["device-1"]["labels"]["epic.hardware"] == "mine"
    assert "cpus" not in services["device-2"] and "mem_limit" not in services["device-2"]
    specs = container_specs(t, tmp_path)
    assert (specs["device-1"].nano_cpus, specs["device-1"].mem_limit) == (250_000_000, 2**29)
    assert (specs["device-2"].nano_cpus, specs["device-2"].mem_limit) == (None, None)

    class Api:  # what run_kwargs asks of a docker client
        @staticmethod
        def create_endpoint_config(aliases):
            return {"aliases": aliases}

    class Client:
        api = Api()

    kwargs = specs["device-1"].run_kwargs(Client(), "net")
    assert (kwargs["nano_cpus"], kwargs["mem_limit"]) == (250_000_000, 2**29)
    assert "nano_cpus" not in specs["device-2"].run_kwargs(Client(), "net")


def test_the_default_topology_runs_rpi4_class_devices() -> None:
    t = load_topology(REPO / "topology.yaml")
    assert {d.hardware for d in t.devices} == {"rpi4"}
    assert all(s["cpus"] == 0.5 for name, s in compose_config(t)["services"].items()
               if name.startswith("device-"))


def test_the_replay_summary_splits_each_device_energy_into_compute_and_radio(tmp_path) -> None:
    """Live books: compute = active_w x (its encode times in central's records) + idle_w x
    (the rest of its proxy's uptime over the mode); radio from the proxy."""
    from emulation.replay import summarize_mode
    from epic.rundir import RunDir
    from tests.unit.test_dashboard import _proxy, _result

    rd = RunDir(tmp_path)
    rd.maps.mkdir()
    records = [_result(g, ["device-1", "device-2"], rd) for g in range(3)]  # 2 ms encodes
    after = {d: _proxy(d, 3, 3000, 1e9) for d in ("device-1", "device-2")}  # uptime 10 s
    summary = summarize_mode("epic", records, dict.fromkeys(after), after,
                             {"device-1": (6.4, 2.7), "device-2": (3.0, 0.0)})
    e1, e2 = summary["energy_j"]["device-1"], summary["energy_j"]["device-2"]
    assert e1["encode_s"] == pytest.approx(0.006, rel=1e-9)
    assert e1["compute"] == pytest.approx(6.4 * 0.006 + 2.7 * (10.0 - 0.006), rel=1e-9)
    assert e2["compute"] == pytest.approx(3.0 * 0.006, rel=1e-9)
    assert e1["total"] == pytest.approx(e1["compute"] + e1["radio"], rel=1e-12)
    assert summary["compute_j"] == pytest.approx(e1["compute"] + e2["compute"], rel=1e-12)
    assert summarize_mode("epic", records, dict.fromkeys(after), after)["compute_j"] is None
