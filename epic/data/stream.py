"""Sensor-stream replay: a shot-gather as each device's receivers would deliver it in the field.

In the field the 5 shots fire one after another; during each shot every receiver records
``nt`` samples at ``sample_rate_hz``. A device owns a contiguous receiver range and delivers its
traces in windows of ``window_samples`` (100 ms at 1 kHz by default), each stamped with a
sequence number and the capture time of its last sample. :func:`replay_gather` yields the
windows of all devices in capture order, paced in real time or as fast as possible;
:class:`GatherAssembler` puts one device's windows back together, bit for bit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from epic.errors import InputError

__all__ = [
    "GatherAssembler",
    "SensorWindow",
    "receiver_ranges",
    "replay_gather",
]


@dataclass(frozen=True)
class SensorWindow:
    """One device's samples for one time window of one shot.

    Attributes:
        device_id: owning device (1-based, as in topology.yaml).
        gather_id: shot-gather number.
        shot: shot index within the gather (0-based).
        seq: window number within the gather, 0 .. n_shots * windows_per_shot - 1.
        start_sample: first time sample of the window within its shot.
        receivers: the device's receiver index range ``(start, stop)``.
        capture_time_ns: clock time (ns) at which the window's last sample was captured.
        samples: ``(n_samples, stop - start)`` float32 raw amplitudes.
    """

    device_id: int
    gather_id: int
    shot: int
    seq: int
    start_sample: int
    receivers: tuple[int, int]
    capture_time_ns: int
    samples: np.ndarray = field(repr=False)


def receiver_ranges(n_devices: int = 5, n_receivers: int = 70) -> list[tuple[int, int]]:
    """Split ``n_receivers`` into ``n_devices`` contiguous ranges of equal size.

    Device i (0-based) owns ``[i * k, (i + 1) * k)`` with ``k = n_receivers / n_devices``.
    """
    if n_devices < 1 or n_receivers % n_devices:
        raise InputError(
            f"cannot split {n_receivers} receivers evenly over {n_devices} devices"
        )
    k = n_receivers // n_devices
    return [(i * k, (i + 1) * k) for i in range(n_devices)]


def _check_gather(gather: np.ndarray) -> np.ndarray:
    gather = np.asarray(gather)
    if gather.ndim != 3 or gather.dtype != np.float32:
        raise InputError(
            f"shot-gather: got shape {gather.shape} dtype {gather.dtype}, "
            "expected (shots, time, receivers) float32"
        )
    return gather


def replay_gather(
    gather: np.ndarray,
    gather_id: int,
    devices: Sequence[tuple[int, tuple[int, int]]],
    window_samples: int = 100,
    sample_rate_hz: float = 1000.0,
    realtime: bool = False,
    start_ns: int | None = None,
    clock_ns: Callable[[], int] = time.monotonic_ns,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[SensorWindow]:
    """Yield every device's windows of one gather in capture order.

    Args:
        gather: ``(shots, nt, receivers)`` float32 raw amplitudes.
        gather_id: the gather's number, copied into each window.
        devices: ``(device_id, (rx_start, rx_stop))`` for each device.
        window_samples: samples per window; must divide ``nt``.
        sample_rate_hz: sampling rate; sets capture times and real-time pacing.
        realtime: sleep until each window's capture time; otherwise yield at once.
        start_ns: capture time of sample 0 of shot 0 (default: now, from ``clock_ns``).

    Capture time of a window = start + (shot * nt + last sample + 1) / rate.
    """
    gather = _check_gather(gather)
    n_shots, nt, n_rx = gather.shape
    if window_samples < 1 or nt % window_samples:
        raise InputError(f"window_samples={window_samples} must divide the trace length {nt}")
    if sample_rate_hz <= 0:
        raise InputError(f"sample_rate_hz must be > 0, got {sample_rate_hz}")
    for device_id, (lo, hi) in devices:
        if not 0 <= lo < hi <= n_rx:
            raise InputError(f"device {device_id}: receivers [{lo}, {hi}) outside 0..{n_rx}")
    t0 = clock_ns() if start_ns is None else start_ns
    period_ns = 1e9 / sample_rate_hz
    windows_per_shot = nt // window_samples
    for shot in range(n_shots):
        for w in range(windows_per_shot):
            start = w * window_samples
            capture_ns = t0 + round((shot * nt + start + window_samples) * period_ns)
            if realtime:
                wait_s = (capture_ns - clock_ns()) / 1e9
                if wait_s > 0:
                    sleep(wait_s)
            for device_id, (lo, hi) in devices:
                yield SensorWindow(
                    device_id=device_id,
                    gather_id=gather_id,
                    shot=shot,
                    seq=shot * windows_per_shot + w,
                    start_sample=start,
                    receivers=(lo, hi),
                    capture_time_ns=capture_ns,
                    samples=np.ascontiguousarray(
                        gather[shot, start : start + window_samples, lo:hi]
                    ),
                )


class GatherAssembler:
    """Collect one device's windows into complete shot-gathers ``(n_shots, nt, n_rx)``.

    :meth:`add` returns the finished gather when its last window arrives, else None. A window
    for the wrong receivers, a repeated sequence number or a wrong shape raises InputError.
    """

    def __init__(self, n_shots: int = 5, nt: int = 1000, receivers: tuple[int, int] = (0, 14)):
        self.n_shots, self.nt, self.receivers = n_shots, nt, tuple(receivers)
        # gather id -> (buffer, (shot, start) keys seen, samples filled per shot-time)
        self._partial: dict[int, tuple[np.ndarray, set[tuple[int, int]], list[int]]] = {}

    def add(self, window: SensorWindow) -> np.ndarray | None:
        lo, hi = self.receivers
        if tuple(window.receivers) != (lo, hi):
            raise InputError(
                f"window {window.gather_id}/{window.seq}: receivers {window.receivers}, "
                f"this assembler holds {self.receivers}"
            )
        n = window.samples.shape[0]
        if window.samples.shape != (n, hi - lo) or window.start_sample + n > self.nt:
            raise InputError(
                f"window {window.gather_id}/{window.seq}: samples shape {window.samples.shape} "
                f"at {window.start_sample} do not fit ({self.nt}, {hi - lo})"
            )
        if not 0 <= window.shot < self.n_shots:
            raise InputError(
                f"window {window.gather_id}/{window.seq}: shot {window.shot} outside "
                f"0..{self.n_shots - 1}"
            )
        buf, seen, filled = self._partial.setdefault(
            window.gather_id,
            (np.empty((self.n_shots, self.nt, hi - lo), np.float32), set(), [0]),
        )
        key = (window.shot, window.start_sample)
        if key in seen:
            raise InputError(f"window {window.gather_id}/{window.seq}: duplicate")
        seen.add(key)
        buf[window.shot, window.start_sample : window.start_sample + n] = window.samples
        filled[0] += n
        if filled[0] >= self.n_shots * self.nt:
            del self._partial[window.gather_id]
            return buf
        return None

    @property
    def pending(self) -> list[int]:
        """Gather ids with some but not all windows."""
        return sorted(self._partial)
