"""`NetworkModel`: the SimPy driver of the network model (see `emulation.network`).

Dedicated links in closed form, everything else event by event; the broker and central as
closed-form FIFO servers; the PUBACK back over the link; the per-frame records and the energy
books turned into a `NetworkResult`.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math

import numpy as np
import simpy

from emulation.energy import LoraPhy, device_energy, radio_energy
from emulation.network.link import LinkSender, Medium, plan_frame
from emulation.network.records import FrameRecords, NetworkResult, Workload
from epic.topology import Topology

__all__ = ["NetworkModel"]

log = logging.getLogger(__name__)


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
