"""Wire format v1: the bytes of an EPIC frame, and the topic names.

A frame is a fixed 76-byte little-endian header followed by the payload. The payload is chunk
``chunk_index`` of ``chunk_count`` of a C-order array of ``shape`` and ``dtype``; the header
carries the quantization (``real = scale * (q - zero_point)``), three timestamps in ns, the
payload length in bytes and a CRC-32. ``docs/wire-format.md`` is the specification; a test
checks that its example frame decodes to the documented fields and encodes back to its bytes.

Topics: ``epic/<testbed>/device-<id>/{latent,raw,status}`` and ``epic/<testbed>/central/result``.

The package, by concern (import from ``epic.wire``; every name below is re-exported here):

- `epic.wire.frame`: the header layout and limits, `Kind`, `Dtype`, `Reason`, `FrameError`,
  `Frame` (validation, encode, decode) and `chunk_elements`;
- `epic.wire.chunks`: `split_array`, `Reassembler`, and its pieces `Deduplicator`,
  `check_chunk` and `join_chunks` (central's assembler uses them too);
- `epic.wire.topics`: `Channel`, the topic builders and parser, `check_topic`, and the status
  payloads;
- `epic.wire.ack`: central's end-to-end confirmations (`ack_topic`, `RangeSet`, `encode_ack`,
  `decode_ack`).

Nothing here imports torch: devices/ depends on it.
"""

from epic.wire.ack import ACK_MODES, AckError, RangeSet, ack_topic, decode_ack, encode_ack
from epic.wire.chunks import (
    DEFAULT_CHUNK_PAYLOAD_BYTES,
    Deduplicator,
    Reassembler,
    check_chunk,
    join_chunks,
    split_array,
)
from epic.wire.frame import (
    CRC_OFFSET,
    HEADER_BYTES,
    MAGIC,
    MAX_DIMS,
    MAX_FRAME_BYTES,
    MAX_PAYLOAD_BYTES,
    VERSION,
    Dtype,
    Frame,
    FrameError,
    Kind,
    Reason,
    chunk_elements,
)
from epic.wire.topics import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Channel,
    Topic,
    central_filter,
    central_status_topic,
    check_topic,
    device_name,
    parse_topic,
    result_topic,
    topic_for,
    validate_name,
)

__all__ = [
    "ACK_MODES",
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
    "AckError",
    "Channel",
    "Deduplicator",
    "Dtype",
    "Frame",
    "FrameError",
    "Kind",
    "RangeSet",
    "Reason",
    "Reassembler",
    "Topic",
    "ack_topic",
    "central_filter",
    "central_status_topic",
    "check_chunk",
    "check_topic",
    "chunk_elements",
    "decode_ack",
    "device_name",
    "encode_ack",
    "join_chunks",
    "parse_topic",
    "result_topic",
    "split_array",
    "topic_for",
    "validate_name",
]
