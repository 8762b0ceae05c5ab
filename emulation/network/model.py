"""`NetworkModel`: the SimPy driver of the network model (see `emulation.network`).

Dedicated links in closed form, everything else event by event; the broker and central as
closed-form FIFO servers; the PUBACK back over the link; the per-frame records and the energy
books turned into a `NetworkResult`. Segmentation and loss rounds come from the link kernel
(`emulation.network.link`), as in the live proxy.

The per-frame records are named by NamedTuples: `_Ready` (when a frame may go), `_InFlight`
(a frame on its way to the broker) and `_Row` (how it ended: the result table's columns).
The records themselves are plain tuples in those layouts, built in one place each and
unpacked into named locals; the result table picks its columns by name. A 1,000-device run
holds hundreds of thousands of them, and a plain tuple of numbers is one the garbage
collector stops tracking, where a NamedTuple instance stays tracked and slows every
collection: 12 % of the run on dedicated links (bench/bench_network.py).
"""

from __future__ import annotations

import functools
import gc
import heapq
import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import numpy as np
import simpy

from emulation.energy import LoraPhy, device_energy, radio_energy
from emulation.network.link import DELIVERED, LinkSender, Medium, draw_resends, plan_frame, segment
from emulation.network.records import STAGES, FrameRecords, NetworkResult, Workload
from epic.topology import Topology

__all__ = ["NetworkModel"]

log = logging.getLogger(__name__)

class _Ready(NamedTuple):
    """When one frame is ready to send (the device CPU runs one message at a time). The
    layout of the tuples `NetworkModel._ready_times` yields."""

    gather: int
    message: int
    start_s: float  # the gather became available
    compute_s: float  # compute duration on this device
    ready_s: float  # compute done: the frame may go


class _InFlight(NamedTuple):
    """A frame handed to the broker (or given up on): its link stages so far. The layout of
    the frame tuples the senders hand to `NetworkModel._on_arrival` and `_record`."""

    device: int
    gather: int
    message: int
    start_s: float
    compute_s: float
    transmit_s: float  # first round on the air
    retransmission_s: float  # resent rounds, their timeouts included
    propagation_s: float
    wire_bytes: int  # every round, headers included


class _Row(NamedTuple):
    """One frame's record: the fields of `_InFlight`, then how it ended. The column layout
    of the result table (rows are plain tuples in this layout: ``frame + (end_s, ...)``)."""

    device: int
    gather: int
    message: int
    start_s: float
    compute_s: float
    transmit_s: float
    retransmission_s: float
    propagation_s: float
    wire_bytes: int
    end_s: float  # central done with it, or the frame given up
    queue_s: float  # waiting not booked to any other stage
    broker_s: float
    central_s: float
    lost: bool


_COLUMN = {name: i for i, name in enumerate(_Row._fields)}
_IN_FLIGHT_DEVICE = _InFlight._fields.index("device")
assert _Row._fields[:len(_InFlight._fields)] == _InFlight._fields  # a row extends its frame
_STAGE_COLUMNS = [_COLUMN[f"{stage}_s"] for stage in STAGES]


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
        self.env = _Environment()
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
            self.senders.append(LinkSender(i, d.id, link, radio_energy(d.energy),
                                        topology.compute_of(d)[0], medium, seed))
        self._broker_s = topology.broker.processing_s
        self._central_s = topology.central.processing_s
        self._broker_free_s = self._central_free_s = 0.0
        self._rows: list[tuple] = []  # laid out as _Row
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
        arrivals: list[tuple[float, tuple]] = []  # (broker arrival time, _InFlight frame)
        # the run makes hundreds of thousands of records and events, and no garbage cycle
        # worth a collection: collecting them as they go costs 10-15 % of the run
        collecting = gc.isenabled()
        gc.disable()
        try:
            for s in self.senders:
                ready = self._ready_times(s, workload)
                if s.fast and self._closed_form_ok:
                    arrivals += self._closed_form(s, workload, ready)
                elif isinstance(s.medium, Medium) and s.lora is None:
                    self.env.process(self._send_fifo(s, workload, ready))
                else:
                    self.env.process(self._send_all(s, workload, ready))
            if arrivals:
                arrivals.sort(key=_arrival_time)
                self.env.process(self._feed(arrivals))
            self.env.run()
        finally:
            if collecting:
                gc.enable()
        busy_s = [m.free_s for m in self._media.values() if isinstance(m, Medium)]
        horizon_s = max(self.env.now, self._last_end_s, workload.gathers * workload.interval_s,
                        *busy_s)
        return self._result(horizon_s)

    @staticmethod
    def _ready_times(s: LinkSender, w: Workload) -> Iterator[tuple]:
        """When each frame is ready, in order, as `_Ready` tuples (gather, message, start_s,
        compute_s, ready_s); the device CPU runs one message at a time (booked in
        ``s.compute_s`` as the frames are taken)."""
        cpu_free_s = 0.0
        for gather in range(w.gathers):
            start_s = gather * w.interval_s
            for message, m in enumerate(w.messages):
                compute_s = m.compute_s * s.cpu_scale
                cpu_free_s = max(cpu_free_s, start_s) + compute_s
                s.compute_s += compute_s
                yield gather, message, start_s, compute_s, cpu_free_s

    def _closed_form(self, s: LinkSender, w: Workload,
                     ready: Iterable[tuple]) -> list[tuple[float, tuple]]:
        """A dedicated link in closed form: its (broker arrival time, frame) list.

        The same kernel (`segment`, `draw_resends`, `LinkSender.round_wire`) and the same draws
        from the device's stream as `_send_all`, without events: nobody else uses the link, so
        nothing can change the outcome.
        """
        out, link_free_s, rand = [], 0.0, s.rand
        loss, rto_s, retries = s.link.loss, s.link.rto_s, s.link.max_retries
        first_rounds = []  # per message: (full packets, last payload, wire bytes, airtime)
        for m in w.messages:
            n_full, last_bytes = segment(m.payload_bytes, s.payload_cap_bytes)
            first_rounds.append((n_full, last_bytes, *s.round_wire(n_full, True, last_bytes)))
        for gather, message, start_s, compute_s, ready_s in ready:
            n_full, last_bytes, wire_total, transmit_s = first_rounds[message]
            t = (link_free_s if link_free_s > ready_s else ready_s) + transmit_s
            retx_s, air_s = 0.0, transmit_s
            resends, lost = (draw_resends(n_full, loss, retries, rand) if loss > 0.0
                             else DELIVERED)
            for resent_full, last_out in resends:
                wire, dt = s.round_wire(resent_full, last_out, last_bytes)
                t += rto_s + dt
                retx_s += rto_s + dt
                wire_total += wire
                air_s += dt
            link_free_s = t
            s.tx_s += air_s
            s.tx_bits += wire_total * 8.0
            if lost:
                frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s, 0.0,
                         wire_total)  # an _InFlight
                self._record(frame, t, 0.0, 0.0, True)
                continue
            prop_s = s.delay_s + (s.jitter_s * rand() if s.jitter_s else 0.0)
            frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s, prop_s,
                     wire_total)  # an _InFlight
            out.append((t + prop_s, frame))
        return out

    def _feed(self, arrivals: list[tuple[float, tuple]]):
        """Deliver closed-form arrivals to the broker in time order. While no other event is
        due before the next arrival, it is handled without a SimPy event (events only create
        events at or after their own time, so the order is exact)."""
        env, arrive = self.env, self._on_arrival
        for t, frame in arrivals:
            if env.peek() <= t:
                yield env.timeout(t - env.now)
            arrive(t, frame)

    def _send_all(self, s: LinkSender, w: Workload, ready: Iterable[tuple]):
        """The event-by-event sender: medium contention, loss rounds, duty cycle."""
        env, rto_s = self.env, s.link.rto_s
        for gather, message, start_s, compute_s, ready_s in ready:
            if ready_s > env.now:
                yield env.timeout(ready_s - env.now)
            plan = plan_frame(s, w.messages[message].payload_bytes)
            transmit_s, retx_s, wire_total = 0.0, 0.0, 0
            for i, (n_full, last_out) in enumerate(plan.rounds):
                if i:  # the lost packets of the previous round go again after the timeout
                    log.debug("device %s frame %d/%d: round %d resends %d packets", s.device_id,
                              gather, message, i, n_full + int(last_out))
                    yield env.timeout(rto_s)
                    retx_s += rto_s
                # one round: the outstanding packets, back to back
                wire, dt = s.round_wire(n_full, last_out, plan.last_bytes)
                if s.lora is None:
                    yield from self._hold(s, dt)
                else:
                    for size in s.round_sizes(n_full, last_out, plan.last_bytes):
                        yield from self._lora_packet(s, s.lora, size)
                s.book_tx(wire, dt)
                wire_total += wire
                if i == 0:
                    transmit_s = dt
                else:
                    retx_s += dt
            if plan.lost:
                frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s, 0.0,
                         wire_total)  # an _InFlight
                self._record(frame, env.now, 0.0, 0.0, True)
                continue
            prop_s = s.propagation_s()
            frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s, prop_s,
                     wire_total)  # an _InFlight
            ev = env.timeout(prop_s, frame)
            ev.callbacks.append(self._arrive)

    def _send_fifo(self, s: LinkSender, w: Workload, ready: Iterable[tuple]):
        """`_send_all` for a sender on a closed-form shared medium (`Medium`, not LoRa), with
        one SimPy event fewer per frame and the same results.

        The hold of a frame's last round ends at a time known when it starts, so nothing
        waits for it: at its start the frame's arrival at the broker and the sender's next
        wake-up (its next frame's ready time, or the end of the hold if that frame is already
        due) are scheduled at once, each at the exact time `_send_all`'s events have
        (`_Environment.at`). The wake-ups are scheduled in the order of the holds, and the holds end
        in that order (FIFO), so wake-ups at equal times come in `_send_all`'s order.
        """
        env, rto_s, medium = self.env, s.link.rto_s, s.medium
        upcoming = iter(ready)
        item = next(upcoming, None)
        if item is not None and item[4] > env.now:
            yield env.timeout(item[4] - env.now)
        while item is not None:
            gather, message, start_s, compute_s, _ = item
            plan = plan_frame(s, w.messages[message].payload_bytes)
            transmit_s, retx_s, wire_total, last = 0.0, 0.0, 0, len(plan.rounds) - 1
            held_s = env.now
            for i, (n_full, last_out) in enumerate(plan.rounds):
                if i:  # the lost packets of the previous round go again after the timeout
                    yield env.timeout(rto_s)
                    retx_s += rto_s
                wire, dt = s.round_wire(n_full, last_out, plan.last_bytes)
                now = env.now
                end_s = medium.hold(now, dt)
                held_s = now + (end_s - now)  # when `_send_all`'s hold would end
                if i < last:
                    yield env.timeout(end_s - now)
                s.book_tx(wire, dt)
                wire_total += wire
                if i == 0:
                    transmit_s = dt
                else:
                    retx_s += dt
            if plan.lost:
                frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s, 0.0,
                         wire_total)  # an _InFlight
                self._record(frame, held_s, 0.0, 0.0, True)
            else:
                prop_s = s.propagation_s()
                frame = (s.index, gather, message, start_s, compute_s, transmit_s, retx_s,
                         prop_s, wire_total)  # an _InFlight
                ev = env.at(held_s + prop_s, frame)
                ev.callbacks.append(self._arrive)
            item = next(upcoming, None)
            if item is not None:
                ready_s = item[4]
                wake_s = held_s + (ready_s - held_s) if ready_s > held_s else held_s
                yield env.at(wake_s)

    def _hold(self, s: LinkSender, dt_s: float):
        """Occupy the device's link for ``dt_s`` seconds, after the medium's earlier holders."""
        env, medium = self.env, s.medium
        if medium is None:
            yield env.timeout(dt_s)
        elif isinstance(medium, Medium):
            now = env.now
            yield env.timeout(medium.hold(now, dt_s) - now)
        else:
            with medium.request() as req:
                yield req
                yield env.timeout(dt_s)

    def _lora_packet(self, s: LinkSender, lora: LoraPhy, size: int):
        """Send one LoRa packet: wait for the duty cycle and the medium, then its airtime."""
        env = self.env
        if s.duty_free_s > env.now:
            yield env.timeout(s.duty_free_s - env.now)
        air_s = lora.airtime_s(size)
        yield from self._hold(s, air_s)
        s.lora_sent(env.now, air_s)

    def _arrive(self, event: simpy.Event) -> None:
        self._on_arrival(self.env.now, event.value)

    def _on_arrival(self, now: float, frame: tuple) -> None:
        """A frame reaches the broker at ``now``: FIFO broker, FIFO central, then the PUBACK."""
        b_free_s = self._broker_free_s
        broker_done_s = (now if now > b_free_s else b_free_s) + self._broker_s
        c_free_s = self._central_free_s
        end_s = (broker_done_s if broker_done_s > c_free_s else c_free_s) + self._central_s
        self._broker_free_s, self._central_free_s = broker_done_s, end_s
        self._record(frame, end_s, broker_done_s - now, end_s - broker_done_s, False)
        s = self.senders[frame[_IN_FLIGHT_DEVICE]]
        self._down_bytes += s.ack_wire_bytes
        s.rx_bits += s.ack_wire_bytes * 8.0
        if s.medium is None:
            s.rx_s += s.ack_s  # full-duplex dedicated downlink: no contention to model
        else:
            ev = self.env.timeout(broker_done_s + s.delay_s - now, s)
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

    def _record(self, frame: tuple, end_s: float, broker_s: float, central_s: float,
                lost: bool) -> None:
        """Book one frame that ended at ``end_s``; its queueing is whatever time no stage
        accounts for."""
        _, _, _, start_s, compute_s, transmit_s, retx_s, prop_s, _ = frame
        queue_s = (end_s - start_s) - (compute_s + transmit_s + retx_s + prop_s + broker_s
                                       + central_s)
        if end_s > self._last_end_s:
            self._last_end_s = end_s
        self._rows.append(frame + (end_s, queue_s if queue_s > 0.0 else 0.0, broker_s,  # noqa: RUF005
                                   central_s, lost))

    def _result(self, horizon_s: float) -> NetworkResult:
        width = len(_Row._fields)
        flat = itertools.chain.from_iterable(self._rows)
        table = np.fromiter(flat, np.float64, count=width * len(self._rows)).reshape(-1, width)
        table = table[np.lexsort((table[:, _COLUMN["message"]], table[:, _COLUMN["gather"]],
                                  table[:, _COLUMN["device"]]))]
        ints = table[:, [_COLUMN["device"], _COLUMN["gather"], _COLUMN["message"],
                         _COLUMN["wire_bytes"]]].astype(np.int64)
        frames = FrameRecords(
            device=ints[:, 0], gather=ints[:, 1], message=ints[:, 2],
            start_s=table[:, _COLUMN["start_s"]], end_s=table[:, _COLUMN["end_s"]],
            stages_s=table[:, _STAGE_COLUMNS], lost=table[:, _COLUMN["lost"]].astype(bool),
            wire_bytes=ints[:, 3])
        energy = []
        for s in self.senders:
            device = self.topology.devices[s.index]
            _, active_w, idle_w = self.topology.compute_of(device)  # its hardware class
            energy.append(device_energy(
                s.device_id, s.radio, tx_s=s.tx_s, tx_bits=s.tx_bits, rx_s=s.rx_s,
                rx_bits=s.rx_bits, compute_s=s.compute_s, compute_w=active_w,
                compute_idle_w=idle_w, horizon_s=horizon_s,
                idle_state=device.radio_idle_state))
        return NetworkResult(frames, tuple(energy), int(frames.wire_bytes.sum()),
                             self._down_bytes,
                             horizon_s)


def _arrival_time(arrival: tuple[float, tuple]) -> float:
    return arrival[0]



class _Environment(simpy.Environment):
    """SimPy's environment, plus events at an absolute time (`at`): a timeout fires at
    ``now + delay``, and no delay may land exactly on a time computed from another event's."""

    def at(self, at_s: float, value: object = None) -> simpy.Event:
        """An event that fires at ``at_s`` (>= now) with ``value``, in the queue's usual
        order (time, priority, then the order events were scheduled)."""
        return _At(self, at_s, value)


class _At(simpy.Event):
    """A triggered event at an absolute time: a `simpy.Timeout` without the delay."""

    def __init__(self, env: _Environment, at_s: float, value: object) -> None:
        super().__init__(env)
        self._ok = True
        self._value = value
        heapq.heappush(env._queue, (at_s, simpy.events.NORMAL, next(env._eid), self))
