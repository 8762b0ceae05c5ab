import numpy as np
import pytest

from epic.data.stream import GatherAssembler, receiver_ranges, replay_gather
from epic.errors import InputError


@pytest.fixture
def gather():
    return np.random.default_rng(1).normal(size=(5, 1000, 70)).astype(np.float32)


def _devices():
    return list(enumerate(receiver_ranges(5, 70), start=1))


def test_receiver_ranges_split_evenly():
    assert receiver_ranges(5, 70) == [(0, 14), (14, 28), (28, 42), (42, 56), (56, 70)]
    with pytest.raises(InputError, match="cannot split 70 receivers evenly over 4"):
        receiver_ranges(4, 70)


def test_windows_reassemble_bit_for_bit(gather):
    assemblers = {d: GatherAssembler(5, 1000, rx) for d, rx in _devices()}
    finished = {}
    windows = list(replay_gather(gather, gather_id=7, devices=_devices(), window_samples=100,
                                 start_ns=0))
    assert len(windows) == 5 * 10 * 5
    for w in windows:
        out = assemblers[w.device_id].add(w)
        if out is not None:
            finished[w.device_id] = out
    assert sorted(finished) == [1, 2, 3, 4, 5]
    rebuilt = np.concatenate([finished[d] for d in sorted(finished)], axis=2)
    assert rebuilt.tobytes() == gather.tobytes()
    assert all(not a.pending for a in assemblers.values())


def test_capture_times_and_sequence_numbers(gather):
    windows = [w for w in replay_gather(gather, 3, _devices()[:1], window_samples=250,
                                        start_ns=1_000)]
    assert [w.seq for w in windows] == list(range(20))
    # window k of shot s ends at sample s*1000 + (k+1)*250, at 1 ms per sample
    assert windows[0].capture_time_ns == 1_000 + 250_000_000
    assert windows[5].shot == 1 and windows[5].start_sample == 250
    assert windows[5].capture_time_ns == 1_000 + (1000 + 500) * 1_000_000
    assert windows[0].samples.shape == (250, 14)


def test_realtime_pacing_sleeps_until_each_capture_time(gather):
    now = [0]
    slept = []

    def clock():
        return now[0]

    def sleep(s):
        slept.append(s)
        now[0] += round(s * 1e9)

    stamps = [w.capture_time_ns for w in replay_gather(
        gather[:1], 0, _devices()[:1], window_samples=100, realtime=True, clock_ns=clock,
        sleep=sleep)]
    assert stamps[-1] == 1_000_000_000  # one shot of 1000 samples at 1 kHz lasts 1 s
    assert sum(slept) == pytest.approx(1.0)
    assert len(slept) == 10


def test_assembler_rejects_duplicates_and_foreign_receivers(gather):
    w = next(iter(replay_gather(gather, 0, _devices()[1:2], start_ns=0)))
    asm = GatherAssembler(5, 1000, (14, 28))
    asm.add(w)
    with pytest.raises(InputError, match="duplicate"):
        asm.add(w)
    with pytest.raises(InputError, match=r"this assembler holds \(0, 14\)"):
        GatherAssembler(5, 1000, (0, 14)).add(w)


def test_replay_rejects_bad_input(gather):
    with pytest.raises(InputError, match="window_samples=300 must divide"):
        list(replay_gather(gather, 0, _devices(), window_samples=300))
    with pytest.raises(InputError, match="expected \\(shots, time, receivers\\) float32"):
        list(replay_gather(gather.astype(np.float64), 0, _devices()))
    with pytest.raises(InputError, match="device 9: receivers \\[60, 80\\)"):
        list(replay_gather(gather, 0, [(9, (60, 80))]))
