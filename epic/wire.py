"""Wire format v1: the one module that knows the bytes of an EPIC frame, and the topic names.

A frame is a fixed 76-byte little-endian header followed by the payload. The payload is chunk
``chunk_index`` of ``chunk_count`` of a C-order array of ``shape`` and ``dtype``; the header
carries the quantization (``real = scale * (q - zero_point)``), three timestamps in ns, the
payload length in bytes and a CRC-32. ``docs/wire-format.md`` is the specification; a test
checks that its example frame decodes to the documented fields and encodes back to its bytes.

Topics: ``epic/<testbed>/device-<id>/{latent,raw,status}`` and ``epic/<testbed>/central/result``.
"""

from __future__ import annotations

import enum
import math
import re
import struct
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from epic.errors import InputError

__all__ = [
    "CRC_OFFSET",
    "DEFAULT_CHUNK_PAYLOAD_BYTES",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_DIMS",
    "MAX_FRAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "VERSION",
    "Channel",
    "Deduplicator",
    "Dtype",
    "Frame",
    "FrameError",
    "Kind",
    "Reason",
    "Reassembler",
    "Topic",
    "central_filter",
    "check_topic",
    "chunk_elements",
    "device_name",
    "parse_topic",
    "result_topic",
    "split_array",
    "topic_for",
    "validate_name",
]

MAGIC = b"EPIC"
VERSION = 1
MAX_DIMS = 4
# magic, version, kind, dtype, ndim, device_id, gather_id, chunk_index, chunk_count,
# shape[4], scale, zero_point, capture_ns, encode_end_ns, publish_ns, payload_bytes, crc32
_HEADER = struct.Struct("<4sBBBBIIHH4IfiQQQII")
HEADER_BYTES = _HEADER.size  # 76
CRC_OFFSET = HEADER_BYTES - 4  # 72: the CRC covers bytes [0, 72) and then the payload
MAX_FRAME_BYTES = 1 << 20  # 1 MiB, header included
MAX_PAYLOAD_BYTES = MAX_FRAME_BYTES - HEADER_BYTES
DEFAULT_CHUNK_PAYLOAD_BYTES = 65_536
STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"
_U32_MAX = 0xFFFF_FFFF
_U64_MAX = 0xFFFF_FFFF_FFFF_FFFF


class Kind(enum.IntEnum):
    """What the payload is."""

    LATENT = 1  # encoder output of one device for one shot-gather
    RAW_CHUNK = 2  # raw float traces of one device (centralized baseline)
    RESULT = 3  # central's output (e.g. a 70x70 velocity map); device_id 0


class Dtype(enum.IntEnum):
    """Element type of the payload array (little-endian)."""

    INT8 = 1
    UINT8 = 2
    INT16 = 3
    INT32 = 4
    FLOAT16 = 5
    FLOAT32 = 6
    FLOAT64 = 7

    @property
    def numpy(self) -> np.dtype:
        """The matching little-endian numpy dtype."""
        return np.dtype(_NUMPY[self])

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.numpy.itemsize

    @classmethod
    def from_numpy(cls, dtype: np.dtype | type) -> Dtype:
        """The wire dtype for a numpy dtype; raise InputError if it has none."""
        name = np.dtype(dtype).newbyteorder("<").str
        for member, code in _NUMPY.items():
            if code == name:
                return member
        raise InputError(f"numpy dtype {np.dtype(dtype)} has no wire dtype (frame encoder)")


_NUMPY = {
    Dtype.INT8: "|i1", Dtype.UINT8: "|u1", Dtype.INT16: "<i2", Dtype.INT32: "<i4",
    Dtype.FLOAT16: "<f2", Dtype.FLOAT32: "<f4", Dtype.FLOAT64: "<f8",
}
_INT_RANGE = {Dtype.INT8: (-128, 127), Dtype.UINT8: (0, 255), Dtype.INT16: (-32768, 32767),
              Dtype.INT32: (-(2**31), 2**31 - 1)}


class Reason(enum.StrEnum):
    """Why a frame was rejected. Decode raises the first group; receivers use the second."""

    OVERSIZE = "oversize"
    TRUNCATED = "truncated"
    BAD_MAGIC = "bad_magic"
    BAD_VERSION = "bad_version"
    BAD_LENGTH = "bad_length"
    BAD_CRC = "bad_crc"
    BAD_KIND = "bad_kind"
    BAD_DTYPE = "bad_dtype"
    BAD_SHAPE = "bad_shape"
    BAD_CHUNK = "bad_chunk"
    SHAPE_MISMATCH = "shape_mismatch"
    BAD_QUANT = "bad_quant"
    BAD_TIMESTAMP = "bad_timestamp"
    BAD_DEVICE = "bad_device"
    # not raised by Frame.decode:
    BAD_TOPIC = "bad_topic"
    WRONG_TOPIC = "wrong_topic"
    UNKNOWN_DEVICE = "unknown_device"
    DUPLICATE = "duplicate"
    LATE = "late"


class FrameError(InputError):
    """A frame (or topic) was rejected; ``reason`` says why, for counting."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


def chunk_elements(total_elements: int, chunk_count: int, chunk_index: int) -> tuple[int, int]:
    """Element range [start, stop) of chunk ``chunk_index`` of ``chunk_count``.

    Every chunk but the last holds ``ceil(total_elements / chunk_count)`` elements.
    """
    per_chunk = -(-total_elements // chunk_count)
    start = min(chunk_index * per_chunk, total_elements)
    return start, min(start + per_chunk, total_elements)


def _f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


@dataclass(frozen=True)
class Frame:
    """One wire frame. Construction validates every field and raises FrameError.

    Attributes:
        kind: what the payload is.
        device_id: sender, >= 1 (device-<id>); 0 for Kind.RESULT (central).
        gather_id: shot-gather id, uint32.
        dtype: element type of the payload.
        shape: shape of the WHOLE array (1..4 dims, each 1..2**32-1), C order.
        payload: bytes of elements chunk_elements(prod(shape), chunk_count, chunk_index).
        chunk_index, chunk_count: 0 <= chunk_index < chunk_count <= 65535.
        scale, zero_point: real = scale * (q - zero_point); scale is float32, finite, > 0;
            zero_point lies in the integer dtype's range and is 0 for float dtypes.
        capture_ns, encode_end_ns, publish_ns: uint64 ns since the Unix epoch, non-decreasing.
    """

    kind: Kind
    device_id: int
    gather_id: int
    dtype: Dtype
    shape: tuple[int, ...]
    payload: bytes = field(repr=False)
    chunk_index: int = 0
    chunk_count: int = 1
    scale: float = 1.0
    zero_point: int = 0
    capture_ns: int = 0
    encode_end_ns: int = 0
    publish_ns: int = 0

    def __post_init__(self) -> None:
        try:
            kind = Kind(self.kind)
        except ValueError:
            raise FrameError(Reason.BAD_KIND, f"kind {self.kind!r} is not a Kind") from None
        try:
            dtype = Dtype(self.dtype)
        except ValueError:
            raise FrameError(Reason.BAD_DTYPE, f"dtype {self.dtype!r} is not a Dtype") from None
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "payload", bytes(self.payload))
        if not 0 <= self.gather_id <= _U32_MAX:
            raise FrameError(Reason.BAD_CHUNK, f"gather_id {self.gather_id} not a uint32")
        if not 1 <= len(self.shape) <= MAX_DIMS or not all(
            1 <= d <= _U32_MAX for d in self.shape
        ):
            raise FrameError(Reason.BAD_SHAPE, f"shape {self.shape} needs 1..4 dims of 1..2**32-1")
        if kind is Kind.RESULT:
            if self.device_id != 0:
                raise FrameError(Reason.BAD_DEVICE, f"RESULT device_id {self.device_id} != 0")
        elif not 1 <= self.device_id <= _U32_MAX:
            raise FrameError(Reason.BAD_DEVICE, f"device_id {self.device_id} not in 1..2**32-1")
        total = math.prod(self.shape)
        if not 0 <= self.chunk_index < self.chunk_count <= 0xFFFF:
            raise FrameError(Reason.BAD_CHUNK, f"chunk {self.chunk_index} of {self.chunk_count}")
        if chunk_elements(total, self.chunk_count, self.chunk_count - 1)[0] >= total:
            raise FrameError(Reason.BAD_CHUNK,
                             f"{self.chunk_count} chunks leave some empty for shape {self.shape}")
        start, stop = chunk_elements(total, self.chunk_count, self.chunk_index)
        expected_bytes = (stop - start) * dtype.itemsize
        if len(self.payload) != expected_bytes:
            raise FrameError(
                Reason.SHAPE_MISMATCH,
                f"payload {len(self.payload)} bytes, shape {self.shape} {dtype.name} chunk "
                f"{self.chunk_index}/{self.chunk_count} needs {expected_bytes}")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise FrameError(Reason.OVERSIZE,
                             f"payload {len(self.payload)} bytes > {MAX_PAYLOAD_BYTES}")
        scale = _f32(float(self.scale)) if math.isfinite(self.scale) else math.nan
        low, high = _INT_RANGE.get(dtype, (0, 0))
        if not (math.isfinite(scale) and scale > 0 and low <= self.zero_point <= high):
            raise FrameError(Reason.BAD_QUANT,
                             f"scale {self.scale} / zero_point {self.zero_point} for {dtype.name}")
        object.__setattr__(self, "scale", scale)
        stamps = (self.capture_ns, self.encode_end_ns, self.publish_ns)
        if not all(0 <= t <= _U64_MAX for t in stamps) or not stamps[0] <= stamps[1] <= stamps[2]:
            raise FrameError(Reason.BAD_TIMESTAMP,
                             f"timestamps {stamps} ns must be uint64 and non-decreasing")

    def encode(self) -> bytes:
        """The frame's bytes: header (CRC last) + payload, at most MAX_FRAME_BYTES."""
        dims = self.shape + (0,) * (MAX_DIMS - len(self.shape))
        head = _HEADER.pack(
            MAGIC, VERSION, self.kind, self.dtype, len(self.shape), self.device_id,
            self.gather_id, self.chunk_index, self.chunk_count, *dims, self.scale,
            self.zero_point, self.capture_ns, self.encode_end_ns, self.publish_ns,
            len(self.payload), 0,
        )[:CRC_OFFSET]
        crc = zlib.crc32(self.payload, zlib.crc32(head))
        return head + struct.pack("<I", crc) + self.payload

    @classmethod
    def decode(cls, data: bytes | bytearray | memoryview) -> Frame:
        """Parse and validate one frame; raise FrameError (with a Reason) on anything wrong.

        Checks run in the order given in docs/wire-format.md, so a frame has one reason.
        """
        if not isinstance(data, bytes | bytearray | memoryview):
            raise FrameError(Reason.TRUNCATED, f"frame is {type(data).__name__}, not bytes")
        data = bytes(data)
        if len(data) > MAX_FRAME_BYTES:
            raise FrameError(Reason.OVERSIZE, f"frame {len(data)} bytes > {MAX_FRAME_BYTES}")
        if data[:4] != MAGIC[: len(data)]:
            raise FrameError(Reason.BAD_MAGIC, f"magic {data[:4]!r} != {MAGIC!r}")
        if len(data) < 5:
            raise FrameError(Reason.TRUNCATED, f"frame {len(data)} bytes < {HEADER_BYTES}")
        if data[4] != VERSION:
            raise FrameError(Reason.BAD_VERSION, f"version {data[4]} != {VERSION}")
        if len(data) < HEADER_BYTES:
            raise FrameError(Reason.TRUNCATED, f"frame {len(data)} bytes < {HEADER_BYTES}")
        (_, _, kind, dtype, ndim, device_id, gather_id, chunk_index, chunk_count, *rest
         ) = _HEADER.unpack_from(data)
        dims, (scale, zero_point, capture_ns, encode_end_ns, publish_ns, payload_bytes, crc) = (
            rest[:MAX_DIMS], rest[MAX_DIMS:])
        if len(data) != HEADER_BYTES + payload_bytes:
            reason = Reason.TRUNCATED if len(data) < HEADER_BYTES + payload_bytes else (
                Reason.BAD_LENGTH)
            raise FrameError(reason, f"frame {len(data)} bytes, header says "
                                     f"{HEADER_BYTES} + {payload_bytes}")
        actual_crc = zlib.crc32(data[HEADER_BYTES:], zlib.crc32(data[:CRC_OFFSET]))
        if actual_crc != crc:
            raise FrameError(Reason.BAD_CRC, f"crc32 {actual_crc:#010x} != header {crc:#010x}")
        if kind not in Kind._value2member_map_:
            raise FrameError(Reason.BAD_KIND, f"kind {kind} unknown")
        if dtype not in Dtype._value2member_map_:
            raise FrameError(Reason.BAD_DTYPE, f"dtype {dtype} unknown")
        if not 1 <= ndim <= MAX_DIMS or any(dims[ndim:]):
            raise FrameError(Reason.BAD_SHAPE, f"ndim {ndim} with dims {dims}")
        return cls(Kind(kind), device_id, gather_id, Dtype(dtype), tuple(dims[:ndim]),
                   data[HEADER_BYTES:], chunk_index, chunk_count, scale, zero_point,
                   capture_ns, encode_end_ns, publish_ns)

    @property
    def key(self) -> tuple[int, int, int]:
        """The de-duplication key (device_id, gather_id, chunk_index)."""
        return (self.device_id, self.gather_id, self.chunk_index)

    def array(self) -> np.ndarray:
        """The payload as a read-only array: ``shape`` if whole, else 1-D (this chunk)."""
        values = np.frombuffer(self.payload, dtype=self.dtype.numpy)
        return values.reshape(self.shape) if self.chunk_count == 1 else values

    def dequantized(self) -> np.ndarray:
        """``scale * (q - zero_point)`` as float32, same shape as ``array()``."""
        return ((self.array().astype(np.float32) - self.zero_point) * self.scale).astype(
            np.float32)


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


class Channel(enum.StrEnum):
    """The last level of a topic."""

    LATENT = "latent"
    RAW = "raw"
    STATUS = "status"
    RESULT = "result"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DEVICE = re.compile(r"device-([1-9][0-9]{0,9})")


def validate_name(name: str, what: str = "testbed") -> str:
    """Return ``name`` if it is a safe topic level (1-64 of [A-Za-z0-9_.-], no / + #)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"{what} name {name!r} must be 1-64 characters of [A-Za-z0-9_.-]")
    return name


def device_name(device_id: int) -> str:
    """``device-<id>``: the topic level and MQTT username of device ``device_id`` (>= 1)."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or not (
            1 <= device_id <= _U32_MAX):
        raise InputError(f"device id {device_id!r} must be an integer in 1..2**32-1")
    return f"device-{device_id}"


def topic_for(testbed: str, device_id: int, channel: Channel) -> str:
    """``epic/<testbed>/device-<id>/<channel>`` for LATENT, RAW or STATUS."""
    if Channel(channel) is Channel.RESULT:
        raise InputError("devices do not publish on the result channel; use result_topic()")
    return f"epic/{validate_name(testbed)}/{device_name(device_id)}/{Channel(channel).value}"


def result_topic(testbed: str) -> str:
    """``epic/<testbed>/central/result``."""
    return f"epic/{validate_name(testbed)}/central/result"


def central_filter(testbed: str, channel: Channel | None = None) -> str:
    """Subscription filter for central: ``epic/<testbed>/+/<channel>`` (all if None)."""
    last = "#" if channel is None else Channel(channel).value
    return f"epic/{validate_name(testbed)}/+/{last}"


@dataclass(frozen=True)
class Topic:
    """A parsed topic; ``device_id`` is None for the central result topic."""

    testbed: str
    device_id: int | None
    channel: Channel


def parse_topic(topic: str) -> Topic:
    """Parse a topic built by topic_for/result_topic; raise FrameError(BAD_TOPIC) otherwise."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 4 or parts[0] != "epic" or not _NAME.fullmatch(parts[1]):
        raise FrameError(Reason.BAD_TOPIC, f"topic {topic!r} is not epic/<testbed>/<who>/<ch>")
    if parts[2] == "central" and parts[3] == Channel.RESULT:
        return Topic(parts[1], None, Channel.RESULT)
    match = _DEVICE.fullmatch(parts[2])
    if not match or int(match[1]) > _U32_MAX or parts[3] not in (
            Channel.LATENT, Channel.RAW, Channel.STATUS):
        raise FrameError(Reason.BAD_TOPIC, f"topic {topic!r}: bad device or channel")
    return Topic(parts[1], int(match[1]), Channel(parts[3]))


def check_topic(frame: Frame, topic: str | Topic) -> None:
    """Raise FrameError(WRONG_TOPIC) unless ``frame`` belongs on ``topic`` (device, kind)."""
    parsed = topic if isinstance(topic, Topic) else parse_topic(topic)
    expected = {Kind.LATENT: Channel.LATENT, Kind.RAW_CHUNK: Channel.RAW,
                Kind.RESULT: Channel.RESULT}[frame.kind]
    device = None if frame.kind is Kind.RESULT else frame.device_id
    if parsed.channel is not expected or parsed.device_id != device:
        raise FrameError(Reason.WRONG_TOPIC, f"{frame.kind.name} frame of device "
                         f"{frame.device_id} on {parsed}")

