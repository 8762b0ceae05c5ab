"""Chunking and reassembly of arrays over wire frames, and de-duplication by frame key.

`split_array` cuts an array (e.g. a (5, 1000, 14) float32 raw gather) into frames of at most
``max_payload_bytes`` of payload; `Reassembler` collects the chunks of each
(device_id, gather_id) and gives the whole array back; `Deduplicator` remembers the
(device_id, gather_id, chunk_index) keys seen, so a QoS 1 redelivery counts once.

`Reassembler` is built from three pieces that central's assembler (which keeps receive times
and a deadline per gather) uses too: `Deduplicator` (a bounded LRU of keys), `check_chunk`
(a chunk agrees with the earlier chunks of its array) and `join_chunks` (the chunks, in
order, back into the array).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import numpy as np

from epic.errors import InputError
from epic.wire.frame import Dtype, Frame, FrameError, Kind, Reason, chunk_elements

__all__ = ["DEFAULT_CHUNK_PAYLOAD_BYTES", "Deduplicator", "Reassembler", "check_chunk",
           "join_chunks", "split_array"]

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


def check_chunk(first: Frame, frame: Frame) -> None:
    """Raise FrameError(SHAPE_MISMATCH) unless ``frame`` agrees with ``first``, an earlier
    chunk of the same array, on kind, dtype, shape and chunk count."""
    if (first.kind, first.dtype, first.shape, first.chunk_count) != (
            frame.kind, frame.dtype, frame.shape, frame.chunk_count):
        raise FrameError(Reason.SHAPE_MISMATCH, f"chunk {frame.key} {frame.shape} "
                         f"{frame.dtype.name}/{frame.chunk_count} disagrees with "
                         f"{first.shape} {first.dtype.name}/{first.chunk_count}")


def join_chunks(frames: Sequence[Frame]) -> np.ndarray:
    """The array of all of one array's chunks, ``frames[0].shape`` of ``frames[0].dtype``.

    ``frames`` are every chunk, in ``chunk_index`` order, agreeing as `check_chunk` says;
    raise InputError if one is missing or out of place.
    """
    first = frames[0]
    if [f.chunk_index for f in frames] != list(range(first.chunk_count)):
        raise InputError(f"chunks {[f.chunk_index for f in frames]} of {first.key[:2]} are not "
                         f"0..{first.chunk_count - 1} (join_chunks)")
    payload = b"".join(f.payload for f in frames)
    return np.frombuffer(payload, dtype=first.dtype.numpy).reshape(first.shape)


class Deduplicator:
    """Remembers the last ``capacity`` keys seen, (device_id, gather_id, chunk_index) by default
    (a least-recently-seen cache: a key seen again moves to the back)."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise InputError(f"Deduplicator capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._seen: OrderedDict[Hashable, None] = OrderedDict()

    def seen(self, key: Hashable) -> bool:
        """Whether ``key`` is remembered (and if so, it becomes the most recently seen)."""
        if key in self._seen:
            self._seen.move_to_end(key)
            return True
        return False

    def remember(self, key: Hashable) -> None:
        """Remember ``key``; the least recently seen key is forgotten beyond ``capacity``."""
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)

    def is_new(self, frame: Frame) -> bool:
        """True the first time ``frame.key`` is seen (it is then remembered), False for a
        duplicate."""
        if self.seen(frame.key):
            return False
        self.remember(frame.key)
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
            check_chunk(next(iter(parts.values())), frame)
        parts[frame.chunk_index] = frame
        if len(parts) < frame.chunk_count:
            return None
        del self._parts[(frame.device_id, frame.gather_id)]
        return join_chunks([parts[i] for i in range(frame.chunk_count)])

    def pending(self) -> list[tuple[int, int]]:
        """The (device_id, gather_id) pairs still missing chunks."""
        return list(self._parts)
