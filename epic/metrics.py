"""Fidelity metrics as OpenFWI reports them.

MAE and RMSE on the normalised velocity scale [-1, 1]; SSIM on [0, 1] (``(v + 1) / 2``)
as scikit-image's ``structural_similarity(data_range=1, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False)`` computes it, in numpy (central's image has no scipy): Gaussian
window sigma 1.5 (11 x 11), population covariance, the mean over the pixels at least 5 from
the border: the settings of Wang et al. (2004) that OpenFWI's pytorch-ssim uses.
tests/unit/test_metrics.py checks it against scikit-image.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fidelity", "per_sample_fidelity", "ssim"]

_SIGMA, _TRUNCATE = 1.5, 3.5  # scikit-image's defaults with gaussian_weights=True
_RADIUS = int(_TRUNCATE * _SIGMA + 0.5)  # 5: an 11 x 11 window
_WEIGHTS = np.exp(-0.5 * (np.arange(-_RADIUS, _RADIUS + 1) / _SIGMA) ** 2)
_WEIGHTS /= _WEIGHTS.sum()


def _blur(image: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter, edges mirrored (scipy.ndimage's "reflect")."""
    out = np.pad(image, _RADIUS, mode="symmetric")
    n = len(_WEIGHTS)
    out = sum(w * out[i:i + out.shape[0] - n + 1, :] for i, w in enumerate(_WEIGHTS))
    return sum(w * out[:, i:i + out.shape[1] - n + 1] for i, w in enumerate(_WEIGHTS))


def ssim(true: np.ndarray, pred: np.ndarray, data_range: float = 1.0) -> float:
    """SSIM of two 2-D images as scikit-image computes it with the settings above."""
    x, y = np.asarray(true, np.float64), np.asarray(pred, np.float64)
    ux, uy = _blur(x), _blur(y)
    vx, vy, vxy = _blur(x * x) - ux * ux, _blur(y * y) - uy * uy, _blur(x * y) - ux * uy
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[_RADIUS:-_RADIUS, _RADIUS:-_RADIUS].mean())


def per_sample_fidelity(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """``pred``, ``true``: ``(N, 1, 70, 70)`` normalised velocity -> per-sample mae/rmse/ssim."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1, pred.shape[-1])
    true = np.asarray(true, np.float64).reshape(len(true), -1, true.shape[-1])
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth {true.shape}")
    err = pred - true
    mae = np.abs(err).mean(axis=(1, 2))
    rmse = np.sqrt((err**2).mean(axis=(1, 2)))
    ssims = np.array([ssim((t + 1) / 2, np.clip((p + 1) / 2, 0, 1))
                      for p, t in zip(pred, true, strict=True)])
    return {"mae": mae, "rmse": rmse, "ssim": ssims}


def fidelity(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean MAE, RMSE (normalised scale) and SSIM ([0, 1]) over samples."""
    per = per_sample_fidelity(pred, true)
    return {"mae": float(per["mae"].mean()),
            "rmse": float(np.sqrt((per["rmse"] ** 2).mean())),  # over all pixels of the set
            "ssim": float(per["ssim"].mean())}
