"""A seeded SimPy model of the devices' links, the broker and the central node.

Each device sends, per shot-gather, a sequence of messages (one latent frame in EPIC mode, a
few raw chunks in centralized mode) over its link. Per message:

1. compute: ``compute_s × scale`` on the device CPU (one message at a time; ``scale`` is the
   device's hardware class's ``compute_scale``, or its ``cpu_scale`` without a class);
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

The live proxy (`emulation.proxy`, via `emulation.shaper`) runs the same link kernel
(`emulation.network.link`): `LinkSender` (link, radio, random stream, energy books, the wire
bytes and airtime of a round), `segment` (packets of a payload), `draw_resends` and
`plan_frame` (loss rounds) and `Medium` (the FIFO server), in wall-clock time. The model's
closed form and its event-by-event path use the same kernel, so segmentation and the loss
rounds are written once.

The package, by concern (import from ``emulation.network``; every name is re-exported here):

- `emulation.network.records`: the inputs `Message`, `Workload` and the outputs `STAGES`,
  `FrameRecords`, `NetworkResult`;
- `emulation.network.link`: the link kernel, `segment`, `draw_resends`, `plan_frame`,
  `FramePlan`, `LinkSender`, `Medium` (one device's link, loss rounds and energy books; the
  live proxy uses them too);
- `emulation.network.model`: `NetworkModel`, the SimPy driver.
"""

from emulation.network.link import (
    FramePlan,
    LinkSender,
    Medium,
    draw_resends,
    plan_frame,
    segment,
)
from emulation.network.model import NetworkModel
from emulation.network.records import STAGES, FrameRecords, Message, NetworkResult, Workload

__all__ = ["STAGES", "FramePlan", "FrameRecords", "LinkSender", "Medium", "Message", "NetworkModel",
           "NetworkResult", "Workload", "draw_resends", "plan_frame", "segment"]
