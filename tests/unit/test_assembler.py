"""central.assembler: validation, per-gather assembly with a deadline (fake clock), counters."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from central.assembler import Assembler, FrameValidator, RejectionLog
from epic.wire import (
    Channel,
    Dtype,
    Frame,
    FrameError,
    Kind,
    Reason,
    split_array,
    topic_for,
)

DEVICES = (1, 2, 3, 4, 5)
DEADLINE_S = 2.0
TESTBED = "unit"


def latent(device_id: int, gather_id: int, value: int = 1) -> Frame:
    """A (14, 64) int8 latent frame."""
    payload = np.full((14, 64), value, np.int8).tobytes()
    return Frame(Kind.LATENT, device_id, gather_id, Dtype.INT8, (14, 64), payload, scale=0.1)


def raw_chunks(device_id: int, gather_id: int) -> list[Frame]:
    """A (5, 1000, 14) float32 raw gather in 5 chunks."""
    data = np.arange(5 * 1000 * 14, dtype=np.float32).reshape(5, 1000, 14)
    return split_array(Kind.RAW_CHUNK, device_id, gather_id, data)


@pytest.fixture
def assembler() -> Assembler:
    return Assembler(DEVICES, DEADLINE_S)


def test_complete_gather_closes_on_the_last_device(assembler: Assembler) -> None:
    for device in DEVICES[:-1]:
        assert assembler.add(latent(device, 7), receive_ns=100 + device, now_s=0.1) is None
    assert assembler.next_deadline_s() == pytest.approx(0.1 + DEADLINE_S)
    gather = assembler.add(latent(5, 7), receive_ns=200, now_s=0.5)
    assert gather is not None and not gather.at_deadline
    assert (gather.mode, gather.gather_id, list(gather.devices)) == ("latent", 7, list(DEVICES))
    assert gather.devices[5].wire_bytes == 76 + 14 * 64
    assert gather.devices[5].stamps_ns["receive_ns"] == 200
    assert gather.closed_s - gather.first_s == pytest.approx(0.4)
    assert assembler.pending == 0 and assembler.next_deadline_s() is None


def test_deadline_gives_a_partial_gather_with_the_present_devices(assembler: Assembler) -> None:
    for device in (1, 2, 4, 5):  # device 3 never sends
        assembler.add(latent(device, 3), receive_ns=0, now_s=10.0 + device * 0.1)
    assert assembler.expired(10.0 + DEADLINE_S - 1e-6) == []  # counted from the FIRST frame
    [gather] = assembler.expired(10.1 + DEADLINE_S)
    assert gather.at_deadline and list(gather.devices) == [1, 2, 4, 5]
    assert 3 not in gather.devices and gather.incomplete == ()
    assert assembler.expired(100.0) == []


def test_late_and_duplicate_frames_are_rejected(assembler: Assembler) -> None:
    assembler.add(latent(1, 9), 0, now_s=0.0)
    with pytest.raises(FrameError) as dup:
        assembler.add(latent(1, 9), 0, now_s=0.1)
    assert dup.value.reason is Reason.DUPLICATE
    assert len(assembler.expired(DEADLINE_S)) == 1
    with pytest.raises(FrameError) as late:
        assembler.add(latent(2, 9), 0, now_s=5.0)
    assert late.value.reason is Reason.LATE
    with pytest.raises(FrameError) as dup_after_close:  # a redelivery stays a duplicate
        assembler.add(latent(1, 9), 0, now_s=5.0)
    assert dup_after_close.value.reason is Reason.DUPLICATE
    # the same key in the other mode is a different frame: latent and raw run side by side
    assert assembler.add(raw_chunks(1, 9)[0], 0, now_s=5.0) is None


def test_zero_devices_is_never_decoded(assembler: Assembler) -> None:
    chunks = raw_chunks(2, 4)
    assembler.add(chunks[0], 0, now_s=0.0)  # 1 of 5 chunks: device 2 is not present
    assert assembler.expired(DEADLINE_S) == []
    assert assembler.dropped == 1 and assembler.pending == 0
    with pytest.raises(FrameError) as late:
        assembler.add(chunks[1], 0, now_s=DEADLINE_S + 1)
    assert late.value.reason is Reason.LATE
    assert assembler.flush(100.0) == []


def test_raw_device_is_present_once_all_its_chunks_are_in(assembler: Assembler) -> None:
    for device in DEVICES:
        chunks = raw_chunks(device, 1)
        for chunk in reversed(chunks[1:]):
            assert assembler.add(chunk, 0, now_s=0.0) is None
        if device == 3:
            continue  # device 3 is missing chunk 0
        gather = assembler.add(chunks[0], 0, now_s=0.0)
    assert gather is None
    [gather] = assembler.expired(DEADLINE_S)
    assert list(gather.devices) == [1, 2, 4, 5] and gather.incomplete == (3,)
    assert [f.chunk_index for f in gather.devices[1].frames] == [0, 1, 2, 3, 4]
    assert gather.devices[1].wire_bytes == 5 * 76 + 5 * 1000 * 14 * 4


def test_chunk_disagreeing_with_its_device_is_rejected(assembler: Assembler) -> None:
    assembler.add(raw_chunks(1, 2)[0], 0, now_s=0.0)
    other = split_array(Kind.RAW_CHUNK, 1, 2, np.zeros((5, 1000, 14), np.float64))
    with pytest.raises(FrameError) as bad:
        assembler.add(other[1], 0, now_s=0.0)
    assert bad.value.reason is Reason.SHAPE_MISMATCH


def test_flush_closes_everything_at_shutdown(assembler: Assembler) -> None:
    assembler.add(latent(1, 1), 0, now_s=0.0)
    assembler.add(latent(2, 2), 0, now_s=0.0)
    assert sorted(g.gather_id for g in assembler.flush(0.5)) == [1, 2]


@pytest.mark.parametrize("bad", [dict(device_ids=()), dict(deadline_s=0.0),
                                 dict(deadline_s=float("nan"))])
def test_assembler_rejects_bad_configuration(bad: dict) -> None:
    with pytest.raises(ValueError):
        Assembler(**{"device_ids": DEVICES, "deadline_s": 1.0, **bad})


VALIDATOR = FrameValidator(dict.fromkeys(DEVICES, 14))


def reason_of(topic: str, payload: bytes) -> Reason:
    with pytest.raises(FrameError) as error:
        VALIDATOR.validate(topic, payload)
    return error.value.reason


def test_validator_accepts_good_frames() -> None:
    frame = latent(2, 1)
    assert VALIDATOR.validate(topic_for(TESTBED, 2, Channel.LATENT), frame.encode()) == frame
    chunk = raw_chunks(4, 1)[2]
    assert VALIDATOR.validate(topic_for(TESTBED, 4, Channel.RAW), chunk.encode()) == chunk


def test_validator_reasons() -> None:
    good = latent(2, 1).encode()
    topic = topic_for(TESTBED, 2, Channel.LATENT)
    assert reason_of(topic, good[:-1]) is Reason.TRUNCATED
    assert reason_of(topic, b"XPIC" + good[4:]) is Reason.BAD_MAGIC
    assert reason_of(topic_for(TESTBED, 3, Channel.LATENT), good) is Reason.WRONG_TOPIC
    assert reason_of(topic_for(TESTBED, 2, Channel.RAW), good) is Reason.WRONG_TOPIC
    assert reason_of(topic_for(TESTBED, 2, Channel.STATUS), good) is Reason.WRONG_TOPIC
    assert reason_of(f"epic/{TESTBED}/central/latent", good) is Reason.BAD_TOPIC
    assert reason_of(topic_for(TESTBED, 9, Channel.LATENT), latent(9, 1).encode()) is (
        Reason.UNKNOWN_DEVICE)
    small = Frame(Kind.LATENT, 2, 1, Dtype.INT8, (14, 32), bytes(14 * 32), scale=0.1)
    assert reason_of(topic, small.encode()) is Reason.SHAPE_MISMATCH
    wide = Frame(Kind.RAW_CHUNK, 2, 1, Dtype.FLOAT32, (5, 1000, 15), bytes(5 * 1000 * 15 * 4))
    assert reason_of(topic_for(TESTBED, 2, Channel.RAW), wide.encode()) is Reason.SHAPE_MISMATCH
    nan = np.zeros((14, 64), np.float32)
    nan[3, 3] = np.nan
    floaty = Frame(Kind.LATENT, 2, 1, Dtype.FLOAT32, (14, 64), nan.tobytes())
    assert reason_of(topic, floaty.encode()) is Reason.BAD_QUANT


def test_rejection_log_counts_all_and_logs_once_per_interval(caplog) -> None:
    rejections = RejectionLog(interval_s=5.0)
    with caplog.at_level(logging.WARNING):
        logged = [rejections.reject(Reason.BAD_CRC, "x", now_s=t) for t in (0.0, 1.0, 4.9)]
        logged.append(rejections.reject(Reason.LATE, "y", now_s=4.9))
        logged.append(rejections.reject(Reason.BAD_CRC, "z", now_s=5.0))
    assert logged == [True, False, False, True, True]
    assert rejections.counts == {"bad_crc": 4, "late": 1} and rejections.total == 5
    assert "+2 more" in caplog.records[-1].getMessage()


def test_confirmations_name_each_device_part_then_every_device_at_close(
        assembler: Assembler) -> None:
    chunks = raw_chunks(2, 4)
    for chunk in chunks[:-1]:
        assembler.add(chunk, receive_ns=0, now_s=0.0)
    assert assembler.take_confirmations() == []  # device 2 is not complete yet
    assembler.add(chunks[-1], receive_ns=0, now_s=0.1)
    assert assembler.take_confirmations() == [(2, "raw", 4)]
    assembler.add(latent(1, 4), receive_ns=0, now_s=0.2)
    assert assembler.take_confirmations() == [(1, "latent", 4)]
    (raw,) = assembler.expired(DEADLINE_S)  # raw 4 closes (first frame at 0 s), latent not
    assert raw.mode == "raw" and list(raw.devices) == [2]
    assert set(assembler.take_confirmations()) == {(d, "raw", 4) for d in (1, 3, 4, 5)}
    (late,) = assembler.expired(0.2 + DEADLINE_S)
    assert late.mode == "latent"
    assert set(assembler.take_confirmations()) == {(d, "latent", 4) for d in (2, 3, 4, 5)}
    assert assembler.take_confirmations() == []


def test_extend_moves_deadlines_for_frames_in_flight_within_max_open(
        assembler: Assembler) -> None:
    for device in (1, 2):
        assembler.add(latent(device, 9), receive_ns=0, now_s=0.0)
    assembler.add(latent(1, 10), receive_ns=0, now_s=0.5)
    assert assembler.next_deadline_s() == pytest.approx(DEADLINE_S)
    # device 2 reconnects at 1.5 s: only the gathers it has not completed (10) move
    assert assembler.extend(1.5, device_id=2) == 1
    assert assembler.expired(DEADLINE_S) != []  # gather 9 closes on time
    assert assembler.expired(0.5 + DEADLINE_S) == []  # gather 10 got more time
    assert assembler.next_deadline_s() == pytest.approx(1.5 + DEADLINE_S)
    # central reconnects much later: never past max_open_s (10 x deadline) after the first
    assert assembler.extend(100.0) == 1
    assert assembler.next_deadline_s() == pytest.approx(0.5 + 10 * DEADLINE_S)
    assert assembler.extend(1.0) == 0  # a deadline never moves earlier
    (gather,) = assembler.expired(0.5 + 10 * DEADLINE_S)
    assert gather.extended == 2 and gather.at_deadline and list(gather.devices) == [1]


def test_a_gather_with_no_complete_device_is_handed_out_as_dropped(
        assembler: Assembler) -> None:
    chunks = raw_chunks(3, 6)
    assembler.add(chunks[0], receive_ns=0, now_s=0.0)
    assert assembler.expired(DEADLINE_S) == [] and assembler.dropped == 1
    (dropped,) = assembler.take_dropped()
    assert (dropped.mode, dropped.gather_id, dropped.incomplete) == ("raw", 6, (3,))
    assert assembler.take_dropped() == []
    with pytest.raises(FrameError) as info:  # its other chunks are late now
        assembler.add(chunks[1], receive_ns=0, now_s=DEADLINE_S + 0.1)
    assert info.value.reason is Reason.LATE


def test_max_open_below_the_deadline_is_refused() -> None:
    with pytest.raises(ValueError, match="max_open_s"):
        Assembler(DEVICES, DEADLINE_S, max_open_s=1.0)
