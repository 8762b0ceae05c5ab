"""Evaluation: ``epic evaluate --model NAME --checkpoint PATH --data DIR --out result.json``.

Writes a JSON result with top-level ``mae``, ``rmse`` (normalised scale) and ``ssim``
([0, 1]), the number of samples, the devices dropped, and a PNG of truth, prediction and
error for a few samples beside the JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from epic.accel import check_device
from epic.data.normalized import load_normalized
from epic.data.transforms import denormalize_velocity
from epic.errors import InputError
from epic.metrics import fidelity
from epic.models.checkpoint import load_checkpoint
from epic.models.registry import DISTRIBUTED
from epic.train import predict

__all__ = ["drop_presence", "evaluate", "plot_predictions"]


def drop_presence(n: int, n_devices: int, k: int, seed: int) -> np.ndarray:
    """``(n, n_devices)`` bool with exactly ``k`` random devices absent in every row."""
    if not 0 <= k < n_devices:
        raise InputError(f"--drop-devices must be within 0..{n_devices - 1}, got {k}")
    rng = np.random.default_rng(seed)
    present = np.ones((n, n_devices), bool)
    for row in range(n):
        present[row, rng.choice(n_devices, size=k, replace=False)] = False
    return present


def plot_predictions(true: np.ndarray, pred: np.ndarray, out_png: Path, title: str,
                     n: int = 3) -> Path:
    """Rows of truth, prediction and |error| (m/s) for the first ``n`` samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(true))
    fig, axes = plt.subplots(n, 3, figsize=(9, 2.9 * n), squeeze=False)
    for i in range(n):
        t, p = denormalize_velocity(true[i, 0]), denormalize_velocity(pred[i, 0])
        for ax, img, label, kw in (
            (axes[i, 0], t, "truth", {"vmin": 1500, "vmax": 4500}),
            (axes[i, 1], p, "prediction", {"vmin": 1500, "vmax": 4500}),
            (axes[i, 2], np.abs(p - t), "|error| m/s", {"vmin": 0, "vmax": 600, "cmap": "magma"}),
        ):
            im = ax.imshow(img, extent=(0, 700, 700, 0), **kw)
            ax.set_title(f"{label} #{i}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return out_png


def evaluate(model_name: str, checkpoint: str | Path, data_dir: str | Path,
             out_json: str | Path, drop_devices: int = 0, seed: int = 0,
             limit: int | None = None, dataset: str | None = None, device: str = "cpu"
             ) -> dict:
    """Evaluate a checkpoint on a dataset directory and write the result JSON (+ PNG).

    Runs in float32 on ``device`` (``cpu`` or ``cuda[:N]``).
    """
    device = check_device(device)
    model, ckpt = load_checkpoint(checkpoint, expected_model=model_name)
    model = model.to(device)
    split = load_normalized(data_dir, dataset=dataset, limit=limit)
    present = None
    if drop_devices:
        if model_name not in DISTRIBUTED:
            raise InputError(f"--drop-devices applies to distributed models, not {model_name!r}")
        present = drop_presence(len(split.x), 5, drop_devices, seed)
    pred = predict(model, split.x, present, device=device)
    result = {
        **fidelity(pred, split.y),
        "model": model_name,
        "checkpoint": str(checkpoint),
        "data": str(data_dir),
        "dataset": split.spec.name,
        "samples": len(split.x),
        "drop_devices": drop_devices,
        "seed": seed,
        "trained_epochs": ckpt["meta"].get("epoch"),
    }
    out_json = Path(out_json)
    png = plot_predictions(split.y, pred, out_json.with_suffix(".png"),
                           f"{model_name} on {split.spec.title}: MAE {result['mae']:.4f}, "
                           f"SSIM {result['ssim']:.3f}")
    result["figure"] = str(png)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    return result
