"""Central intake as pure logic: frame validation, per-gather assembly with a deadline, counters.

Nothing here touches MQTT, files or a clock of its own: callers pass ``now_s`` (any monotonic
clock, seconds) and ``receive_ns`` (wall clock, ns since the Unix epoch), so the unit tests
drive it with a fake clock.

A gather is keyed by ``(mode, gather_id)``; ``mode`` is ``"latent"`` (Kind.LATENT) or
``"raw"`` (Kind.RAW_CHUNK), so both modes can run over the same topology in one run. Its
deadline is ``deadline_s`` after its first accepted frame. A device is *present* once all of
its chunks are in. A gather closes when every expected device is present (``add`` returns it)
or at the deadline with whichever devices are present (``expired`` returns it); a gather with
no present device is dropped, never decoded. Frames for a closed gather are ``late``.

Frames known to be in flight (docs/wire-format.md, "Delivery"): after a broker restart every
device sends again what central has not confirmed, so the caller calls ``extend`` when its own
connection comes back (every open gather) and when a device reconnects (the open gathers that
device has not completed): their deadline becomes ``deadline_s`` after that moment, but never
later than ``max_open_s`` after the gather's first frame.

``take_confirmations`` hands out what central is done with, per device, for the end-to-end
confirmations (epic.wire.ack): a device's part of a gather once all its chunks are in, and
every device's part once the gather is closed.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from epic.wire import (
    HEADER_BYTES,
    Channel,
    Deduplicator,
    Dtype,
    Frame,
    FrameError,
    Kind,
    Reason,
    check_chunk,
    check_topic,
    device_name,
    parse_topic,
)

__all__ = [
    "MODE_OF_KIND",
    "Assembler",
    "DeviceParts",
    "FrameValidator",
    "Gather",
    "RejectionLog",
]

log = logging.getLogger(__name__)

MODE_OF_KIND = {Kind.LATENT: "latent", Kind.RAW_CHUNK: "raw"}
"""Assembly mode of each frame kind a device may send."""

_LATENT_DTYPES = frozenset({Dtype.INT8, Dtype.UINT8, Dtype.FLOAT16, Dtype.FLOAT32})
_RAW_DTYPES = frozenset({Dtype.FLOAT16, Dtype.FLOAT32, Dtype.FLOAT64})


@dataclass(frozen=True)
class FrameValidator:
    """Checks one MQTT message (topic + payload) against the wire format, topology and models.

    Attributes:
        receivers: device id -> receiver count, for every device in the topology.
        latent_shape: the (rx_per_device, token_dim) a latent frame must have (one chunk).
        raw_time_samples: time samples per trace; a raw gather is (n_shots, this, receivers).
        raw_shots: shots per gather.
    """

    receivers: Mapping[int, int]
    latent_shape: tuple[int, int] = (14, 64)
    raw_time_samples: int = 1000
    raw_shots: int = 5

    def validate(self, topic: str, payload: bytes) -> Frame:
        """Return the frame, or raise FrameError with the first failing Reason.

        Order: Frame.decode reasons, bad_topic, wrong_topic (device or kind differs from the
        topic), unknown_device, shape_mismatch (shape, dtype or chunking the models cannot
        take), bad_quant (non-finite float values).
        """
        frame = Frame.decode(payload)
        parsed = parse_topic(topic)
        if parsed.channel not in (Channel.LATENT, Channel.RAW):
            raise FrameError(Reason.WRONG_TOPIC, f"frame on {parsed.channel} topic {topic}")
        check_topic(frame, parsed)
        if frame.device_id not in self.receivers:
            raise FrameError(Reason.UNKNOWN_DEVICE, f"{device_name(frame.device_id)} is not in "
                             f"the topology")
        if frame.kind is Kind.LATENT:
            if (frame.shape != self.latent_shape or frame.chunk_count != 1
                    or frame.dtype not in _LATENT_DTYPES):
                raise FrameError(Reason.SHAPE_MISMATCH, f"latent {frame.shape} "
                                 f"{frame.dtype.name} in {frame.chunk_count} chunks, model "
                                 f"takes {self.latent_shape} in 1")
        else:
            expected = (self.raw_shots, self.raw_time_samples, self.receivers[frame.device_id])
            if frame.shape != expected or frame.dtype not in _RAW_DTYPES:
                raise FrameError(Reason.SHAPE_MISMATCH, f"raw {frame.shape} "
                                 f"{frame.dtype.name}, expected {expected} float")
        if frame.dtype in (Dtype.FLOAT16, Dtype.FLOAT32, Dtype.FLOAT64) and not np.isfinite(
                frame.array()).all():
                raise FrameError(Reason.BAD_QUANT, f"non-finite values in {frame.key}")
        return frame


@dataclass(frozen=True)
class DeviceParts:
    """All accepted frames of one device for one gather.

    Attributes:
        device_id: the sender's integer id.
        frames: the chunks, in chunk_index order once complete.
        receive_ns: central's receive time of each frame (same order), ns since the epoch.
        wire_bytes: sum of the frames' sizes on the wire (header + payload), bytes.
    """

    device_id: int
    frames: tuple[Frame, ...]
    receive_ns: tuple[int, ...]
    wire_bytes: int

    @property
    def stamps_ns(self) -> dict[str, int]:
        """capture/encode_end from the first chunk, publish/receive of the last, in ns."""
        first = self.frames[0]
        return {"capture_ns": first.capture_ns, "encode_end_ns": first.encode_end_ns,
                "publish_ns": max(f.publish_ns for f in self.frames),
                "first_receive_ns": min(self.receive_ns), "receive_ns": max(self.receive_ns)}


@dataclass
class _Pending:
    first_s: float
    first_receive_ns: int
    deadline_s: float  # caller clock (s) at which the gather closes regardless
    chunks: dict[int, dict[int, tuple[Frame, int]]] = field(default_factory=dict)
    present: set[int] = field(default_factory=set)
    extended: int = 0  # times ``extend`` moved the deadline


@dataclass(frozen=True)
class Gather:
    """A closed gather, ready to decode.

    Attributes:
        mode: "latent" or "raw".
        gather_id: shot-gather id.
        devices: device id -> parts, for every present (complete) device, sorted by id.
        incomplete: ids of devices that sent some chunks but not all (treated as absent).
        first_s, closed_s: caller clock (s) of the first frame and of closing.
        at_deadline: True if closed by the deadline, False if every device arrived.
        extended: how many times the deadline was moved for frames in flight (``extend``).
    """

    mode: str
    gather_id: int
    devices: Mapping[int, DeviceParts]
    incomplete: tuple[int, ...]
    first_s: float
    closed_s: float
    at_deadline: bool
    extended: int = 0


class Assembler:
    """Assembles accepted frames into gathers; detects duplicates and late frames.

    Args:
        device_ids: every device the topology expects (a gather is complete with all).
        deadline_s: seconds after a gather's first frame at which it closes regardless.
        memory: how many closed gathers (for ``late``) and frame keys per mode (for
            ``duplicate``) are remembered.
        max_open_s: ``extend`` never keeps a gather open longer than this after its first
            frame (default: 10 x ``deadline_s``).
    """

    def __init__(self, device_ids: Sequence[int], deadline_s: float,
                 memory: int = 100_000, max_open_s: float | None = None) -> None:
        if not device_ids or len(set(device_ids)) != len(device_ids):
            raise ValueError(f"device_ids must be non-empty and unique, got {device_ids}")
        if not (deadline_s > 0 and math.isfinite(deadline_s)):
            raise ValueError(f"deadline_s must be finite and > 0, got {deadline_s}")
        max_open_s = 10 * deadline_s if max_open_s is None else max_open_s
        if not (max_open_s >= deadline_s and math.isfinite(max_open_s)):
            raise ValueError(f"max_open_s must be finite and >= deadline_s ({deadline_s}), "
                             f"got {max_open_s}")
        self.device_ids = frozenset(device_ids)
        self.deadline_s = float(deadline_s)
        self.max_open_s = float(max_open_s)
        self._confirmations: list[tuple[int, str, int]] = []  # (device, mode, gather)
        self._dropped_gathers: list[Gather] = []
        self._memory = memory
        self._seen = {mode: Deduplicator(memory) for mode in MODE_OF_KIND.values()}
        self._pending: dict[tuple[str, int], _Pending] = {}
        self._closed: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.dropped = 0  # gathers closed at the deadline with no complete device

    @property
    def pending(self) -> int:
        """Gathers still open."""
        return len(self._pending)

    def next_deadline_s(self) -> float | None:
        """The earliest deadline of an open gather (caller clock, s), or None."""
        if not self._pending:
            return None
        return min(p.deadline_s for p in self._pending.values())

    def extend(self, now_s: float, device_id: int | None = None) -> int:
        """Frames are known to be in flight: give open gathers ``deadline_s`` from ``now_s``.

        ``device_id``: only the gathers that device has not completed (it reconnected); None:
        every open gather (central's own connection came back). A deadline never moves
        earlier, nor past ``max_open_s`` after the gather's first frame. Returns how many
        gathers' deadlines moved.
        """
        moved = 0
        for pending in self._pending.values():
            if device_id is not None and device_id in pending.present:
                continue
            new_s = min(now_s + self.deadline_s, pending.first_s + self.max_open_s)
            if new_s > pending.deadline_s:
                pending.deadline_s = new_s
                pending.extended += 1
                moved += 1
        return moved

    def take_confirmations(self) -> list[tuple[int, str, int]]:
        """(device id, mode, gather id) central is done with since the last call."""
        out, self._confirmations = self._confirmations, []
        return out

    def add(self, frame: Frame, receive_ns: int, now_s: float) -> Gather | None:
        """Accept one validated frame; return its gather if this frame completed it.

        Raises FrameError: DUPLICATE (key seen before in this mode), LATE (gather already
        closed), SHAPE_MISMATCH (chunk disagrees with the device's earlier chunks).
        """
        mode = MODE_OF_KIND[frame.kind]
        key = (mode, frame.gather_id)
        seen = self._seen[mode]
        if seen.seen(frame.key):
            raise FrameError(Reason.DUPLICATE, f"{mode} frame {frame.key} seen before")
        if key in self._closed:
            raise FrameError(Reason.LATE, f"{mode} gather {frame.gather_id} already closed")
        pending = self._pending.get(key)
        chunks = {} if pending is None else pending.chunks.get(frame.device_id, {})
        if chunks:
            check_chunk(next(iter(chunks.values()))[0], frame)
        seen.remember(frame.key)  # recorded only once every check has passed
        if pending is None:
            pending = self._pending[key] = _Pending(now_s, receive_ns, now_s + self.deadline_s)
        chunks = pending.chunks.setdefault(frame.device_id, {})
        chunks[frame.chunk_index] = (frame, receive_ns)
        if len(chunks) == frame.chunk_count:
            pending.present.add(frame.device_id)
            self._confirmations.append((frame.device_id, mode, frame.gather_id))
            if pending.present >= self.device_ids:
                return self._close(key, now_s, at_deadline=False)
        return None

    def expired(self, now_s: float) -> list[Gather]:
        """Close every gather whose deadline has passed; return those with a present device.

        Gathers with no complete device are dropped (counted in ``dropped``).
        """
        due = [k for k, p in self._pending.items() if now_s >= p.deadline_s]
        closed = [self._close(key, now_s, at_deadline=True) for key in due]
        ready = [g for g in closed if g.devices]
        self._dropped_gathers.extend(g for g in closed if not g.devices)
        self.dropped += len(closed) - len(ready)
        return ready

    def take_dropped(self) -> list[Gather]:
        """The gathers dropped (no complete device at the deadline) since the last call."""
        out, self._dropped_gathers = self._dropped_gathers, []
        return out

    def flush(self, now_s: float) -> list[Gather]:
        """Close every open gather now (shutdown); same rules as ``expired``."""
        return self.expired(math.inf) if self._pending else []

    def _close(self, key: tuple[str, int], now_s: float, at_deadline: bool) -> Gather:
        pending = self._pending.pop(key)
        self._closed[key] = None
        self._confirmations.extend((d, key[0], key[1]) for d in sorted(self.device_ids)
                                   if d not in pending.present)
        if len(self._closed) > self._memory:
            self._closed.popitem(last=False)
        devices = {}
        for device_id in sorted(pending.present):
            parts = [pending.chunks[device_id][i] for i in sorted(pending.chunks[device_id])]
            frames = tuple(f for f, _ in parts)
            devices[device_id] = DeviceParts(device_id, frames, tuple(r for _, r in parts),
                                             sum(HEADER_BYTES + len(f.payload) for f in frames))
        incomplete = tuple(sorted(set(pending.chunks) - pending.present))
        closed_s = now_s if math.isfinite(now_s) else pending.deadline_s
        return Gather(key[0], key[1], devices, incomplete, pending.first_s, closed_s,
                      at_deadline, pending.extended)


class RejectionLog:
    """Counts rejections by reason and logs each reason at most once per ``interval_s``.

    The caller passes its clock; a log line says how many of that reason were suppressed
    since the previous line.
    """

    def __init__(self, interval_s: float = 5.0, logger: logging.Logger = log) -> None:
        self.interval_s = interval_s
        self.counts: dict[str, int] = {}
        self._last_log_s: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._log = logger

    @property
    def total(self) -> int:
        """All rejections so far."""
        return sum(self.counts.values())

    def reject(self, reason: Reason | str, message: str, now_s: float) -> bool:
        """Count one rejection; log it unless this reason was logged within the interval.

        Returns whether a line was logged.
        """
        name = str(reason)
        self.counts[name] = self.counts.get(name, 0) + 1
        last = self._last_log_s.get(name)
        if last is not None and now_s - last < self.interval_s:
            self._suppressed[name] = self._suppressed.get(name, 0) + 1
            return False
        suppressed = self._suppressed.pop(name, 0)
        self._last_log_s[name] = now_s
        self._log.warning("rejected frame (%s): %s%s", name, message,
                          f" [+{suppressed} more since last report]" if suppressed else "")
        return True
