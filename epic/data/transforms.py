"""OpenFWI normalisation of seismic data and velocity, and its inverse (numpy only).

Exactly as OpenFWI's ``transforms.py``:

* seismic data: ``y = sign(x) * log1p(|x|)``, then min-max from
  ``[log(data_min), log(data_max)]`` (the dataset's published constants, log-transformed) to
  ``[-1, 1]``;
* velocity: min-max from ``[1500, 4500]`` m/s to ``[-1, 1]``.

Numpy only: the device side (no torch) normalises with the same functions as training.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "VELOCITY_MAX_MPS",
    "VELOCITY_MIN_MPS",
    "denormalize_data",
    "denormalize_velocity",
    "exp_transform",
    "log_transform",
    "normalize_data",
    "normalize_velocity",
]

VELOCITY_MIN_MPS = 1500.0
VELOCITY_MAX_MPS = 4500.0
_SIGN_BIT = np.uint32(0x8000_0000)  # of an IEEE 754 float32


def log_transform(x: np.ndarray | float) -> np.ndarray:
    """``sign(x) * log1p(|x|)``, elementwise; any shape, same dtype for float input."""
    x = np.asarray(x)
    return np.sign(x) * np.log1p(np.abs(x))


def exp_transform(y: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`log_transform`: ``sign(y) * expm1(|y|)``."""
    y = np.asarray(y)
    return np.sign(y) * np.expm1(np.abs(y))


def _check_range(lo: float, hi: float, what: str) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        raise ValueError(f"{what}: need finite min < max, got min={lo!r} max={hi!r}")


def _minmax(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return ((x - lo) / (hi - lo) - 0.5) * 2.0


def _inverse_minmax(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (y / 2.0 + 0.5) * (hi - lo) + lo


def normalize_data(data: np.ndarray, data_min: float, data_max: float,
                   out: np.ndarray | None = None) -> np.ndarray:
    """Normalise seismic amplitudes to about ``[-1, 1]`` (float32, same shape as ``data``).

    ``data_min``/``data_max`` are the dataset's published raw amplitude bounds (for FlatVel-A
    -26.95 and 52.77); they are log-transformed before the min-max, as OpenFWI does.
    """
    _check_range(data_min, data_max, "normalize_data")
    lo, hi = float(log_transform(data_min)), float(log_transform(data_max))
    x = np.asarray(data, dtype=np.float32)
    if out is not None and (out.shape != x.shape or out.dtype != np.float32
                            or not out.flags.c_contiguous or np.shares_memory(out, x)):
        raise ValueError(f"normalize_data: out must be a C-contiguous float32 array of shape "
                         f"{x.shape} not overlapping data, got {out.dtype} {out.shape}")
    # The same float32 operations as ``_minmax(log_transform(x), lo, hi)``, bit for bit (a
    # unit test checks), in one buffer: numpy's float32 ``sign`` and ``copysign`` are not
    # vectorised and cost as much as ``log1p``, so the sign bit is copied as an integer.
    # ``out``: a buffer the caller reuses. A fresh one costs more than the arithmetic: at
    # 280 KB (one device's gather) it is a new mmap whose pages fault in on the first write
    y = np.empty(x.shape, np.float32) if out is None else out
    np.abs(x, out=y)
    np.log1p(y, out=y)
    bits = y.view(np.uint32)
    bits |= x.view(np.uint32) & _SIGN_BIT
    np.subtract(y, lo, out=y)
    np.divide(y, hi - lo, out=y)
    np.subtract(y, 0.5, out=y)
    np.multiply(y, 2.0, out=y)
    return y


def denormalize_data(normalized: np.ndarray, data_min: float, data_max: float) -> np.ndarray:
    """Inverse of :func:`normalize_data`: raw amplitudes (float32, same shape)."""
    _check_range(data_min, data_max, "denormalize_data")
    lo, hi = float(log_transform(data_min)), float(log_transform(data_max))
    y = _inverse_minmax(np.asarray(normalized, dtype=np.float64), lo, hi)
    return exp_transform(y).astype(np.float32)


def normalize_velocity(
    velocity_mps: np.ndarray,
    vmin_mps: float = VELOCITY_MIN_MPS,
    vmax_mps: float = VELOCITY_MAX_MPS,
) -> np.ndarray:
    """Map velocity in m/s from ``[vmin_mps, vmax_mps]`` to ``[-1, 1]`` (float32, same shape)."""
    _check_range(vmin_mps, vmax_mps, "normalize_velocity")
    v = np.asarray(velocity_mps, dtype=np.float32)
    return _minmax(v, vmin_mps, vmax_mps).astype(np.float32)


def denormalize_velocity(
    normalized: np.ndarray,
    vmin_mps: float = VELOCITY_MIN_MPS,
    vmax_mps: float = VELOCITY_MAX_MPS,
) -> np.ndarray:
    """Inverse of :func:`normalize_velocity`: velocity in m/s (float32, same shape)."""
    _check_range(vmin_mps, vmax_mps, "denormalize_velocity")
    y = np.asarray(normalized, dtype=np.float32)
    return _inverse_minmax(y, vmin_mps, vmax_mps).astype(np.float32)
