"""Acoustic forward modelling with OpenFWI's acquisition, using deepwave's scalar propagator.

OpenFWI's geometry (``dataset_config.json`` and the paper): a 70 x 70 grid at 10 m, 1000 time
samples at 1 ms, a 15 Hz Ricker source, 5 sources at x index 0, 17, 34, 52 and 69, and 70
receivers at every x index, both at depth index 1 (10 m). Boundaries absorb on every side.

Polarity and scale: deepwave's scalar propagator records a positive source term as a negative
direct wave; OpenFWI's data has a positive direct wave (FlatVel-A spans -26.95..+52.77). We
negate, and keep unit source amplitude: measured on real FlatVel-A maps, the amplitude range
then matches OpenFWI's published constants (see ``docs/data.md`` and the tests).

``max_vel`` and ``pml_freq`` are fixed, so the internal time step and absorbing layer do not
depend on the velocity map: a gather depends on its map alone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from epic.errors import InputError

__all__ = ["OPENFWI_ACQUISITION", "Acquisition", "forward_model"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Acquisition:
    """A surface acquisition on a regular 2-D grid (indices count grid cells from 0).

    Attributes:
        nz, nx: model shape (depth, horizontal) in cells.
        dx_m: grid spacing in metres (both axes).
        dt_s: output sample interval in seconds; nt: samples per trace.
        freq_hz: Ricker peak frequency; peak_time_s: time of the Ricker peak.
        source_x_idx, source_z_idx: source positions; receiver_z_idx: receiver depth
            (receivers sit at every x index).
        pml_width: absorbing cells added on each side; pml_freq_hz and max_vel_mps are
            fixed so that the discretisation does not depend on the model.
        accuracy: spatial finite-difference order.
        polarity: multiplies deepwave's output (-1 gives OpenFWI's positive direct wave).
    """

    nz: int = 70
    nx: int = 70
    dx_m: float = 10.0
    dt_s: float = 1e-3
    nt: int = 1000
    freq_hz: float = 15.0
    peak_time_s: float = 0.1
    source_x_idx: tuple[int, ...] = (0, 17, 34, 52, 69)
    source_z_idx: int = 1
    receiver_z_idx: int = 1
    pml_width: int = 20
    pml_freq_hz: float = 15.0
    max_vel_mps: float = 4500.0
    accuracy: int = 4
    polarity: float = -1.0

    @property
    def n_shots(self) -> int:
        return len(self.source_x_idx)

    @property
    def receiver_x_m(self) -> np.ndarray:
        """Receiver x positions in metres, shape (nx,)."""
        return np.arange(self.nx) * self.dx_m

    @property
    def source_x_m(self) -> np.ndarray:
        """Source x positions in metres, shape (n_shots,)."""
        return np.asarray(self.source_x_idx, dtype=np.float64) * self.dx_m

    def to_dict(self) -> dict:
        return asdict(self)


OPENFWI_ACQUISITION = Acquisition()


def _as_maps(velocity_mps: np.ndarray, acq: Acquisition) -> np.ndarray:
    v = np.asarray(velocity_mps, dtype=np.float32)
    if v.ndim == 4 and v.shape[1] == 1:
        v = v[:, 0]
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[1:] != (acq.nz, acq.nx):
        raise InputError(
            f"velocity maps: shape {np.shape(velocity_mps)}, expected (N, 1, {acq.nz}, "
            f"{acq.nx}), (N, {acq.nz}, {acq.nx}) or ({acq.nz}, {acq.nx})"
        )
    if not np.isfinite(v).all():
        raise InputError("velocity maps: contain NaN or Inf")
    vmin, vmax = float(v.min()), float(v.max())
    if vmin <= 0 or vmax > acq.max_vel_mps:
        raise InputError(
            f"velocity maps: values {vmin:.1f}..{vmax:.1f} m/s, expected within "
            f"(0, {acq.max_vel_mps}] m/s"
        )
    return v


def forward_model(
    velocity_mps: np.ndarray,
    acquisition: Acquisition = OPENFWI_ACQUISITION,
    batch_size: int = 8,
    threads: int | None = None,
    progress: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """Simulate shot-gathers for velocity maps.

    Args:
        velocity_mps: ``(N, 1, nz, nx)``, ``(N, nz, nx)`` or ``(nz, nx)`` velocities in m/s.
        acquisition: the survey; OpenFWI's by default.
        batch_size: maps propagated together (each contributes ``n_shots`` deepwave shots).
        threads: torch intra-op threads for the run (None keeps torch's setting).
        progress: show a tqdm progress bar over maps.
        device: ``cpu`` or ``cuda[:N]``: where deepwave propagates.

    Returns:
        ``(N, n_shots, nt, nx)`` float32 receiver amplitudes, OpenFWI's polarity and scale.
    """
    import deepwave
    import torch
    from tqdm import tqdm

    from epic.accel import check_device

    acq = acquisition
    device = check_device(device)
    maps = _as_maps(velocity_mps, acq)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    wavelet = deepwave.wavelets.ricker(
        acq.freq_hz, acq.nt, acq.dt_s, acq.peak_time_s, dtype=torch.float32
    ).to(device)
    out = np.empty((len(maps), acq.n_shots, acq.nt, acq.nx), dtype=np.float32)
    bar = tqdm(total=len(maps), unit="gather", desc="forward", disable=not progress)
    try:
        for start in range(0, len(maps), batch_size):
            chunk = torch.from_numpy(maps[start : start + batch_size].copy()).to(device)
            n = len(chunk) * acq.n_shots
            src = torch.zeros(n, 1, 2, dtype=torch.long)
            src[:, 0, 0] = acq.source_z_idx
            src[:, 0, 1] = torch.tensor(acq.source_x_idx).repeat(len(chunk))
            rec = torch.zeros(n, acq.nx, 2, dtype=torch.long)
            rec[:, :, 0] = acq.receiver_z_idx
            rec[:, :, 1] = torch.arange(acq.nx)
            with torch.no_grad():
                result = deepwave.scalar(
                    chunk.repeat_interleave(acq.n_shots, dim=0),
                    acq.dx_m,
                    acq.dt_s,
                    source_amplitudes=wavelet.repeat(n, 1, 1),
                    source_locations=src.to(device),
                    receiver_locations=rec.to(device),
                    accuracy=acq.accuracy,
                    pml_width=acq.pml_width,
                    pml_freq=acq.pml_freq_hz,
                    max_vel=acq.max_vel_mps,
                )
            traces = result[-1]  # (n, nx, nt)
            gathers = traces.reshape(len(chunk), acq.n_shots, acq.nx, acq.nt).permute(0, 1, 3, 2)
            out[start : start + len(chunk)] = acq.polarity * gathers.cpu().numpy()
            bar.update(len(chunk))
    finally:
        bar.close()
        torch.set_num_threads(previous_threads)
    return out
