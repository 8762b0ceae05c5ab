"""Radio energy models and presets, LoRa time on air, and the energy books of one device.

Every radio is reduced to a linear model, `RadioEnergy`: energy = power × time in a state plus
energy per bit. A state-based radio has only powers; Heinzelman's first-order model has only
per-bit costs (plus optional idle and sleep powers); a preset is a state-based radio with the
numbers of a real chip, cited in docs/topology.md. The LoRa presets also carry their PHY
(`LoraPhy`): time on air by Semtech AN1200.13, the LoRaWAN EU868 payload limit per spreading
factor (longer frames are fragmented) and the 1 % duty cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from epic.errors import InputError
from epic.topology import (
    RADIO_PRESET_NAMES,
    EnergySpec,
    FirstOrderEnergy,
    PresetEnergy,
    StateEnergy,
)

__all__ = [
    "PRESETS",
    "DeviceEnergy",
    "LoraPhy",
    "RadioEnergy",
    "RadioPreset",
    "device_energy",
    "first_order_tx_j_per_bit",
    "lora_airtime_s",
    "radio_energy",
]


def lora_airtime_s(payload_bytes: int, spreading_factor: int, bandwidth_hz: float = 125e3,
                   coding_rate: int = 1, preamble_symbols: int = 8, explicit_header: bool = True,
                   crc: bool = True, low_data_rate_optimize: bool | None = None) -> float:
    """Time on air of one LoRa packet, seconds (Semtech AN1200.13, section 4).

    Args:
        payload_bytes: PHY payload length PL, bytes (0..255).
        spreading_factor: SF, 6..12.
        bandwidth_hz: BW, Hz.
        coding_rate: CR in 1..4, meaning 4/(4+CR).
        preamble_symbols: programmed preamble length n_preamble.
        explicit_header: header present (IH = 0).
        crc: payload CRC on.
        low_data_rate_optimize: DE; ``None`` means on when the symbol time exceeds 16 ms
            (SF11 and SF12 at 125 kHz).

    Raises `InputError` if an argument is out of range.
    """
    if not 0 <= payload_bytes <= 255:
        raise InputError(f"LoRa payload_bytes must be in 0..255, got {payload_bytes}")
    if not 6 <= spreading_factor <= 12:
        raise InputError(f"LoRa spreading_factor must be in 6..12, got {spreading_factor}")
    if not 1 <= coding_rate <= 4:
        raise InputError(f"LoRa coding_rate must be in 1..4, got {coding_rate}")
    symbol_s = 2**spreading_factor / bandwidth_hz
    de = symbol_s > 16e-3 if low_data_rate_optimize is None else low_data_rate_optimize
    numerator = (8 * payload_bytes - 4 * spreading_factor + 28 + 16 * int(crc)
                 - 20 * int(not explicit_header))
    blocks = math.ceil(numerator / (4 * (spreading_factor - 2 * int(de))))
    payload_symbols = 8 + max(blocks * (coding_rate + 4), 0)
    return (preamble_symbols + 4.25 + payload_symbols) * symbol_s


@dataclass(frozen=True)
class LoraPhy:
    """A LoRa PHY at 125 kHz, CR 4/5, preamble 8, explicit header, CRC on.

    ``max_payload_bytes`` is the LoRaWAN EU868 application payload limit N for the data rate
    (RP002-1.0.3, no repeater); ``duty_cycle`` the fraction of time a device may transmit.
    """

    spreading_factor: int
    max_payload_bytes: int
    bandwidth_hz: float = 125e3
    coding_rate: int = 1
    preamble_symbols: int = 8
    duty_cycle: float = 0.01

    def airtime_s(self, phy_payload_bytes: int) -> float:
        """Time on air of one packet of ``phy_payload_bytes`` (headers included), seconds."""
        return lora_airtime_s(min(phy_payload_bytes, 255), self.spreading_factor,
                              self.bandwidth_hz, self.coding_rate, self.preamble_symbols)


@dataclass(frozen=True)
class RadioPreset:
    """A real radio's powers by state, watts, and where the numbers come from."""

    name: str
    tx_w: float
    rx_w: float
    idle_w: float
    sleep_w: float
    source: str
    lora: LoraPhy | None = None


_LORA_N_BYTES = {7: 242, 8: 242, 9: 115, 10: 51, 11: 51, 12: 51}
_SX1276_V = 3.3


def _lora_preset(sf: int) -> RadioPreset:
    return RadioPreset(
        f"lora-sf{sf}", tx_w=0.029 * _SX1276_V, rx_w=0.0115 * _SX1276_V,
        idle_w=0.0016 * _SX1276_V, sleep_w=0.2e-6 * _SX1276_V,
        source="Semtech SX1276 datasheet: TX +13 dBm RFO 29 mA, RX 11.5 mA, standby 1.6 mA, "
               "sleep 0.2 uA at 3.3 V; airtime AN1200.13; payload limit LoRaWAN RP002 EU868",
        lora=LoraPhy(sf, _LORA_N_BYTES[sf]))


#: The named radios (keys equal `epic.topology.RADIO_PRESET_NAMES`).
PRESETS: dict[str, RadioPreset] = {
    "wifi-80211n": RadioPreset(
        "wifi-80211n", tx_w=0.380 * 3.0, rx_w=0.313 * 3.0, idle_w=0.273 * 3.0,
        sleep_w=0.033 * 3.0,
        source="ns-3 WifiRadioEnergyModel defaults (TxCurrentA 0.380, RxCurrentA 0.313, "
               "IdleCurrentA 0.273, SleepCurrentA 0.033) at the BasicEnergySource 3.0 V"),
    "ble-1m": RadioPreset(
        "ble-1m", tx_w=4.8e-3 * 3.0, rx_w=4.6e-3 * 3.0, idle_w=1.5e-6 * 3.0,
        sleep_w=0.4e-6 * 3.0,
        source="Nordic nRF52840 product specification: TX 0 dBm 4.8 mA, RX 1 Mbit/s 4.6 mA "
               "(DC/DC, 3 V), System ON idle 1.5 uA, System OFF 0.4 uA"),
    **{f"lora-sf{sf}": _lora_preset(sf) for sf in range(7, 13)},
    "lte-m": RadioPreset(
        "lte-m", tx_w=0.543, rx_w=0.090, idle_w=0.0024, sleep_w=0.015e-3,
        source="3GPP TR 45.820 device power model: TX 543 mW at 23 dBm, RX 90 mW, light "
               "sleep 2.4 mW, deep sleep (PSM) 15 uW"),
}
assert tuple(PRESETS) == RADIO_PRESET_NAMES, "presets out of step with epic.topology"


@dataclass(frozen=True)
class RadioEnergy:
    """A linear radio: E_tx = tx_w·t + tx_j_per_bit·bits, E_rx likewise, idle and sleep in W."""

    tx_w: float
    tx_j_per_bit: float
    rx_w: float
    rx_j_per_bit: float
    idle_w: float
    sleep_w: float
    lora: LoraPhy | None = None


def first_order_tx_j_per_bit(spec: FirstOrderEnergy) -> float:
    """Transmit energy per bit of the first-order model at ``spec.distance_m``, J/bit."""
    d = spec.distance_m
    if d < spec.crossover_m:
        return spec.e_elec_j_per_bit + spec.eps_fs_j_per_bit_m2 * d**2
    return spec.e_elec_j_per_bit + spec.eps_mp_j_per_bit_m4 * d**4


def radio_energy(spec: EnergySpec) -> RadioEnergy:
    """Reduce a topology energy spec (state, first-order or preset) to a `RadioEnergy`."""
    if isinstance(spec, StateEnergy):
        return RadioEnergy(spec.tx_w, 0.0, spec.rx_w, 0.0, spec.idle_w, spec.sleep_w)
    if isinstance(spec, FirstOrderEnergy):
        return RadioEnergy(0.0, first_order_tx_j_per_bit(spec), 0.0, spec.e_elec_j_per_bit,
                           spec.idle_w, spec.sleep_w)
    if isinstance(spec, PresetEnergy):
        p = PRESETS[spec.name]
        return RadioEnergy(p.tx_w, 0.0, p.rx_w, 0.0, p.idle_w, p.sleep_w, p.lora)
    raise InputError(f"unknown energy spec {spec!r}")


@dataclass(frozen=True)
class DeviceEnergy:
    """Energy of one device over a run, joules, by radio state and for compute (the board:
    active power while computing, idle power otherwise)."""

    device_id: str
    tx_j: float
    rx_j: float
    idle_j: float
    sleep_j: float
    compute_j: float

    @property
    def comm_j(self) -> float:
        """Communication energy: transmit plus receive, joules."""
        return self.tx_j + self.rx_j

    @property
    def radio_j(self) -> float:
        """All radio energy (tx, rx, idle, sleep), joules."""
        return self.tx_j + self.rx_j + self.idle_j + self.sleep_j

    @property
    def total_j(self) -> float:
        """Radio plus compute energy, joules."""
        return self.radio_j + self.compute_j


def device_energy(device_id: str, radio: RadioEnergy, *, tx_s: float, tx_bits: float,
                  rx_s: float, rx_bits: float, compute_s: float, compute_w: float,
                  horizon_s: float, idle_state: str = "idle",
                  compute_idle_w: float = 0.0) -> DeviceEnergy:
    """Book one device's energy.

    Args:
        tx_s, rx_s: time the radio spent transmitting and receiving, seconds.
        tx_bits, rx_bits: bits sent and received (retransmissions included).
        compute_s: time spent computing, seconds, at ``compute_w`` watts (a hardware class's
            ``active_w``).
        horizon_s: length of the run, seconds; the radio spends the rest of it in
            ``idle_state`` ("idle" or "sleep"), the board the rest of it (``horizon_s -
            compute_s``) at ``compute_idle_w`` watts (a class's ``idle_w``; 0 without one).
    """
    rest_s = max(horizon_s - tx_s - rx_s, 0.0)
    idle_s, sleep_s = (rest_s, 0.0) if idle_state == "idle" else (0.0, rest_s)
    return DeviceEnergy(
        device_id,
        tx_j=radio.tx_w * tx_s + radio.tx_j_per_bit * tx_bits,
        rx_j=radio.rx_w * rx_s + radio.rx_j_per_bit * rx_bits,
        idle_j=radio.idle_w * idle_s,
        sleep_j=radio.sleep_w * sleep_s,
        compute_j=compute_w * compute_s + compute_idle_w * max(horizon_s - compute_s, 0.0),
    )
