"""Figures: a velocity map beside its shot-gather."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from epic.data.forward import OPENFWI_ACQUISITION, Acquisition
from epic.data.transforms import log_transform

__all__ = ["plot_sample"]


def plot_sample(
    velocity_mps: np.ndarray,
    gather: np.ndarray,
    out_png: str | Path,
    title: str = "",
    acquisition: Acquisition = OPENFWI_ACQUISITION,
    shots: tuple[int, ...] = (0, 2, 4),
) -> Path:
    """Write a PNG of one velocity map beside some of its shots.

    Args:
        velocity_mps: ``(1, nz, nx)`` or ``(nz, nx)`` velocity in m/s.
        gather: ``(n_shots, nt, nx)`` raw amplitudes.
        shots: which shots to draw (their sources are marked on the map).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acq = acquisition
    v = np.asarray(velocity_mps).reshape(acq.nz, acq.nx)
    extent_m = (0, acq.nx * acq.dx_m, acq.nz * acq.dx_m, 0)
    fig, axes = plt.subplots(1, 1 + len(shots), figsize=(3.4 * (1 + len(shots)), 3.6))
    im = axes[0].imshow(v, cmap="viridis", vmin=1500, vmax=4500, extent=extent_m)
    axes[0].plot(acq.source_x_m, [acq.source_z_idx * acq.dx_m] * acq.n_shots, "r*", ms=8)
    axes[0].set(title="velocity (m/s)", xlabel="x (m)", ylabel="depth (m)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    # the log gain the models see (OpenFWI's transform) makes reflections visible beside
    # the direct wave, which is ~100x stronger
    shown = log_transform(np.asarray(gather))
    clip = 0.4 * float(np.abs(shown).max()) or 1.0
    for ax, shot in zip(axes[1:], shots, strict=True):
        ax.imshow(shown[shot], cmap="seismic", vmin=-clip, vmax=clip, aspect="auto",
                  extent=(0, acq.nx * acq.dx_m, acq.nt * acq.dt_s, 0))
        ax.set(title=f"shot {shot} (source x={acq.source_x_m[shot]:.0f} m)",
               xlabel="receiver x (m)", ylabel="time (s)")
    if title:
        fig.suptitle(f"{title}; traces shown as sign(x)·log(1+|x|)")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
