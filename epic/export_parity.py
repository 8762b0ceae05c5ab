"""Parity of int8 device encoders against float: the latent error per device and the
end-to-end fidelity of int8 encoders + float decoder against all-float.

The int8 side is the devices' own torch-free runtime (`epic.inference.EncoderRuntime`), so
the report measures the code the devices run.
"""

from __future__ import annotations

import numpy as np
import torch

from epic.data.openfwi import DatasetSpec, OpenFWIDataset
from epic.data.transforms import normalize_data, normalize_velocity
from epic.inference.encoder import EncoderRuntime
from epic.metrics import fidelity
from epic.models.epic import DistributedModel

__all__ = ["MAE_GROWTH_TARGET", "normalised_samples", "parity_report"]

MAE_GROWTH_TARGET = 0.02
"""Largest accepted relative growth of the end-to-end MAE from int8 encoders (2 %)."""


def _samples(ds: OpenFWIDataset, indices: np.ndarray, spec: DatasetSpec
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Samples ``indices`` of ``ds``: ``(n, 5, 1000, 70)`` raw amplitudes, the same data and
    ``(n, 1, 70, 70)`` velocity (None without velocity shards) on OpenFWI's normalised
    scales."""
    raws, xs, ys = [], [], []
    for i in indices:
        data, velocity = ds[int(i)]
        raws.append(data)
        xs.append(normalize_data(data, spec.data_min, spec.data_max))
        if velocity is not None:
            ys.append(normalize_velocity(velocity, spec.velocity_min_mps, spec.velocity_max_mps))
    return np.stack(raws), np.stack(xs), (np.stack(ys) if len(ys) == len(xs) else None)


def normalised_samples(ds: OpenFWIDataset, indices: np.ndarray, spec: DatasetSpec
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """`_samples` without the raw amplitudes: ``(x, y)`` on the normalised scales."""
    _, x, y = _samples(ds, indices, spec)
    return x, y


def _latent_error(float_latent: np.ndarray, int8_latent: np.ndarray) -> dict:
    """Error of dequantised int8 latents against float, both ``(N, k, token_dim)``."""
    f = float_latent.reshape(len(float_latent), -1).astype(np.float64)
    q = int8_latent.reshape(len(int8_latent), -1).astype(np.float64)
    err = q - f
    rmse, std = float(np.sqrt((err**2).mean())), float(f.std())
    norms = np.linalg.norm(f, axis=1) * np.linalg.norm(q, axis=1)
    cosine = (f * q).sum(axis=1) / np.maximum(norms, 1e-30)
    return {"max_abs": float(np.abs(err).max()), "rmse": rmse, "latent_std": std,
            "rmse_rel_std": rmse / std if std > 0 else float("inf"),
            "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min()),
            "samples": len(f)}


@torch.no_grad()
def parity_report(model: DistributedModel, encoders: dict[int, EncoderRuntime], ds: OpenFWIDataset,
            indices: np.ndarray, spec: DatasetSpec, end_to_end: bool, batch: int = 16) -> dict:
    """Run float and int8 encoders over ``indices`` of ``ds``; the latent error per device
    and, with ``end_to_end``, the fidelity of int8 encoders + float decoder vs all-float.

    The int8 side is the devices' own runtime (`epic.inference.EncoderRuntime`): it takes
    the raw amplitudes, normalises, quantises and runs the ``.tflite`` as a device does."""
    k = model.rx_per_device
    float_lat = {d: [] for d in encoders}
    int8_lat = {d: [] for d in encoders}
    pred_float, pred_int8, truth = [], [], []
    for start in range(0, len(indices), batch):
        raw, x, y = _samples(ds, indices[start:start + batch], spec)
        tokens = model.encode(torch.from_numpy(x))  # (B, n_devices, k, token_dim)
        tokens_q = tokens.clone()
        for d, enc in encoders.items():
            gathers = raw[..., (d - 1) * k:d * k]  # (B, 5, 1000, k) raw amplitudes
            q = np.stack([enc.dequantize(enc.encode(g)) for g in gathers])  # (B, k, token_dim)
            tokens_q[:, d - 1] = torch.from_numpy(q)
            float_lat[d].append(tokens[:, d - 1].numpy())
            int8_lat[d].append(q)
        if end_to_end:
            present = torch.ones(len(x), model.n_devices, dtype=torch.bool)
            pred_float.append(model.decode(tokens, present).numpy())
            pred_int8.append(model.decode(tokens_q, present).numpy())
            truth.append(y)
    report = {"latent": {f"device-{d}": _latent_error(np.concatenate(float_lat[d]),
                                                       np.concatenate(int8_lat[d]))
                         for d in encoders}}
    if end_to_end:
        pf, pq, yt = (np.concatenate(a) for a in (pred_float, pred_int8, truth))
        f_float, f_int8 = fidelity(pf, yt), fidelity(pq, yt)
        growth = (f_int8["mae"] - f_float["mae"]) / f_float["mae"]
        report["end_to_end"] = {
            "samples": len(yt), "float": f_float, "int8_encoders": f_int8,
            "int8_devices": sorted(encoders),
            "mae_relative_growth": growth, "mae_growth_target": MAE_GROWTH_TARGET,
            "meets_target": bool(growth <= MAE_GROWTH_TARGET),
            "prediction_mae_int8_vs_float": float(np.abs(pq - pf).mean()),
        }
    return report
