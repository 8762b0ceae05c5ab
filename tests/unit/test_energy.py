"""Radio energy: LoRa time on air (AN1200.13), presets, first-order model, hand-computed books."""

from __future__ import annotations

import pytest

from emulation.energy import (
    PRESETS,
    LoraPhy,
    device_energy,
    first_order_tx_j_per_bit,
    lora_airtime_s,
    radio_energy,
)
from emulation.network import Message, NetworkModel, Workload
from epic.errors import InputError
from epic.topology import (
    RADIO_PRESET_NAMES,
    FirstOrderEnergy,
    PresetEnergy,
    StateEnergy,
    parse_topology,
)


@pytest.mark.parametrize(("payload", "sf", "expected_ms"), [
    (51, 7, 102.656),    # AN1200.13 / Semtech LoRa calculator: 102.7 ms
    (51, 12, 2465.792),  # SF12 with low-data-rate optimisation
    (13, 7, 46.336),     # an empty LoRaWAN uplink (13 bytes of MAC headers): 46.3 ms
])
def test_lora_airtime_matches_an1200_13(payload: int, sf: int, expected_ms: float) -> None:
    assert lora_airtime_s(payload, sf) * 1e3 == pytest.approx(expected_ms, abs=1e-6)


def test_lora_airtime_by_hand_sf7_51_bytes() -> None:
    # T_sym = 2^7 / 125 kHz = 1.024 ms; preamble (8 + 4.25) T_sym; payload symbols
    # 8 + ceil((8·51 − 4·7 + 28 + 16) / (4·7)) · 5 = 8 + 16·5 = 88.
    assert lora_airtime_s(51, 7) == pytest.approx((12.25 + 88) * 1.024e-3, rel=1e-12)


def test_lora_low_data_rate_optimisation_is_automatic() -> None:
    assert lora_airtime_s(51, 11) == lora_airtime_s(51, 11, low_data_rate_optimize=True)
    assert lora_airtime_s(51, 10) == lora_airtime_s(51, 10, low_data_rate_optimize=False)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"payload_bytes": 256, "spreading_factor": 7}, "payload_bytes"),
    ({"payload_bytes": 10, "spreading_factor": 13}, "spreading_factor"),
    ({"payload_bytes": 10, "spreading_factor": 7, "coding_rate": 5}, "coding_rate"),
])
def test_lora_airtime_rejects_bad_input(kwargs: dict, match: str) -> None:
    with pytest.raises(InputError, match=match):
        lora_airtime_s(**kwargs)


def test_presets_match_topology_names_and_sources() -> None:
    assert tuple(PRESETS) == RADIO_PRESET_NAMES
    for preset in PRESETS.values():
        assert preset.source and preset.tx_w > preset.sleep_w >= 0
    assert [PRESETS[f"lora-sf{sf}"].lora.max_payload_bytes for sf in range(7, 13)] == [
        242, 242, 115, 51, 51, 51]


def test_wifi_preset_is_ns3_default_currents_at_3_volts() -> None:
    r = radio_energy(PresetEnergy(model="preset", name="wifi-80211n"))
    assert (r.tx_w, r.rx_w, r.idle_w, r.sleep_w) == pytest.approx((1.14, 0.939, 0.819, 0.099))


def test_first_order_model_by_hand() -> None:
    near = FirstOrderEnergy(model="first-order", distance_m=50.0)
    far = FirstOrderEnergy(model="first-order", distance_m=100.0)
    assert first_order_tx_j_per_bit(near) == pytest.approx(50e-9 + 10e-12 * 50**2)   # 75 nJ
    assert first_order_tx_j_per_bit(far) == pytest.approx(50e-9 + 0.0013e-12 * 100**4)  # 180 nJ
    r = radio_energy(near)
    assert (r.tx_w, r.rx_j_per_bit) == (0.0, 50e-9)


def test_device_energy_by_hand() -> None:
    radio = radio_energy(StateEnergy(model="state", tx_w=2.0, rx_w=1.0, idle_w=0.5,
                                     sleep_w=0.01))
    e = device_energy("d", radio, tx_s=0.1, tx_bits=1e6, rx_s=0.2, rx_bits=1e3, compute_s=0.3,
                      compute_w=4.0, horizon_s=10.0)
    assert (e.tx_j, e.rx_j, e.idle_j, e.sleep_j, e.compute_j) == pytest.approx(
        (0.2, 0.2, 0.5 * 9.7, 0.0, 1.2))
    assert e.comm_j == pytest.approx(0.4)
    asleep = device_energy("d", radio, tx_s=0.1, tx_bits=0, rx_s=0.2, rx_bits=0, compute_s=0,
                           compute_w=0, horizon_s=10.0, idle_state="sleep")
    assert (asleep.idle_j, asleep.sleep_j) == pytest.approx((0.0, 0.01 * 9.7))


def test_simulated_energy_matches_hand_computation() -> None:
    topo = parse_topology("""
testbed: t
central: {decode_deadline_s: 1.0, processing_s: 0.0}
links:
  l: {kind: dedicated, bandwidth_bps: 1.0e+6, delay_s: 0.01, mtu_bytes: 1000,
      overhead_bytes: 100, ack_payload_bytes: 4}
devices:
  - {id: device-1, receivers: [0, 14], link: l, cpu_scale: 2.0, compute_w: 3.0,
     energy: {model: state, tx_w: 2.0, rx_w: 1.0, idle_w: 0.5}}
""")
    result = NetworkModel(topo, seed=0).run(Workload((Message(2000, 0.01),), 3, 1.0))
    (e,) = result.energy
    tx_s = 3 * (2000 + 3 * 100) * 8 / 1e6   # 3 frames of 3 packets
    rx_s = 3 * (100 + 4) * 8 / 1e6          # 3 PUBACKs
    assert e.tx_j == pytest.approx(2.0 * tx_s, rel=1e-12)
    assert e.rx_j == pytest.approx(1.0 * rx_s, rel=1e-12)
    assert e.idle_j == pytest.approx(0.5 * (3.0 - tx_s - rx_s), rel=1e-12)
    assert e.compute_j == pytest.approx(3.0 * 3 * 0.01 * 2.0, rel=1e-12)


def test_lora_phy_caps_payload_at_255() -> None:
    assert LoraPhy(7, 242).airtime_s(300) == lora_airtime_s(255, 7)
