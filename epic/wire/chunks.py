"""Chunking and reassembly of arrays over wire frames, and de-duplication by frame key.

`split_array` cuts an array (e.g. a (5, 1000, 14) float32 raw gather) into frames of at most
``max_payload_bytes`` of payload; `Reassembler` collects the chunks of each
(device_id, gather_id) and gives the whole array back; `Deduplicator` remembers the
(device_id, gather_id, chunk_index) keys seen, so a QoS 1 redelivery counts once.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from epic.errors import InputError
from epic.wire.frame import Dtype, Frame, FrameError, Kind, Reason, chunk_elements

__all__ = ["DEFAULT_CHUNK_PAYLOAD_BYTES", "Deduplicator", "Reassembler", "split_array"]

DEFAULT_CHUNK_PAYLOAD_BYTES = 65_536


def split_array(kind: Kind, device_id: int, gather_id: int, array: np.ndarray,
                max_payload_bytes: int = DEFAULT_CHUNK_PAYLOAD_BYTES, **header: float) -> list[
                    Frame]:
    """Split ``array`` (e.g. a (5, 1000, 14) float32 gather) into frames of at most
    ``max_payload_bytes`` of payload each. ``header`` passes scale/zero_point/timestamps."""
    array = np.ascontiguousarray(array)
    dtype = Dtype.from_numpy(array.dtype)
    flat = array.astype(dtype.numpy, copy=False).reshape(-1)
    per_chunk = max_payload_bytes // dtype.itemsize
    if per_chunk < 1 or array.size == 0:
        raise InputError(f"cannot split {array.shape} {array.dtype} into "
                         f"{max_payload_bytes}-byte payloads (split_array)")
    count = -(-flat.size // per_chunk)
    frames = []
    for index in range(count):
        start, stop = chunk_elements(flat.size, count, index)
        frames.append(Frame(kind, device_id, gather_id, dtype, array.shape,
                            flat[start:stop].tobytes(), index, count, **header))
    return frames


class Deduplicator:
    """Remembers the last ``capacity`` (device_id, gather_id, chunk_index) keys seen."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise InputError(f"Deduplicator capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._seen: OrderedDict[tuple[int, int, int], None] = OrderedDict()

    def is_new(self, frame: Frame) -> bool:
        """True the first time ``frame.key`` is seen, False for a duplicate."""
        if frame.key in self._seen:
            self._seen.move_to_end(frame.key)
            return False
        self._seen[frame.key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True


class Reassembler:
    """Collects the chunks of each (device_id, gather_id) and returns the whole array."""

    def __init__(self, dedup: Deduplicator | None = None) -> None:
        self._dedup = dedup or Deduplicator()
        self._parts: dict[tuple[int, int], dict[int, Frame]] = {}

    def add(self, frame: Frame) -> np.ndarray | None:
        """Add one chunk; return the array of ``frame.shape`` once all chunks are in.

        Raise FrameError(DUPLICATE) for a key seen before, and FrameError(SHAPE_MISMATCH) if
        the chunk disagrees with earlier chunks of its gather on kind, dtype, shape or count.
        """
        if not self._dedup.is_new(frame):
            raise FrameError(Reason.DUPLICATE, f"duplicate frame {frame.key}")
        parts = self._parts.setdefault((frame.device_id, frame.gather_id), {})
        if parts:
            first = next(iter(parts.values()))
            if (first.kind, first.dtype, first.shape, first.chunk_count) != (
                    frame.kind, frame.dtype, frame.shape, frame.chunk_count):
                raise FrameError(Reason.SHAPE_MISMATCH, f"chunk {frame.key} disagrees with "
                                 f"its gather: {frame.shape} {frame.dtype.name}")
        parts[frame.chunk_index] = frame
        if len(parts) < frame.chunk_count:
            return None
        del self._parts[(frame.device_id, frame.gather_id)]
        payload = b"".join(parts[i].payload for i in range(frame.chunk_count))
        return np.frombuffer(payload, dtype=frame.dtype.numpy).reshape(frame.shape)

    def pending(self) -> list[tuple[int, int]]:
        """The (device_id, gather_id) pairs still missing chunks."""
        return list(self._parts)
