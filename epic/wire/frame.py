"""Wire format v1, the frame: the one module that knows the bytes of an EPIC frame.

A frame is a fixed 76-byte little-endian header followed by the payload. The payload is chunk
``chunk_index`` of ``chunk_count`` of a C-order array of ``shape`` and ``dtype``; the header
carries the quantization (``real = scale * (q - zero_point)``), three timestamps in ns, the
payload length in bytes and a CRC-32. ``docs/wire-format.md`` is the specification.

Also here: the payload kinds and dtypes, the rejection reasons (`Reason`, `FrameError`) and
`chunk_elements`, the element range of one chunk.
"""

from __future__ import annotations

import enum
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from epic.errors import InputError

__all__ = [
    "CRC_OFFSET",
    "HEADER_BYTES",
    "MAGIC",
    "MAX_DIMS",
    "MAX_FRAME_BYTES",
    "MAX_PAYLOAD_BYTES",
    "VERSION",
    "Dtype",
    "Frame",
    "FrameError",
    "Kind",
    "Reason",
    "chunk_elements",
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
