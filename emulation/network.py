"""A seeded SimPy model of the devices' links, the broker and the central node.

Each device sends, per shot-gather, a sequence of messages (one latent frame in EPIC mode, a
few raw chunks in centralized mode) over its link. Per message:

1. compute: ``compute_s × cpu_scale`` on the device CPU (one message at a time);
2. segmentation: ``n = ceil(payload / (mtu_bytes - overhead_bytes))`` packets, each with
   ``overhead_bytes`` of headers (a LoRa preset also caps the payload at its LoRaWAN limit);
3. serialisation: the packets of a round go out back to back, ``bytes·8 / bandwidth_bps``
   (LoRa: AN1200.13 time on air per packet, then the duty-cycle off time). A shared medium is
   one FIFO server held for a round (`simpy.Resource`, or its closed form `Medium`); a
   dedicated link is owned by its device's sender;
4. loss: each packet is lost with probability ``loss``; the lost ones go again in a new
   round ``rto_s`` after the end of the round, at most ``max_retries`` times, else the frame
   is reported lost;
5. propagation: ``delay_s`` plus a uniform ``[0, jitter_s]`` draw (a `simpy` timeout);
6. broker and central: FIFO single servers (``processing_s`` each). Arrivals are handled in
   event order, so the closed form ``start = max(arrival, free_at)`` is exactly a
   ``Resource(capacity=1)`` without its events; central sees the broker's departures, which
   leave in arrival order;
7. the QoS 1 PUBACK goes back over the link (on a shared medium it contends like any
   packet); the device books its receive time and bits.

Speed without approximation: a sender on a dedicated link (not LoRa) shares nothing before
the broker, so its frames are computed in closed form and handed to the broker in time order;
a shared medium is served as a closed-form FIFO, since every hold time is known when it is
requested. ``closed_form=False`` runs the plain SimPy version (processes, `simpy.Resource`);
tests check that both give the same frames and energy.

The live proxy (`emulation.proxy`, via `emulation.shaper`) reuses the per-device pieces:
`LinkSender` (link, radio, random stream, energy books), `plan_frame` (segmentation and loss
rounds, the event path's own code) and `Medium` (the FIFO server), in wall-clock time.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import random
from dataclasses import dataclass

import numpy as np
import simpy

from emulation.energy import DeviceEnergy, LoraPhy, RadioEnergy, device_energy, radio_energy
from epic.errors import InputError
from epic.topology import LinkSpec, Topology

__all__ = ["STAGES", "FramePlan", "FrameRecords", "LinkSender", "Medium", "Message", "NetworkModel",
           "NetworkResult", "Workload", "plan_frame"]

log = logging.getLogger(__name__)

#: Latency stages of one frame, in the column order of `FrameRecords.stages_s`.
STAGES: tuple[str, ...] = ("compute", "queue", "transmit", "retransmission", "propagation",
                           "broker", "central")


@dataclass(frozen=True)
class Message:
    """One MQTT PUBLISH a device sends per shot-gather.

    Args:
        payload_bytes: application bytes (frame plus MQTT header), >= 0.
        compute_s: compute time on the reference CPU before it is ready, seconds (scaled by
            the device's ``cpu_scale``).
    """

    payload_bytes: int
    compute_s: float = 0.0

    def __post_init__(self) -> None:
        if self.payload_bytes < 0:
            raise InputError(f"Message.payload_bytes must be >= 0, got {self.payload_bytes}")
        if not self.compute_s >= 0:
            raise InputError(f"Message.compute_s must be >= 0, got {self.compute_s}")


@dataclass(frozen=True)
class Workload:
    """Every device sends ``messages`` (in order) for each of ``gathers`` shot-gathers, the
    g-th gather becoming available at ``g × interval_s`` seconds."""

    messages: tuple[Message, ...]
    gathers: int
    interval_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.messages:
            raise InputError("Workload.messages must not be empty")
        if self.gathers < 1:
            raise InputError(f"Workload.gathers must be >= 1, got {self.gathers}")
        if not self.interval_s >= 0:
            raise InputError(f"Workload.interval_s must be >= 0, got {self.interval_s}")


@dataclass(frozen=True)
class FrameRecords:
    """Per-frame results; N = devices × gathers × messages, rows sorted by (device, gather,
    message).

    Attributes:
        device, gather, message: (N,) int64 indices.
        start_s: (N,) float64, when the frame's gather became available, seconds.
        end_s: (N,) float64, when central finished with it (or when it was given up).
        stages_s: (N, 7) float64, seconds per stage in `STAGES` order; rows sum to
            ``end_s - start_s``.
        lost: (N,) bool, the frame exhausted its retries.
        wire_bytes: (N,) int64, bytes put on the air for it, headers and resends included.
    """

    device: np.ndarray
    gather: np.ndarray
    message: np.ndarray
    start_s: np.ndarray
    end_s: np.ndarray
    stages_s: np.ndarray
    lost: np.ndarray
    wire_bytes: np.ndarray

    @property
    def latency_s(self) -> np.ndarray:
        """(N,) float64 end-to-end latency, seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class NetworkResult:
    """One run: frame records, energy per device, bytes each way and the run's length."""

    frames: FrameRecords
    energy: tuple[DeviceEnergy, ...]
    uplink_bytes: int
    downlink_bytes: int
    horizon_s: float


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


class NetworkModel:
    """The SimPy model of one topology. Build it, then `run` a workload once.

    Args:
        topology: the validated topology.
        seed: seed of the random streams (loss and jitter, one stream per device); equal
            seeds give equal results.
        closed_form: compute dedicated links in closed form, and serve shared media as a
            closed-form FIFO (`Medium`). False runs every link event by event, shared media as
            `simpy.Resource`: slower, for checking; the results are the same.
    """

    def __init__(self, topology: Topology, seed: int = 0, closed_form: bool = True) -> None:
        self.topology = topology
        self.env = simpy.Environment()
        self._media: dict[str, Medium | simpy.Resource] = {}
        media = self._media
        self.senders: list[LinkSender] = []
        for i, d in enumerate(topology.devices):
            link = topology.link_of(d)
            medium = None
            if link.kind == "shared":
                if d.link not in media:
                    media[d.link] = (Medium() if closed_form
                                     else simpy.Resource(self.env, capacity=1))
                medium = media[d.link]
            self.senders.append(LinkSender(i, d.id, link, radio_energy(d.energy), d.cpu_scale,
                                        medium, seed))
        self._broker_s = topology.broker.processing_s
        self._central_s = topology.central.processing_s
        self._broker_free = self._central_free = 0.0
        self._rows: list[tuple] = []
        self._down_bytes = 0
        self._ran = False
        self._last_end_s = 0.0
        self._closed_form_ok = closed_form

    # -- the run ---------------------------------------------------------------------------
    def run(self, workload: Workload) -> NetworkResult:
        """Simulate ``workload`` on every device until all frames are done."""
        if self._ran:
            raise RuntimeError("a NetworkModel runs once; build a new one")
        self._ran = True
        arrivals: list[tuple] = []
        for s in self.senders:
            ready = self._ready_times(s, workload)
            if s.fast and self._closed_form_ok:
                arrivals += self._closed_form(s, workload, ready)
            else:
                self.env.process(self._send_all(s, workload, ready))
        if arrivals:
            arrivals.sort(key=lambda a: a[0])
            self.env.process(self._feed(arrivals))
        self.env.run()
        busy_s = [m.free_s for m in self._media.values() if isinstance(m, Medium)]
        horizon_s = max(self.env.now, self._last_end_s, workload.gathers * workload.interval_s,
                        *busy_s)
        return self._result(horizon_s)

    def _ready_times(self, s: LinkSender,
                     w: Workload) -> list[tuple[int, int, float, float, float]]:
        """(gather, message, gather start, compute duration, ready time) for each frame; the
        device CPU runs one message at a time, in order."""
        out, cpu_free = [], 0.0
        for g in range(w.gathers):
            t0 = g * w.interval_s
            for k, m in enumerate(w.messages):
                c = m.compute_s * s.cpu_scale
                cpu_free = max(cpu_free, t0) + c
                s.compute_s += c
                out.append((g, k, t0, c, cpu_free))
        return out

    def _packets(self, s: LinkSender, payload_bytes: int) -> tuple[int, int]:
        """(full packets, payload bytes of the last packet) for one frame."""
        n = max(math.ceil(payload_bytes / s.payload_cap), 1)
        return n - 1, payload_bytes - (n - 1) * s.payload_cap

    def _closed_form(self, s: LinkSender, w: Workload, ready: list) -> list[tuple]:
        """A dedicated link in closed form: its (broker arrival time, frame) list.

        The same rounds and the same draws from the device's stream as `_send_all`, without
        events: nobody else uses the link, so nothing can change the outcome.
        """
        out, link_free, ovh, cap = [], 0.0, s.link.overhead_bytes, s.payload_cap
        p, rto, retries, bw, rand = s.link.loss, s.link.rto_s, s.link.max_retries, s.bw, s.rand
        shapes = []  # per message: (full packets, last payload, wire bytes, first-round airtime)
        for m in w.messages:
            n_full0, last = self._packets(s, m.payload_bytes)
            wire0 = m.payload_bytes + (n_full0 + 1) * ovh
            shapes.append((n_full0, last, wire0, wire0 * 8.0 / bw))
        for g, k, t0, c, r in ready:
            n_full, last, wire, transmit = shapes[k]
            t = (link_free if link_free > r else r) + transmit
            retx, wire_total, air = 0.0, wire, transmit
            last_out, rounds = True, 0
            while True:
                if p > 0.0:
                    n_full = sum(1 for _ in range(n_full) if rand() < p)
                    last_out = last_out and rand() < p
                else:
                    n_full, last_out = 0, False
                if not (n_full or last_out) or rounds == retries:
                    break
                rounds += 1
                wire = n_full * (cap + ovh) + (last + ovh if last_out else 0)
                dt = wire * 8.0 / bw
                t += rto + dt
                retx += rto + dt
                wire_total += wire
                air += dt
            link_free = t
            s.tx_s += air
            s.tx_bits += wire_total * 8.0
            if n_full or last_out:
                self._record(s, g, k, t0, t, c, transmit, retx, 0.0, 0.0, 0.0, True, wire_total)
                continue
            prop = s.delay + (s.jitter * rand() if s.jitter else 0.0)
            out.append((t + prop, (s, g, k, t0, c, transmit, retx, prop, wire_total)))
        return out

    def _feed(self, arrivals: list[tuple]):
        """Deliver closed-form arrivals to the broker in time order. While no other event is
        due before the next arrival, it is handled without a SimPy event (events only create
        events at or after their own time, so the order is exact)."""
        env, arrive = self.env, self._on_arrival
        for t, frame in arrivals:
            if env.peek() <= t:
                yield env.timeout(t - env.now)
            arrive(t, frame)

    def _send_all(self, s: LinkSender, w: Workload, ready: list):
        """The event-by-event sender: medium contention, loss rounds, duty cycle."""
        env, rto_s = self.env, s.link.rto_s
        for g, k, t0, c, r in ready:
            if r > env.now:
                yield env.timeout(r - env.now)
            plan = plan_frame(s, w.messages[k].payload_bytes)
            transmit, retx, wire_total = 0.0, 0.0, 0
            for i, (n_full, last_out) in enumerate(plan.rounds):
                if i:  # the lost packets of the previous round go again after the timeout
                    log.debug("device %s frame %d/%d: round %d resends %d packets", s.id, g, k,
                              i, n_full + int(last_out))
                    yield env.timeout(rto_s)
                    retx += rto_s
                # one round: the outstanding packets, back to back
                if s.lora is None:
                    wire = s.round_bytes(n_full, last_out, plan.last_bytes)
                    dt = wire * 8.0 / s.bw
                    yield from self._hold(s, dt)
                else:
                    sizes = s.round_sizes(n_full, last_out, plan.last_bytes)
                    wire, dt = sum(sizes), 0.0
                    for size in sizes:
                        yield from self._lora_packet(s, s.lora, size)
                        dt += s.lora.airtime_s(size)
                s.tx_s += dt
                s.tx_bits += wire * 8.0
                wire_total += wire
                if i == 0:
                    transmit = dt
                else:
                    retx += dt
            if plan.lost:
                self._record(s, g, k, t0, env.now, c, transmit, retx, 0.0, 0.0, 0.0, True,
                             wire_total)
                continue
            prop = s.propagation_s()
            ev = env.timeout(prop, (s, g, k, t0, c, transmit, retx, prop, wire_total))
            ev.callbacks.append(self._arrive)

    def _hold(self, s: LinkSender, dt: float):
        """Occupy the device's link for ``dt`` seconds, after the medium's earlier holders."""
        env, medium = self.env, s.medium
        if medium is None:
            yield env.timeout(dt)
        elif isinstance(medium, Medium):
            now = env.now
            yield env.timeout(medium.hold(now, dt) - now)
        else:
            with medium.request() as req:
                yield req
                yield env.timeout(dt)

    def _lora_packet(self, s: LinkSender, lora: LoraPhy, size: int):
        """Send one LoRa packet: wait for the duty cycle and the medium, then its airtime."""
        env = self.env
        if s.dc_free > env.now:
            yield env.timeout(s.dc_free - env.now)
        air = lora.airtime_s(size)
        yield from self._hold(s, air)
        s.dc_free = env.now + air * (1.0 / lora.duty_cycle - 1.0)

    def _arrive(self, event: simpy.Event) -> None:
        self._on_arrival(self.env.now, event.value)

    def _on_arrival(self, now: float, frame: tuple) -> None:
        """A frame reaches the broker at ``now``: FIFO broker, FIFO central, then the PUBACK."""
        s, g, k, t0, c, transmit, retx, prop, wire = frame
        b_free = self._broker_free
        b_done = (now if now > b_free else b_free) + self._broker_s
        c_free = self._central_free
        end = (b_done if b_done > c_free else c_free) + self._central_s
        self._broker_free, self._central_free = b_done, end
        self._record(s, g, k, t0, end, c, transmit, retx, prop, b_done - now, end - b_done,
                     False, wire)
        self._down_bytes += s.ack_bytes
        s.rx_bits += s.ack_bytes * 8.0
        if s.medium is None:
            s.rx_s += s.ack_s  # full-duplex dedicated downlink: no contention to model
        else:
            ev = self.env.timeout(b_done + s.delay - now, s)
            ev.callbacks.append(self._ack_fifo if isinstance(s.medium, Medium)
                                else self._ack_request)

    def _ack_fifo(self, event: simpy.Event) -> None:
        s = event.value
        s.medium.hold(self.env.now, s.ack_s)
        s.rx_s += s.ack_s

    # The PUBACK crosses the shared medium back to the device: request, hold, release, as
    # callbacks (the same events as a process, fewer of them).
    def _ack_request(self, event: simpy.Event) -> None:
        s = event.value
        req = s.medium.request()
        req.callbacks.append(functools.partial(self._ack_hold, s))

    def _ack_hold(self, s: LinkSender, req: simpy.Event) -> None:
        ev = self.env.timeout(s.ack_s, (s, req))
        ev.callbacks.append(self._ack_done)

    def _ack_done(self, event: simpy.Event) -> None:
        s, req = event.value
        s.medium.release(req)
        s.rx_s += s.ack_s

    def _record(self, s: LinkSender, g: int, k: int, t0: float, end: float, compute: float,
                transmit: float, retx: float, prop: float, broker: float, central: float,
                lost: bool, wire: int) -> None:
        queue = (end - t0) - (compute + transmit + retx + prop + broker + central)
        if end > self._last_end_s:
            self._last_end_s = end
        self._rows.append((s.dev, g, k, t0, end, compute, queue if queue > 0.0 else 0.0,
                           transmit, retx, prop, broker, central, lost, wire))

    def _result(self, horizon_s: float) -> NetworkResult:
        flat = itertools.chain.from_iterable(self._rows)
        table = np.fromiter(flat, np.float64, count=14 * len(self._rows)).reshape(-1, 14)
        table = table[np.lexsort((table[:, 2], table[:, 1], table[:, 0]))]
        ints = table[:, [0, 1, 2, 13]].astype(np.int64)
        frames = FrameRecords(
            device=ints[:, 0], gather=ints[:, 1], message=ints[:, 2], start_s=table[:, 3],
            end_s=table[:, 4], stages_s=table[:, 5:12], lost=table[:, 12].astype(bool),
            wire_bytes=ints[:, 3])
        energy = tuple(
            device_energy(s.id, s.radio, tx_s=s.tx_s, tx_bits=s.tx_bits, rx_s=s.rx_s,
                          rx_bits=s.rx_bits, compute_s=s.compute_s,
                          compute_w=self.topology.devices[s.dev].compute_w, horizon_s=horizon_s,
                          idle_state=self.topology.devices[s.dev].radio_idle_state)
            for s in self.senders)
        return NetworkResult(frames, energy, int(frames.wire_bytes.sum()), self._down_bytes,
                             horizon_s)
