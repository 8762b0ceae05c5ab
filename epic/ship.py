"""Shipped checkpoints: what a weight storage costs in fidelity, and re-storing an artifact.

Shipped checkpoints (``artifacts/*.pt``) store their weights in float16 or int8
(:mod:`epic.models.checkpoint`). The storage must cost (almost) no fidelity:

- float16: |MAE_float16 - MAE_float32| <= :data:`FLOAT16_MAE_BAR` (normalised scale);
- int8 (per-channel weights): |MAE_int8 - MAE_float32| / MAE_float32 <= :data:`INT8_MAE_BAR`.

:func:`shipped_copy` stores a model the way it ships and loads it back (what a user of the
artifact gets); :func:`storage_record` writes the manifest fields of a storage
(``weights_dtype``, float32 and shipped test metrics, relative MAE change) and
:func:`check_storage` applies the bar. ``bench/ship_artifact.py`` uses them for a training
run; the command below re-stores an artifact that has already shipped (its float32 weights
gone, e.g. float16 -> int8) and updates its ``artifacts/manifest.json`` entry:

    .venv/bin/python -m epic.ship artifacts/inversionnet-flatvel-a.pt --weights int8 \\
        --test data/full/flatvel-a/test --limit 200

It scores the artifact as it is and the re-stored copy on the same test gathers, checks that
the artifact as it is reproduces its manifest ``test_metrics`` (so the float32 figures of the
manifest were measured on the same gathers), applies the bar against those float32 figures,
re-measures the fixed subset of the manifest entry (``subset``, re-synthesised from its
maps, as ``tests/unit/test_artifacts.py`` does), and only then replaces the artifact and its
manifest entry. The decoders exported from the artifact must be exported again afterwards
(``epic export-decoders``): their byte offsets and sha256 point into the old file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch import nn

from epic.errors import DataError, InputError
from epic.models.checkpoint import (
    INT8_SCHEME,
    WEIGHTS,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
    weights_dtype,
)

__all__ = ["FLOAT16_MAE_BAR", "INT8_MAE_BAR", "check_storage", "restore_artifact",
           "shipped_copy", "storage_record"]

FLOAT16_MAE_BAR = 1e-3
"""Largest accepted |MAE_float16 - MAE_float32| (absolute, normalised velocity scale)."""

INT8_MAE_BAR = 0.01
"""Largest accepted |MAE_int8 - MAE_float32| / MAE_float32 (issue 14: 1 %)."""

METRICS = ("mae", "rmse", "ssim")


def shipped_copy(model: nn.Module, name: str, config: dict, dataset: str, weights: str,
                 directory: str | Path, float32_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """``model`` saved with ``weights`` storage in ``directory/shipped-WEIGHTS.pt`` and loaded
    back: a float32 model with exactly the weights the shipped file gives."""
    path = save_checkpoint(Path(directory) / f"shipped-{weights}.pt", model, name, config,
                           dataset, weights=weights, float32_prefixes=float32_prefixes)
    return load_checkpoint(path)[0]


def storage_record(full: dict, shipped: dict, weights: str) -> dict:
    """Manifest fields of a shipped storage.

    Args:
        full: ``{"mae", "rmse", "ssim"}`` of the float32 weights on the test split.
        shipped: the same metrics of the shipped (stored and reloaded) weights.
        weights: the storage (:data:`~epic.models.checkpoint.WEIGHTS`).

    Returns:
        ``weights_dtype``, ``test_metrics_float32``, ``test_metrics`` (shipped) and
        ``test_change``: per metric the shipped minus float32 value, and ``mae_rel``, the
        relative MAE change ``(MAE_shipped - MAE_float32) / MAE_float32``.
    """
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    change = {k: shipped[k] - full[k] for k in METRICS}
    change["mae_rel"] = change["mae"] / full["mae"] if full["mae"] else float("inf")
    record = {"weights_dtype": weights, "test_metrics_float32": dict(full),
              "test_metrics": dict(shipped), "test_change": change}
    if weights == "int8":
        record["quantization"] = dict(INT8_SCHEME)
    return record


def check_storage(record: dict) -> None:
    """Raise InputError when ``record`` (:func:`storage_record`) misses its storage's bar."""
    weights, change = record["weights_dtype"], record["test_change"]
    if weights == "float16" and abs(change["mae"]) > FLOAT16_MAE_BAR:
        raise InputError(f"float16 changes the test MAE by {change['mae']:+.2e} "
                         f"(bar {FLOAT16_MAE_BAR:.0e})")
    if weights == "int8" and abs(change["mae_rel"]) > INT8_MAE_BAR:
        raise InputError(f"int8 changes the test MAE by {100 * change['mae_rel']:+.2f} % "
                         f"(bar {100 * INT8_MAE_BAR:.0f} %)")


def _metrics(model: nn.Module, x: np.ndarray, y: np.ndarray) -> dict:
    import torch

    from epic.metrics import fidelity
    from epic.train import predict

    with torch.no_grad():
        return fidelity(predict(model, x), y)


def restore_artifact(artifact: str | Path, weights: str, test_dir: str | Path,
                     manifest_path: str | Path = "artifacts/manifest.json",
                     limit: int | None = None, maps_dir: str | Path | None = None,
                     threads: int = 2, dry_run: bool = False, command: str | None = None
                     ) -> dict:
    """Re-store a shipped artifact with ``weights`` storage and update its manifest entry.

    Args:
        artifact: a checkpoint listed in ``manifest_path`` (by file name).
        weights: the new storage (:data:`~epic.models.checkpoint.WEIGHTS`).
        test_dir: the test split of the entry's ``test_metrics`` (or a superset in the same
            order: ``limit`` takes its first gathers).
        maps_dir: folder of the subset's maps archive (default: the entry's path).
        dry_run: measure and report only; the artifact and manifest stay as they are.

    Returns:
        The new manifest entry (with ``restore``: what was compared and measured).

    Raises:
        DataError: the artifact is not in the manifest, or the test gathers are not those
            of its ``test_metrics`` (the artifact as it is does not reproduce them).
        InputError: the new storage misses its bar (:func:`check_storage`).
    """
    import torch

    from epic.data.normalized import load_normalized
    from epic.data.synth import synthesize

    t0 = time.perf_counter()
    artifact, manifest_path = Path(artifact), Path(manifest_path)
    manifest = json.loads(manifest_path.read_text())
    entry = manifest.get("checkpoints", {}).get(artifact.name)
    if entry is None:
        raise DataError(f"{manifest_path}: no entry for {artifact.name}")
    torch.set_num_threads(threads)
    model, ckpt = load_checkpoint(artifact, expected_model=entry["model"])
    before = weights_dtype(ckpt)
    split = load_normalized(test_dir, limit=limit)
    as_is = _metrics(model, split.x, split.y)
    recorded = entry["test_metrics"]
    if any(abs(as_is[k] - recorded[k]) > 1e-5 for k in METRICS):
        raise DataError(f"{test_dir} (first {len(split.x)}): {artifact.name} as stored scores "
                        f"{as_is}, its manifest says {recorded}: not the same test gathers")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = convert_checkpoint(artifact, Path(tmp) / artifact.name, weights)
        new_model, _ = load_checkpoint(tmp_path)
        new = _metrics(new_model, split.x, split.y)
        size_new = tmp_path.stat().st_size
        record = storage_record(entry["test_metrics_float32"], new, weights)
        check_storage(record)
        subset = entry["subset"]
        maps = (Path(maps_dir) / Path(subset["maps"]).name if maps_dir is not None
                else Path(subset["maps"]))
        synthesize(entry["dataset"], subset["first"], subset["seed"], Path(tmp) / "subset",
                   maps_path=maps, threads=threads)
        sub = load_normalized(Path(tmp) / "subset")
        subset_metrics = _metrics(new_model, sub.x, sub.y)
    size_before = artifact.stat().st_size
    new_entry = {**entry, **record,
                 "subset": {**subset, "metrics": subset_metrics},
                 "size_bytes": size_new,
                 "restore": {
                     "from": before, "to": weights, "command": command,
                     "size_bytes_before": size_before, "size_bytes": size_new,
                     "test": {"data": str(test_dir), "samples": len(split.x)},
                     f"test_metrics_{before}": as_is,
                     "note": (f"re-stored from the shipped {before} weights (the float32 ones "
                              "are not shipped); test_metrics_float32 are the training run's, "
                              f"on the same gathers (the {before} artifact reproduces its "
                              "recorded test_metrics on them)"),
                     "subset_metrics_before": subset["metrics"],
                     "wall_s": round(time.perf_counter() - t0, 1)}}
    if not dry_run:
        convert_checkpoint(artifact, artifact, weights,
                           meta={k: v for k, v in new_entry.items() if k != "file"})
        if artifact.stat().st_size != size_new:  # same weights, a slightly different meta
            new_entry["size_bytes"] = new_entry["restore"]["size_bytes"] = \
                artifact.stat().st_size
        manifest["checkpoints"][artifact.name] = new_entry
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    return new_entry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m epic.ship",
                                description="Re-store a shipped checkpoint (e.g. float16 -> "
                                            "int8) and update its manifest entry.")
    p.add_argument("artifact", type=Path)
    p.add_argument("--weights", choices=WEIGHTS, required=True)
    p.add_argument("--test", type=Path, required=True, help="the entry's test split")
    p.add_argument("--limit", type=int, help="first N test gathers (the entry's test_samples)")
    p.add_argument("--manifest", type=Path, default=Path("artifacts/manifest.json"))
    p.add_argument("--maps-dir", type=Path, help="folder of the subset's maps archive")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dry-run", action="store_true")
    a = p.parse_args(argv)
    command = "python -m epic.ship " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        entry = restore_artifact(a.artifact, a.weights, a.test, a.manifest, a.limit,
                                 a.maps_dir, a.threads, a.dry_run, command)
    except InputError as exc:
        print(f"epic.ship: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
