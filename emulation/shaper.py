"""The pure part of live shaping: MQTT packet framing and one device's link in wall-clock time.

`LinkShaper` drives the model's own per-device state (`emulation.network.LinkSender`): the
same segmentation (``mtu_bytes``, ``overhead_bytes`` per packet), the same loss rounds drawn
from the same seeded stream (`emulation.network.plan_frame`), serialisation at
``bandwidth_bps`` on the same FIFO server (`emulation.network.Medium`, one per shared medium),
``delay_s`` plus jitter, LoRa airtime and duty cycle, and the energy books of
`emulation.energy.device_energy`. It knows no sockets and no clock: `LinkShaper.uplink` is a
generator that yields the times (seconds, any monotonic clock) to wait for, like a SimPy
process; `emulation.proxy` sleeps on them in real time, and the unit tests step through them
in virtual time and compare with `NetworkModel`.
"""

from __future__ import annotations

import enum
from collections.abc import Generator
from dataclasses import asdict, dataclass

from emulation.energy import DeviceEnergy, device_energy, radio_energy
from emulation.network import LinkSender, Medium, plan_frame, segment
from epic.topology import DeviceSpec, LinkSpec

__all__ = [
    "MAX_REMAINING_BYTES",
    "LinkShaper",
    "MqttFramer",
    "MqttProtocolError",
    "PacketType",
    "ShaperCounters",
    "packet_type",
]

#: The largest MQTT "remaining length" (four variable-length bytes), bytes.
MAX_REMAINING_BYTES = 268_435_455


class PacketType(enum.IntEnum):
    """MQTT control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14
    AUTH = 15


class MqttProtocolError(ValueError):
    """The byte stream is not MQTT (a remaining length longer than four bytes)."""


def packet_type(packet: bytes) -> int:
    """The control packet type (1..15) of one whole MQTT packet."""
    return packet[0] >> 4


class MqttFramer:
    """Cut a TCP byte stream into whole MQTT packets (fixed header + remaining length).

    `feed` takes any chunk and returns the packets it completes, in order, byte for byte;
    the rest waits in the buffer. Raises `MqttProtocolError` if the remaining length runs
    past four bytes.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete packet held back, bytes."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Append ``data``; return the whole packets now available."""
        buf, out = self._buf, []
        buf += data
        while len(buf) >= 2:
            length, multiplier, header = 0, 1, 0
            for i in range(1, 5):
                if i >= len(buf):
                    return out
                length += (buf[i] & 0x7F) * multiplier
                if not buf[i] & 0x80:
                    header = i + 1
                    break
                multiplier *= 128
            else:
                raise MqttProtocolError(f"MQTT remaining length longer than 4 bytes: "
                                        f"{bytes(buf[:5]).hex()}")
            end = header + length
            if len(buf) < end:
                break
            out.append(bytes(buf[:end]))
            del buf[:end]
        return out


@dataclass
class ShaperCounters:
    """What crossed one device's link. ``*_mqtt_bytes`` are MQTT packet bytes, ``*_wire_bytes``
    add ``overhead_bytes`` per link packet and the resent rounds; uplink is device to broker."""

    up_mqtt_bytes: int = 0
    up_wire_bytes: int = 0
    up_packets: int = 0
    publishes: int = 0
    resent_rounds: int = 0
    given_up: int = 0
    down_mqtt_bytes: int = 0
    down_wire_bytes: int = 0
    down_packets: int = 0


class LinkShaper:
    """One device's link, driven in wall-clock seconds with the model's code.

    Args:
        index: the device's position in the topology (it seeds the device's stream, as in
            `NetworkModel`, so equal seeds draw equal losses and jitter).
        device: the device spec (its radio and ``cpu_scale``).
        link: its link profile.
        medium: the shared medium's FIFO server (one for all devices on it), or None for a
            dedicated link (the shaper then owns one server per direction: full duplex).
        seed: seed of the random streams.
        start_s: clock time the books start at, seconds.
    """

    def __init__(self, index: int, device: DeviceSpec, link: LinkSpec, medium: Medium | None,
                 seed: int, start_s: float) -> None:
        self.device_id = device.id
        self.counters = ShaperCounters()
        self._banked = DeviceEnergy(device.id, 0.0, 0.0, 0.0, 0.0, 0.0)
        self._banked_tx_s = self._banked_rx_s = 0.0
        self.sender = LinkSender(index, device.id, link, radio_energy(device.energy),
                                 device.cpu_scale, medium, seed)
        self._up = medium if medium is not None else Medium()
        self._down = medium if medium is not None else Medium()
        self._books_from_s = start_s
        self._idle_state = device.radio_idle_state

    @property
    def link(self) -> LinkSpec:
        """The link profile in effect."""
        return self.sender.link

    def relink(self, now_s: float, device: DeviceSpec, link: LinkSpec,
               medium: Medium | None) -> None:
        """Switch to a new link or radio from the next packet on; the energy so far is banked
        with the old radio, and the random stream goes on."""
        self._banked = self._sum(self._banked, self._book(now_s))
        self._banked_tx_s += self.sender.tx_s
        self._banked_rx_s += self.sender.rx_s
        old = self.sender
        self.sender = LinkSender(old.index, device.id, link, radio_energy(device.energy),
                                 device.cpu_scale, medium, 0)
        self.sender.rand = old.rand
        self._up = medium if medium is not None else Medium()
        self._down = medium if medium is not None else Medium()
        self._books_from_s = now_s
        self._idle_state = device.radio_idle_state

    def uplink(self, now_s: float, packet_bytes: int,
               publish: bool = False) -> Generator[float, None, float]:
        """Send one MQTT packet of ``packet_bytes`` bytes, ready at ``now_s``, towards the broker
        (``publish``: count it as a frame).

        Yields the clock times (seconds) to wait for: the end of each round, and the moment a
        resent round asks for the medium (``rto_s`` after the previous one). Returns the time
        the packet reaches the broker (propagation and jitter included). A packet that
        exhausts ``max_retries`` still arrives (TCP never drops bytes) and is counted in
        ``given_up``.
        """
        s, c = self.sender, self.counters
        plan = plan_frame(s, packet_bytes)
        t = now_s
        for i, (n_full, last_out) in enumerate(plan.rounds):
            if i:
                t += s.link.rto_s
                c.resent_rounds += 1
                yield t
            wire, dt = s.round_wire(n_full, last_out, plan.last_bytes)
            if s.lora is None:
                t = self._up.hold(t, dt)
            else:
                for size in s.round_sizes(n_full, last_out, plan.last_bytes):
                    air_s = s.lora.airtime_s(size)
                    t = self._up.hold(max(t, s.duty_free_s), air_s)
                    s.lora_sent(t, air_s)
            s.book_tx(wire, dt)
            c.up_wire_bytes += wire
            yield t
        c.up_mqtt_bytes += packet_bytes
        c.up_packets += 1
        c.publishes += int(publish)
        c.given_up += int(plan.lost)
        # the model draws no jitter for a frame it gives up on; neither do we (same stream)
        return t + (s.delay_s if plan.lost else s.propagation_s())

    def downlink(self, now_s: float, packet_bytes: int) -> float:
        """Send one MQTT packet from the broker to the device; return its arrival time.

        Segmented like the uplink, serialised on the downlink (the shared medium, or the
        dedicated link's own downlink), then ``delay_s``; never lost (the model's PUBACK is
        never lost). Booked as receive time and bits.
        """
        s, c = self.sender, self.counters
        n_full, last_bytes = segment(packet_bytes, s.payload_cap_bytes)
        wire, dt = s.round_wire(n_full, True, last_bytes)
        end = self._down.hold(now_s, dt)
        s.book_rx(wire, dt)
        c.down_mqtt_bytes += packet_bytes
        c.down_wire_bytes += wire
        c.down_packets += 1
        return end + s.delay_s

    def _book(self, now_s: float) -> DeviceEnergy:
        s = self.sender
        return device_energy(s.device_id, s.radio, tx_s=s.tx_s, tx_bits=s.tx_bits, rx_s=s.rx_s,
                             rx_bits=s.rx_bits, compute_s=0.0, compute_w=0.0,
                             horizon_s=now_s - self._books_from_s, idle_state=self._idle_state)

    @staticmethod
    def _sum(a: DeviceEnergy, b: DeviceEnergy) -> DeviceEnergy:
        return DeviceEnergy(a.device_id, a.tx_j + b.tx_j, a.rx_j + b.rx_j, a.idle_j + b.idle_j,
                            a.sleep_j + b.sleep_j, a.compute_j + b.compute_j)

    def energy(self, now_s: float) -> DeviceEnergy:
        """Radio energy since the start, joules (`device_energy`, the model's books; the time
        not spent sending or receiving is idle or sleep, as the device's radio says)."""
        return self._sum(self._banked, self._book(now_s))

    def status(self, now_s: float) -> dict:
        """Counters, radio seconds and energy by state, as JSON-ready values."""
        e = self.energy(now_s)
        return {
            **asdict(self.counters),
            "tx_s": self._banked_tx_s + self.sender.tx_s,
            "rx_s": self._banked_rx_s + self.sender.rx_s,
            "energy_j": {"tx": e.tx_j, "rx": e.rx_j, "idle": e.idle_j, "sleep": e.sleep_j,
                         "comm": e.comm_j, "radio": e.radio_j},
        }
