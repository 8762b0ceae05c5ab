"""Fidelity metrics as OpenFWI reports them.

MAE and RMSE on the normalised velocity scale [-1, 1]; SSIM on [0, 1] (``(v + 1) / 2``)
with scikit-image's implementation, Gaussian window sigma 1.5 (11 x 11), population
covariance: the settings of Wang et al. (2004) that OpenFWI's pytorch-ssim uses.
"""

from __future__ import annotations

import numpy as np
from skimage.metrics import structural_similarity

__all__ = ["fidelity", "per_sample_fidelity"]


def per_sample_fidelity(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """``pred``, ``true``: ``(N, 1, 70, 70)`` normalised velocity -> per-sample mae/rmse/ssim."""
    pred = np.asarray(pred, np.float64).reshape(len(pred), -1, pred.shape[-1])
    true = np.asarray(true, np.float64).reshape(len(true), -1, true.shape[-1])
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from truth {true.shape}")
    err = pred - true
    mae = np.abs(err).mean(axis=(1, 2))
    rmse = np.sqrt((err**2).mean(axis=(1, 2)))
    ssim = np.array([
        structural_similarity((t + 1) / 2, np.clip((p + 1) / 2, 0, 1), data_range=1.0,
                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        for p, t in zip(pred, true, strict=True)
    ])
    return {"mae": mae, "rmse": rmse, "ssim": ssim}


def fidelity(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Mean MAE, RMSE (normalised scale) and SSIM ([0, 1]) over samples."""
    per = per_sample_fidelity(pred, true)
    return {"mae": float(per["mae"].mean()),
            "rmse": float(np.sqrt((per["rmse"] ** 2).mean())),  # over all pixels of the set
            "ssim": float(per["ssim"].mean())}
