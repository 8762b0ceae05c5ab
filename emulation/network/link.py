"""The link kernel: one device's link, written once for the SimPy model and the live proxy.

Pure pieces, no clock of their own:

- `segment`: a payload cut into link packets (full packets, and the bytes of the last one);
- `draw_resends`: the loss rounds of one frame, drawn from the device's seeded stream;
- `plan_frame`: both at once, as a `FramePlan` (every round, the first one included);
- `LinkSender`: one device's resolved link and radio, its random stream and its energy books
  (time and bits on the air each way, compute time), with the wire bytes and airtime of a
  round (`round_wire`) and the LoRa duty-cycle bookkeeping (`lora_sent`);
- `Medium`: the closed-form FIFO server of a shared medium.

`NetworkModel` drives them in simulated time (its closed form for dedicated links included),
`emulation.shaper` in wall-clock time; neither segments a payload or draws a loss itself.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import simpy

from emulation.energy import RadioEnergy
from epic.topology import LinkSpec

__all__ = ["DELIVERED", "FramePlan", "LinkSender", "Medium", "draw_resends", "plan_frame",
           "segment"]

Round = tuple[int, bool]
"""One round of a frame: (full packets sent, whether the last packet goes)."""

DELIVERED: tuple[tuple[Round, ...], bool] = ((), False)
"""What `draw_resends` returns for a frame no packet of which was lost."""


def segment(payload_bytes: int, payload_cap_bytes: int) -> tuple[int, int]:
    """Cut ``payload_bytes`` into packets of at most ``payload_cap_bytes`` of payload.

    Returns (full packets, payload bytes of the last packet); an empty payload is one packet
    of 0 bytes, so every message puts at least one packet on the link.
    """
    n = max(math.ceil(payload_bytes / payload_cap_bytes), 1)
    return n - 1, payload_bytes - (n - 1) * payload_cap_bytes


def draw_resends(full_packets: int, loss: float, max_retries: int,
                 rand: Callable[[], float]) -> tuple[tuple[Round, ...], bool]:
    """The resent rounds of a frame whose first round sent ``full_packets`` and its last packet.

    Each packet of a round is lost with probability ``loss``; the lost ones go again in the next
    round, at most ``max_retries`` times. The draws from ``rand`` are, per round, one per
    outstanding full packet, then one for the last packet if it is outstanding: every caller
    draws the same numbers in the same order (the model's senders, its closed form, the proxy).

    Returns (the resent rounds, in order; whether packets were still lost after the last one).
    """
    if not loss > 0.0:
        return DELIVERED
    n_full = sum(1 for _ in range(full_packets) if rand() < loss) if full_packets else 0
    last_out = rand() < loss
    if not (n_full or last_out):
        return DELIVERED  # the common case: nothing lost, nothing to build
    rounds: list[Round] = []
    while True:
        if len(rounds) == max_retries:
            return tuple(rounds), True
        rounds.append((n_full, last_out))
        n_full = sum(1 for _ in range(n_full) if rand() < loss) if n_full else 0
        last_out = last_out and rand() < loss
        if not (n_full or last_out):
            return tuple(rounds), False


class Medium:
    """A FIFO single server in closed form. Every holder's time is known when it asks, so a
    request made at ``now`` is served from ``max(now, free_s)``: what `simpy.Resource`
    (capacity 1) does, without its request and release events. The live proxy uses it in
    wall-clock seconds."""

    __slots__ = ("free_s",)

    def __init__(self) -> None:
        self.free_s = 0.0

    def hold(self, now_s: float, dt_s: float) -> float:
        """Occupy the server for ``dt_s`` seconds from ``max(now_s, free_s)``; return the end."""
        self.free_s = (now_s if now_s > self.free_s else self.free_s) + dt_s
        return self.free_s


@dataclass(frozen=True)
class FramePlan:
    """The rounds of one frame on a link, drawn from its device's loss stream.

    Attributes:
        rounds: per round, (full packets, whether the short last packet goes): round 0 sends
            every packet, round k > 0 resends those lost in round k - 1, ``rto_s`` after it.
        last_bytes: payload bytes of the last packet.
        lost: the frame still had lost packets after ``max_retries`` resends.
    """

    rounds: tuple[Round, ...]
    last_bytes: int
    lost: bool


class LinkSender:
    """One device's resolved link and radio, its random stream and its energy books (the
    model's per-device state; the live proxy drives one per device in wall-clock time).

    Args:
        index: the device's position in the topology (it names the device's random stream).
        device_id: the device's name.
        link, radio: its link profile and radio energy model.
        cpu_scale: compute time multiplier against the reference CPU.
        medium: the shared medium's FIFO server (`Medium`, or `simpy.Resource` in the model's
            event-by-event mode), or None for a dedicated link.
        seed: seed of the random stream (loss and jitter).
    """

    __slots__ = ("ack_s", "ack_wire_bytes", "bandwidth_bps", "compute_s", "cpu_scale", "delay_s",
                 "device_id", "duty_free_s", "index", "jitter_s", "link", "lora", "medium",
                 "overhead_bytes", "payload_cap_bytes", "radio", "rand", "rx_bits", "rx_s",
                 "tx_bits", "tx_s")

    def __init__(self, index: int, device_id: str, link: LinkSpec, radio: RadioEnergy,
                 cpu_scale: float, medium: Medium | simpy.Resource | None, seed: int) -> None:
        self.rand = random.Random(f"{seed}/{index}").random
        self.index, self.device_id, self.link, self.radio = index, device_id, link, radio
        self.cpu_scale, self.medium, self.lora = cpu_scale, medium, radio.lora
        self.bandwidth_bps, self.delay_s = link.bandwidth_bps, link.delay_s
        self.jitter_s, self.overhead_bytes = link.jitter_s, link.overhead_bytes
        cap = link.payload_per_packet_bytes
        self.payload_cap_bytes = min(cap, self.lora.max_payload_bytes) if self.lora else cap
        self.ack_wire_bytes = link.overhead_bytes + link.ack_payload_bytes
        self.ack_s = self.airtime_s(self.ack_wire_bytes, 1)
        self.duty_free_s = 0.0  # LoRa: the duty cycle lets the next packet go at this time
        self.tx_s = self.tx_bits = self.rx_s = self.rx_bits = self.compute_s = 0.0

    def airtime_s(self, wire_bytes: int, packets: int) -> float:
        """Time on air of ``packets`` packets totalling ``wire_bytes`` (LoRa: one packet)."""
        if self.lora is not None:
            return self.lora.airtime_s(wire_bytes)
        return wire_bytes * 8.0 / self.bandwidth_bps

    def round_sizes(self, n_full: int, last_out: bool, last_bytes: int) -> list[int]:
        """Wire sizes (headers included) of a round's packets, bytes."""
        ovh = self.overhead_bytes
        return [self.payload_cap_bytes + ovh] * n_full + ([last_bytes + ovh] if last_out else [])

    def round_bytes(self, n_full: int, last_out: bool, last_bytes: int) -> int:
        """Wire bytes of a round (headers included), bytes."""
        ovh = self.overhead_bytes
        return n_full * (self.payload_cap_bytes + ovh) + (last_bytes + ovh if last_out else 0)

    def round_wire(self, n_full: int, last_out: bool, last_bytes: int) -> tuple[int, float]:
        """(wire bytes, seconds on air) of a round sent back to back: bytes over the bandwidth,
        or, on LoRa, the sum of each packet's time on air (duty-cycle waits not included)."""
        if self.lora is None:
            wire = self.round_bytes(n_full, last_out, last_bytes)
            return wire, wire * 8.0 / self.bandwidth_bps
        sizes = self.round_sizes(n_full, last_out, last_bytes)
        air_s = 0.0
        for size in sizes:
            air_s += self.lora.airtime_s(size)
        return sum(sizes), air_s

    def lora_sent(self, end_s: float, air_s: float) -> None:
        """A LoRa packet of ``air_s`` on air ended at ``end_s``: the duty cycle keeps the radio
        off for ``air_s × (1 / duty_cycle - 1)`` seconds after it."""
        self.duty_free_s = end_s + air_s * (1.0 / self.lora.duty_cycle - 1.0)

    def book_tx(self, wire_bytes: int, air_s: float) -> None:
        """Book ``wire_bytes`` sent in ``air_s`` seconds on air."""
        self.tx_s += air_s
        self.tx_bits += wire_bytes * 8.0

    def book_rx(self, wire_bytes: int, air_s: float) -> None:
        """Book ``wire_bytes`` received in ``air_s`` seconds on air."""
        self.rx_s += air_s
        self.rx_bits += wire_bytes * 8.0

    def propagation_s(self) -> float:
        """One draw of the propagation time, ``delay_s + U[0, jitter_s]``, seconds."""
        return self.delay_s + (self.jitter_s * self.rand() if self.jitter_s else 0.0)

    @property
    def fast(self) -> bool:
        """A dedicated, non-LoRa link: nothing it does depends on another device."""
        return self.medium is None and self.lora is None


def plan_frame(s: LinkSender, payload_bytes: int) -> FramePlan:
    """Segment a frame of ``payload_bytes`` and draw its loss rounds from ``s``'s stream
    (`segment`, then `draw_resends`)."""
    n_full, last_bytes = segment(payload_bytes, s.payload_cap_bytes)
    resends, lost = draw_resends(n_full, s.link.loss, s.link.max_retries, s.rand)
    return FramePlan(((n_full, True), *resends), last_bytes, lost)
