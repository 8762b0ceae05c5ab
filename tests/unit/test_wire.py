"""Wire format v1: golden bytes from docs/wire-format.md, round trips, rejections, fuzzing."""

from __future__ import annotations

import itertools
import json
import random
import re
import struct
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from epic.errors import InputError
from epic.wire import (
    CRC_OFFSET,
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    Channel,
    Deduplicator,
    Dtype,
    Frame,
    FrameError,
    Kind,
    Reason,
    Reassembler,
    Topic,
    central_filter,
    central_status_topic,
    check_chunk,
    check_topic,
    chunk_elements,
    join_chunks,
    parse_topic,
    result_topic,
    split_array,
    topic_for,
    validate_name,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "wire-format.md"
T0_NS = 1_764_072_000_000_000_000
DECODE_REASONS = {
    Reason.OVERSIZE, Reason.TRUNCATED, Reason.BAD_MAGIC, Reason.BAD_VERSION, Reason.BAD_LENGTH,
    Reason.BAD_CRC, Reason.BAD_KIND, Reason.BAD_DTYPE, Reason.BAD_SHAPE, Reason.BAD_CHUNK,
    Reason.SHAPE_MISMATCH, Reason.BAD_QUANT, Reason.BAD_TIMESTAMP, Reason.BAD_DEVICE,
}


def doc_example() -> tuple[bytes, dict]:
    """The ```hex and ```json blocks of the doc's example section."""
    text = DOC.read_text().split("## Example frame", 1)[1]
    hex_block = re.search(r"```hex\n(.*?)```", text, re.S)[1]
    data = b"".join(bytes.fromhex("".join(line.split()[1:])) for line in hex_block.splitlines())
    return data, json.loads(re.search(r"```json\n(.*?)```", text, re.S)[1])


def test_golden_example_from_doc_decodes_to_documented_fields_and_back() -> None:
    data, fields = doc_example()
    frame = Frame.decode(data)
    assert data[:4].decode() == fields["magic"] and data[4] == fields["version"]
    assert frame.kind is Kind[fields["kind"]] and frame.dtype is Dtype[fields["dtype"]]
    assert len(frame.shape) == fields["ndim"] and list(frame.shape) == fields["shape"]
    for name in ("device_id", "gather_id", "chunk_index", "chunk_count", "scale",
                 "zero_point", "capture_ns", "encode_end_ns", "publish_ns"):
        assert getattr(frame, name) == fields[name], name
    assert len(frame.payload) == fields["payload_bytes"] == len(data) - HEADER_BYTES
    assert struct.unpack_from("<I", data, CRC_OFFSET)[0] == int(fields["crc32"], 16)
    assert frame.array().ravel().tolist() == fields["payload"]
    rebuilt = Frame(Kind[fields["kind"]], fields["device_id"], fields["gather_id"],
                    Dtype[fields["dtype"]], tuple(fields["shape"]),
                    np.array(fields["payload"], np.int8).tobytes(), fields["chunk_index"],
                    fields["chunk_count"], fields["scale"], fields["zero_point"],
                    fields["capture_ns"], fields["encode_end_ns"], fields["publish_ns"])
    assert rebuilt.encode() == data
    np.testing.assert_allclose(frame.dequantized().ravel(), np.arange(8) * 0.05, atol=1e-6)


def test_header_is_76_bytes_and_crc_covers_header_then_payload() -> None:
    data, _ = doc_example()
    assert HEADER_BYTES == 76
    assert zlib.crc32(data[:72] + data[76:]) == struct.unpack_from("<I", data, 72)[0]


@pytest.mark.parametrize("kind", list(Kind))
@pytest.mark.parametrize("dtype", list(Dtype))
def test_round_trip_every_kind_and_dtype(kind: Kind, dtype: Dtype) -> None:
    rng = np.random.default_rng(int(kind) * 10 + int(dtype))
    array = (rng.standard_normal((3, 5, 2)) * 50).astype(dtype.numpy)
    zero = {Dtype.INT8: -7, Dtype.UINT8: 128}.get(dtype, 0)
    frame = Frame(kind, 0 if kind is Kind.RESULT else 4, 11, dtype, array.shape,
                  array.tobytes(), scale=0.125, zero_point=zero, capture_ns=T0_NS,
                  encode_end_ns=T0_NS + 5, publish_ns=T0_NS + 9)
    data = frame.encode()
    assert len(data) == HEADER_BYTES + array.nbytes
    back = Frame.decode(data)
    assert back == frame
    np.testing.assert_array_equal(back.array(), array)


def test_raw_gather_splits_into_chunks_and_reassembles_with_dedup() -> None:
    gather = np.random.default_rng(0).standard_normal((5, 1000, 14)).astype(np.float32)
    frames = split_array(Kind.RAW_CHUNK, 3, 42, gather, capture_ns=T0_NS,
                         encode_end_ns=T0_NS, publish_ns=T0_NS)
    assert len(frames) == 5 and all(len(f.payload) == 56_000 for f in frames)
    assert all(len(f.encode()) <= 65_536 + HEADER_BYTES for f in frames)
    wire = [f.encode() for f in frames]
    order = [4, 0, 0, 2, 1, 4, 3]  # duplicates and out of order
    assembler, duplicates, done = Reassembler(), 0, []
    for index in order:
        try:
            result = assembler.add(Frame.decode(wire[index]))
        except FrameError as err:
            assert err.reason is Reason.DUPLICATE
            duplicates += 1
            continue
        if result is not None:
            done.append(result)
    assert duplicates == 2 and len(done) == 1 and assembler.pending() == []
    np.testing.assert_array_equal(done[0], gather)
    with pytest.raises(FrameError) as err:  # a late duplicate after completion
        assembler.add(Frame.decode(wire[2]))
    assert err.value.reason is Reason.DUPLICATE


def test_reassembler_pieces_dedup_lru_chunk_agreement_and_join() -> None:
    """The pieces central's assembler shares with `Reassembler`."""
    dedup = Deduplicator(2)
    assert not dedup.seen("a")
    dedup.remember("a")
    dedup.remember("b")
    assert dedup.seen("a")  # "a" is now the most recently seen: "b" goes first
    dedup.remember("c")
    assert dedup.seen("a") and dedup.seen("c") and not dedup.seen("b")
    gather = np.arange(5 * 1000 * 14, dtype=np.float32).reshape(5, 1000, 14)
    frames = split_array(Kind.RAW_CHUNK, 3, 42, gather, capture_ns=T0_NS,
                         encode_end_ns=T0_NS, publish_ns=T0_NS)
    np.testing.assert_array_equal(join_chunks(frames), gather)
    with pytest.raises(InputError, match="join_chunks"):
        join_chunks(frames[1:])
    other = split_array(Kind.RAW_CHUNK, 3, 42, gather[:, :, :7], capture_ns=T0_NS,
                        encode_end_ns=T0_NS, publish_ns=T0_NS)
    check_chunk(frames[0], frames[1])
    with pytest.raises(FrameError) as err:
        check_chunk(frames[0], other[1])
    assert err.value.reason is Reason.SHAPE_MISMATCH


def test_chunk_elements_cover_the_array_exactly() -> None:
    for total, count in [(70_000, 5), (10, 3), (7, 7), (100, 1)]:
        ranges = [chunk_elements(total, count, i) for i in range(count)]
        assert ranges[0][0] == 0 and ranges[-1][1] == total
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


def _valid(**overrides: object) -> Frame:
    fields = dict(kind=Kind.LATENT, device_id=2, gather_id=5, dtype=Dtype.INT8, shape=(2, 4),
                  payload=bytes(8), scale=0.5, zero_point=0, capture_ns=T0_NS,
                  encode_end_ns=T0_NS + 1, publish_ns=T0_NS + 2)
    fields.update(overrides)
    return Frame(**fields)


def _patch(data: bytes, fmt: str, offset: int, *values: object, recrc: bool = True) -> bytes:
    """Overwrite a header field and (by default) fix the CRC so later checks are reached."""
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, *values)
    if recrc:
        crc = zlib.crc32(bytes(buf[HEADER_BYTES:]), zlib.crc32(bytes(buf[:CRC_OFFSET])))
        struct.pack_into("<I", buf, CRC_OFFSET, crc)
    return bytes(buf)


GOOD = _valid().encode()
BAD_FRAMES = {
    "oversize": (b"EPIC" + bytes(MAX_FRAME_BYTES), Reason.OVERSIZE),
    "empty": (b"", Reason.TRUNCATED),
    "magic prefix only": (b"EPI", Reason.TRUNCATED),
    "short header": (GOOD[:40], Reason.TRUNCATED),
    "missing payload": (GOOD[:-1], Reason.TRUNCATED),
    "bad magic": (b"EPIX" + GOOD[4:], Reason.BAD_MAGIC),
    "json garbage": (b'{"not": "a frame"}', Reason.BAD_MAGIC),
    "version 2": (_patch(GOOD, "<B", 4, 2), Reason.BAD_VERSION),
    "trailing byte": (GOOD + b"\0", Reason.BAD_LENGTH),
    "payload bit flip": (GOOD[:-1] + bytes([GOOD[-1] ^ 1]), Reason.BAD_CRC),
    "header change without crc": (_patch(GOOD, "<I", 8, 3, recrc=False), Reason.BAD_CRC),
    "kind 9": (_patch(GOOD, "<B", 5, 9), Reason.BAD_KIND),
    "dtype 0": (_patch(GOOD, "<B", 6, 0), Reason.BAD_DTYPE),
    "ndim 0": (_patch(GOOD, "<B", 7, 0), Reason.BAD_SHAPE),
    "ndim 5": (_patch(GOOD, "<B", 7, 5), Reason.BAD_SHAPE),
    "unused dim set": (_patch(GOOD, "<I", 28, 1), Reason.BAD_SHAPE),
    "zero dim": (_patch(GOOD, "<I", 20, 0), Reason.BAD_SHAPE),
    "device 0": (_patch(GOOD, "<I", 8, 0), Reason.BAD_DEVICE),
    "result from device": (_patch(GOOD, "<B", 5, int(Kind.RESULT)), Reason.BAD_DEVICE),
    "index >= count": (_patch(GOOD, "<HH", 16, 1, 1), Reason.BAD_CHUNK),
    "count 0": (_patch(GOOD, "<HH", 16, 0, 0), Reason.BAD_CHUNK),
    "empty chunk": (_patch(GOOD, "<HH", 16, 0, 9), Reason.BAD_CHUNK),
    "shape vs payload": (_patch(GOOD, "<I", 24, 5), Reason.SHAPE_MISMATCH),
    "dtype vs payload": (_patch(GOOD, "<B", 6, int(Dtype.FLOAT32)), Reason.SHAPE_MISMATCH),
    "scale 0": (_patch(GOOD, "<f", 36, 0.0), Reason.BAD_QUANT),
    "scale nan": (_patch(GOOD, "<f", 36, float("nan")), Reason.BAD_QUANT),
    "scale -inf": (_patch(GOOD, "<f", 36, float("-inf")), Reason.BAD_QUANT),
    "zero point 200 for int8": (_patch(GOOD, "<i", 40, 200), Reason.BAD_QUANT),
    "capture after encode": (_patch(GOOD, "<Q", 44, T0_NS + 5), Reason.BAD_TIMESTAMP),
    "publish before encode": (_patch(GOOD, "<Q", 60, 0), Reason.BAD_TIMESTAMP),
}


@pytest.mark.parametrize("name", list(BAD_FRAMES))
def test_each_bad_frame_is_rejected_with_its_reason(name: str) -> None:
    data, reason = BAD_FRAMES[name]
    with pytest.raises(FrameError) as err:
        Frame.decode(data)
    assert err.value.reason is reason, str(err.value)
    assert isinstance(err.value, InputError)


def test_every_decode_reason_has_a_crafted_frame() -> None:
    assert {reason for _, reason in BAD_FRAMES.values()} == DECODE_REASONS


def test_constructor_rejects_bad_fields() -> None:
    with pytest.raises(FrameError) as err:
        _valid(dtype=Dtype.FLOAT32, zero_point=3, payload=bytes(32))
    assert err.value.reason is Reason.BAD_QUANT
    with pytest.raises(FrameError) as err:
        _valid(kind=7)
    assert err.value.reason is Reason.BAD_KIND
    with pytest.raises(InputError):
        split_array(Kind.RAW_CHUNK, 1, 1, np.zeros(3, np.complex64))


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    kind = draw(st.sampled_from(list(Kind)))
    dtype = draw(st.sampled_from(list(Dtype)))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    total = int(np.prod(shape))
    count = draw(st.integers(1, min(total, 6)))
    while count > 1 and chunk_elements(total, count, count - 1)[0] >= total:
        count -= 1
    index = draw(st.integers(0, count - 1))
    start, stop = chunk_elements(total, count, index)
    payload = draw(st.binary(min_size=(stop - start) * dtype.itemsize,
                             max_size=(stop - start) * dtype.itemsize))
    low, high = {Dtype.INT8: (-128, 127), Dtype.UINT8: (0, 255)}.get(dtype, (0, 0))
    stamps = sorted(draw(st.lists(st.integers(0, 2**64 - 1), min_size=3, max_size=3)))
    return Frame(kind, 0 if kind is Kind.RESULT else draw(st.integers(1, 2**32 - 1)),
                 draw(st.integers(0, 2**32 - 1)), dtype, shape, payload, index, count,
                 draw(st.floats(1e-30, 1e30, allow_nan=False)), draw(st.integers(low, high)),
                 *stamps)


@settings(max_examples=500, deadline=None)
@given(frames())
def test_property_random_frames_round_trip(frame: Frame) -> None:
    data = frame.encode()
    assert Frame.decode(data) == frame
    assert Frame.decode(data).encode() == data


def _check_accepted_or_rejected(data: bytes) -> str:
    """Decode; an accepted frame must re-encode to exactly these bytes."""
    try:
        frame = Frame.decode(data)
    except FrameError as err:
        assert isinstance(err.reason, Reason) and err.reason in DECODE_REASONS
        return err.reason.value
    assert frame.encode() == data
    return "accepted"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
       st.booleans(), st.integers(0, 200))
def test_property_mutated_frames_are_accepted_identically_or_rejected(
        frame: Frame, edits: list[tuple[int, int]], fix_crc: bool, cut: int) -> None:
    buf = bytearray(frame.encode())
    for position, value in edits:
        buf[position % len(buf)] = value
    data = bytes(buf[: len(buf) - cut]) if cut < len(buf) else bytes(buf)
    if fix_crc and len(data) >= HEADER_BYTES:
        data = _patch(data, "<B", 0, data[0])  # re-CRC so the semantic checks are reached
    _check_accepted_or_rejected(data)


def test_fuzz_10000_frames_all_accounted_for() -> None:
    rng = random.Random(1234)
    base = [f.encode() for f in split_array(
        Kind.RAW_CHUNK, 2, 9, np.arange(600, dtype=np.float32).reshape(5, 10, 12), 400,
        capture_ns=T0_NS, encode_end_ns=T0_NS, publish_ns=T0_NS)] + [GOOD, doc_example()[0]]
    outcomes: Counter[str] = Counter()
    for _ in range(10_000):
        buf = bytearray(rng.choice(base))
        mode = rng.randrange(5)
        if mode == 0:  # random bytes, sometimes with a valid magic and version
            buf = bytearray(rng.randbytes(rng.randrange(0, 200)))
            if rng.random() < 0.5 and len(buf) >= 5:
                buf[:5] = b"EPIC\x01"
        elif mode == 1:  # bit flips anywhere
            for _ in range(rng.randrange(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif mode == 2:  # header byte rewrites with the CRC fixed up
            for _ in range(rng.randrange(1, 3)):
                buf[rng.randrange(4, CRC_OFFSET)] = rng.randrange(256)
            buf = bytearray(_patch(bytes(buf), "<B", 0, buf[0]))
        elif mode == 3:  # truncation or extension
            buf = buf[: rng.randrange(len(buf))] if rng.random() < 0.5 else buf + b"\0"
        outcomes[_check_accepted_or_rejected(bytes(buf))] += 1
    assert sum(outcomes.values()) == 10_000
    assert outcomes["accepted"] >= 1_500  # mode 4 and harmless rewrites
    assert len(outcomes) >= 10, outcomes


def test_topics_build_and_parse() -> None:
    assert topic_for("lab", 3, Channel.LATENT) == "epic/lab/device-3/latent"
    assert result_topic("lab") == "epic/lab/central/result"
    assert central_filter("lab") == "epic/lab/+/#"
    assert central_filter("lab", Channel.RAW) == "epic/lab/+/raw"
    for channel in (Channel.LATENT, Channel.RAW, Channel.STATUS):
        assert parse_topic(topic_for("t-1.x", 12, channel)) == Topic("t-1.x", 12, channel)
    assert parse_topic(result_topic("lab")) == Topic("lab", None, Channel.RESULT)
    assert central_status_topic("lab") == "epic/lab/central/status"
    assert parse_topic(central_status_topic("lab")) == Topic("lab", None, Channel.STATUS)


@pytest.mark.parametrize("name", ["", "a/b", "a+b", "#", "a b", "x" * 65, "-lead"])
def test_bad_testbed_names_are_rejected(name: str) -> None:
    with pytest.raises(InputError, match="testbed"):
        validate_name(name)
    with pytest.raises(InputError):
        topic_for(name, 1, Channel.LATENT)


@pytest.mark.parametrize("topic", ["epic/lab/device-0/latent", "epic/lab/device-01/raw",
                                   "epic/lab/device-1/other", "epic/lab/central/latent",
                                   "other/lab/device-1/raw", "epic/lab/device-1/raw/x",
                                   "epic/+/device-1/raw"])
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(FrameError) as err:
        parse_topic(topic)
    assert err.value.reason is Reason.BAD_TOPIC


def test_frame_on_another_devices_topic_is_wrong_topic() -> None:
    frame = _valid(device_id=2)
    check_topic(frame, "epic/lab/device-2/latent")
    for topic in ("epic/lab/device-3/latent", "epic/lab/device-2/raw"):
        with pytest.raises(FrameError) as err:
            check_topic(frame, topic)
        assert err.value.reason is Reason.WRONG_TOPIC
    with pytest.raises(InputError):
        topic_for("lab", 0, Channel.LATENT)
