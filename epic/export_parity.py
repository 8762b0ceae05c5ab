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

__all__ = ["MAE_GROWTH_TARGET", "decode_latents", "normalised_samples", "paired_latents",
           "parity_report", "samples"]

MAE_GROWTH_TARGET = 0.02
"""Largest accepted relative change of the end-to-end MAE from int8 encoders (2 %, either
way: parity means the int8 devices behave like the float model, not merely no worse)."""


def samples(ds: OpenFWIDataset, indices: np.ndarray, spec: DatasetSpec
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
    """`samples` without the raw amplitudes: ``(x, y)`` on the normalised scales."""
    _, x, y = samples(ds, indices, spec)
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
def paired_latents(model: DistributedModel, encoders: dict[int, EncoderRuntime],
                   ds: OpenFWIDataset, indices: np.ndarray, spec: DatasetSpec, batch: int = 16
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The float and the int8 latents of samples ``indices`` of ``ds``.

    Returns ``(float_tokens, int8_tokens, y)``: both ``(N, n_devices, k, token_dim)`` float32,
    the int8 side dequantised, and ``y`` the ``(N, 1, 70, 70)`` normalised velocity (None
    without velocity shards). Devices without an encoder in ``encoders`` keep their float
    latents on the int8 side. The int8 side is the devices' own runtime
    (`epic.inference.EncoderRuntime`): it takes the raw amplitudes, normalises, quantises and
    runs the ``.tflite`` as a device does.
    """
    k = model.rx_per_device
    floats, int8s, ys = [], [], []
    for start in range(0, len(indices), batch):
        raw, x, y = samples(ds, indices[start:start + batch], spec)
        tokens = model.encode(torch.from_numpy(x)).numpy()  # (B, n_devices, k, token_dim)
        tokens_q = tokens.copy()
        for d, enc in encoders.items():
            gathers = raw[..., (d - 1) * k:d * k]  # (B, 5, 1000, k) raw amplitudes
            tokens_q[:, d - 1] = np.stack([enc.dequantize(enc.encode(g)) for g in gathers])
        floats.append(tokens)
        int8s.append(tokens_q)
        if y is not None:
            ys.append(y)
    y_all = np.concatenate(ys) if len(ys) == len(floats) and ys else None
    return np.concatenate(floats), np.concatenate(int8s), y_all


@torch.no_grad()
def decode_latents(model: DistributedModel, tokens: np.ndarray, batch: int = 16) -> np.ndarray:
    """``(N, n_devices, k, token_dim)`` latents, all devices present -> ``(N, 1, 70, 70)``."""
    out = []
    for start in range(0, len(tokens), batch):
        t = torch.from_numpy(np.ascontiguousarray(tokens[start:start + batch]))
        present = torch.ones(len(t), model.n_devices, dtype=torch.bool)
        out.append(model.decode(t, present).numpy())
    return np.concatenate(out)


@torch.no_grad()
def parity_report(model: DistributedModel, encoders: dict[int, EncoderRuntime], ds: OpenFWIDataset,
            indices: np.ndarray, spec: DatasetSpec, end_to_end: bool, batch: int = 16) -> dict:
    """Run float and int8 encoders over ``indices`` of ``ds``; the latent error per device
    and, with ``end_to_end``, the fidelity of int8 encoders + float decoder vs all-float.

    The int8 side is the devices' own runtime (see :func:`paired_latents`)."""
    tokens, tokens_q, yt = paired_latents(model, encoders, ds, indices, spec, batch)
    report = {"latent": {f"device-{d}": _latent_error(tokens[:, d - 1], tokens_q[:, d - 1])
                         for d in encoders}}
    if end_to_end:
        pf, pq = decode_latents(model, tokens, batch), decode_latents(model, tokens_q, batch)
        f_float, f_int8 = fidelity(pf, yt), fidelity(pq, yt)
        growth = (f_int8["mae"] - f_float["mae"]) / f_float["mae"]
        report["end_to_end"] = {
            "samples": len(yt), "float": f_float, "int8_encoders": f_int8,
            "int8_devices": sorted(encoders),
            "mae_relative_growth": growth, "mae_growth_target": MAE_GROWTH_TARGET,
            "meets_target": bool(abs(growth) <= MAE_GROWTH_TARGET),
            "prediction_mae_int8_vs_float": float(np.abs(pq - pf).mean()),
        }
    return report
