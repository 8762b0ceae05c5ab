"""One device's link: the per-device pieces of the network model, shared with the live proxy.

`Medium` is the closed-form FIFO server of a shared medium; `LinkSender` holds one device's
resolved link and radio, its seeded random stream and its energy books (time and bits on the
air each way, compute time); `plan_frame` segments a frame into packets and draws its loss
rounds from the sender's stream (`FramePlan`). `NetworkModel` drives them in simulated time,
`emulation.shaper` in wall-clock time.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import simpy

from emulation.energy import RadioEnergy
from epic.topology import LinkSpec

__all__ = ["FramePlan", "LinkSender", "Medium", "plan_frame"]


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

    rounds: tuple[tuple[int, bool], ...]
    last_bytes: int
    lost: bool


class LinkSender:
    """One device's resolved link and radio, its random stream and its energy books (the
    model's per-device state; the live proxy drives one per device in wall-clock time)."""

    __slots__ = ("ack_bytes", "ack_s", "bw", "compute_s", "cpu_scale", "dc_free", "delay", "dev",
                 "id", "jitter", "link", "lora", "medium", "payload_cap", "radio", "rand",
                 "rx_bits", "rx_s", "tx_bits", "tx_s")

    def __init__(self, dev: int, device_id: str, link: LinkSpec, radio: RadioEnergy,
                 cpu_scale: float, medium: Medium | simpy.Resource | None, seed: int) -> None:
        self.rand = random.Random(f"{seed}/{dev}").random
        self.dev, self.id, self.link, self.radio = dev, device_id, link, radio
        self.cpu_scale, self.medium, self.lora = cpu_scale, medium, radio.lora
        self.bw, self.delay, self.jitter = link.bandwidth_bps, link.delay_s, link.jitter_s
        cap = link.payload_per_packet_bytes
        self.payload_cap = min(cap, self.lora.max_payload_bytes) if self.lora else cap
        self.ack_bytes = link.overhead_bytes + link.ack_payload_bytes
        self.ack_s = self.airtime_s(self.ack_bytes, 1)
        self.dc_free = 0.0
        self.tx_s = self.tx_bits = self.rx_s = self.rx_bits = self.compute_s = 0.0

    def airtime_s(self, wire_bytes: int, packets: int) -> float:
        """Time on air of ``packets`` packets totalling ``wire_bytes`` (LoRa: one packet)."""
        if self.lora is not None:
            return self.lora.airtime_s(wire_bytes)
        return wire_bytes * 8.0 / self.bw

    def round_sizes(self, n_full: int, last_out: bool, last_bytes: int) -> list[int]:
        """Wire sizes (headers included) of a round's packets, bytes."""
        ovh = self.link.overhead_bytes
        return [self.payload_cap + ovh] * n_full + ([last_bytes + ovh] if last_out else [])

    def round_bytes(self, n_full: int, last_out: bool, last_bytes: int) -> int:
        """Wire bytes of a round (headers included), bytes."""
        ovh = self.link.overhead_bytes
        return n_full * (self.payload_cap + ovh) + (last_bytes + ovh if last_out else 0)

    def propagation_s(self) -> float:
        """One draw of the propagation time, ``delay_s + U[0, jitter_s]``, seconds."""
        return self.delay + (self.jitter * self.rand() if self.jitter else 0.0)

    @property
    def fast(self) -> bool:
        return self.medium is None and self.lora is None


def plan_frame(s: LinkSender, payload_bytes: int) -> FramePlan:
    """Segment a frame of ``payload_bytes`` and draw its loss rounds from ``s``'s stream.

    The draws are those of the model's senders, in the same order: per round, one per
    outstanding full packet, then one for the last packet.
    """
    n = max(math.ceil(payload_bytes / s.payload_cap), 1)
    n_full, last = n - 1, payload_bytes - (n - 1) * s.payload_cap
    p, rand, last_out = s.link.loss, s.rand, True
    rounds = [(n_full, True)]
    while True:
        if p > 0.0:
            n_full = sum(1 for _ in range(n_full) if rand() < p)
            last_out = last_out and rand() < p
        else:
            n_full, last_out = 0, False
        if not (n_full or last_out):
            return FramePlan(tuple(rounds), last, False)
        if len(rounds) > s.link.max_retries:
            return FramePlan(tuple(rounds), last, True)
        rounds.append((n_full, last_out))
