"""Int8 TFLite export of the EPIC device encoders, one per device, with a parity report.

``export_encoders(checkpoint, calibration_dir, out_dir)`` takes the shared
:class:`~epic.models.encoder.DeviceEncoder` of an EPIC checkpoint and writes, per device
``i`` (1-based, receivers ``[14 (i-1), 14 i)``), ``device-i.tflite``: fully int8 by
litert-torch PT2E static quantisation (int8 per-channel symmetric weights, int8 per-tensor
activations with a ``MinMaxObserver``, int32 biases, int8 input and output), calibrated on
that device's own receiver slice of ``n_calibration`` normalised training gathers. Beside
them: ``manifest.json`` (sha256, size, input/output quantisation of each file, source
checkpoint, calibration data, normalisation constants, tool versions) and ``parity.json``
(latent error of int8, run in the real LiteRT interpreter, against float per device; with
``test_dir`` the end-to-end MAE/RMSE/SSIM of int8 encoders + float decoder against
all-float and the relative MAE growth, target <= 2 %).

By concern: the PT2E int8 quantisation is :mod:`epic.quantize`, the parity measurement
:mod:`epic.export_parity` (on the devices' own torch-free runtime); this module writes the
files and the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from epic.data.openfwi import DatasetSpec, OpenFWIDataset, get_dataset
from epic.data.transforms import normalize_data
from epic.errors import DataError, InputError
from epic.export_parity import MAE_GROWTH_TARGET, parity_report, samples
from epic.inference.encoder import EncoderRuntime
from epic.models.checkpoint import load_checkpoint
from epic.models.epic import DistributedModel
from epic.quantize import OBSERVERS, bias_corrected, quantize_encoder

__all__ = [
    "MAE_GROWTH_TARGET",
    "MANIFEST_FORMAT",
    "ExportResult",
    "export_encoders",
    "sha256_file",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "epic-encoders/1"


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_encoders` wrote: ``encoder_paths`` in device order, the manifest,
    the parity report (and its content) and the wall time in seconds."""

    out_dir: Path
    encoder_paths: tuple[Path, ...]
    manifest_path: Path
    parity_path: Path
    parity: dict
    wall_s: float


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_card(directory: Path, spec: DatasetSpec, dataset: str) -> None:
    from epic.data.synth import read_card

    card = read_card(directory)
    if card is not None and card.get("dataset") not in (None, dataset):
        raise DataError(f"{directory}: card.json names dataset {card.get('dataset')!r}, but the "
                        f"checkpoint was trained on {dataset!r} ({spec.title})")


def _choose(n_available: int, n: int | None, seed: int, what: str) -> np.ndarray:
    if n is None or n >= n_available:
        if n is not None and n > n_available:
            log.warning("%s: asked for %d samples, only %d available; using all", what, n,
                        n_available)
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n, replace=False))


def _convert(encoder: torch.nn.Module, x: np.ndarray, silence: float, float_stem: bool,
             path: Path, spec: DatasetSpec, observer: str) -> EncoderRuntime:
    """Quantise ``encoder`` on ``x`` ``(n, 5, 1000, k)`` (normalised), write the int8
    ``.tflite`` at ``path``; return it loaded in the devices' runtime."""
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    graph, quantizer = quantize_encoder(encoder, x, float_stem, input_anchor=silence,
                                        observer=observer)
    example = (torch.from_numpy(np.ascontiguousarray(x[:1])),)
    edge = litert_torch.convert(graph, example,
                                quant_config=QuantConfig(pt2e_quantizer=quantizer))
    edge.export(str(path))
    return EncoderRuntime(path, 1, data_min=spec.data_min, data_max=spec.data_max,
                          n_receivers=x.shape[-1])


def _mean_latent_error(enc: EncoderRuntime, raw: np.ndarray, float_lat: np.ndarray
                       ) -> np.ndarray:
    """Mean of (int8 - float) latents per channel, ``(token_dim,)``, over the gathers ``raw``
    ``(n, 5, 1000, k)`` (raw amplitudes) and their receivers; ``float_lat`` ``(n, k, D)``."""
    q = np.stack([enc.dequantize(enc.encode(g)) for g in raw])
    return (q - float_lat).mean(axis=(0, 1))


def export_encoders(checkpoint: str | Path, calibration_dir: str | Path, out_dir: str | Path,
                    n_calibration: int = 64, test_dir: str | Path | None = None,
                    n_test: int | None = None, devices: Sequence[int] | None = None,
                    seed: int = 0, threads: int | None = None, float_stem: bool = False,
                    bias_correction: bool = True, observer: str = "histogram") -> ExportResult:
    """Export one int8 ``.tflite`` encoder per device of an EPIC checkpoint.

    Args:
        checkpoint: EPIC (or other distributed model) checkpoint; its ``dataset`` gives the
            normalisation constants.
        calibration_dir: OpenFWI-layout training split; ``n_calibration`` gathers drawn at
            random (``seed``) calibrate every device on its own receiver slice.
        out_dir: receives ``device-i.tflite``, ``manifest.json`` and ``parity.json``.
        test_dir: OpenFWI-layout test split (with velocity) for the end-to-end parity
            (``n_test`` gathers, all by default). Without it, the latent parity is measured
            on the calibration gathers.
        devices: 1-based device ids to export (default all).
        float_stem: keep the first conv block and the input float32 (see
            :func:`quantize_encoder`); by default the model is fully int8, input included.
        threads: torch threads for calibration and parity (default: torch's setting).
        observer: the activations' observer, ``minmax`` or ``histogram``
            (:func:`epic.quantize.quantization_config`).
        bias_correction: measure each device's mean int8 latent error per channel on the
            calibration gathers (in the real LiteRT interpreter), lower the encoder's
            projection bias by it and export again (:func:`epic.quantize.bias_corrected`);
            the manifest records the shift and the mean error before and after.

    Raises:
        DataError: a missing or invalid checkpoint or data directory.
        InputError: a bad argument value.
    """
    t0 = time.perf_counter()
    if observer not in OBSERVERS:
        raise InputError(f"observer {observer!r}: expected one of {', '.join(OBSERVERS)}")
    if n_calibration < 1:
        raise InputError(f"n_calibration must be >= 1, got {n_calibration}")
    if n_test is not None and n_test < 1:
        raise InputError(f"n_test must be >= 1, got {n_test}")
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    checkpoint, calibration_dir, out_dir = Path(checkpoint), Path(calibration_dir), Path(out_dir)
    model, ckpt = load_checkpoint(checkpoint)
    if not isinstance(model, DistributedModel):
        raise InputError(f"{checkpoint}: model {ckpt['model']!r} has no device encoder")
    device_ids = sorted(set(devices)) if devices else list(range(1, model.n_devices + 1))
    bad = [d for d in device_ids if not 1 <= d <= model.n_devices]
    if bad:
        raise InputError(f"devices {bad}: the model has devices 1..{model.n_devices}")
    spec = get_dataset(ckpt["dataset"])
    _check_card(calibration_dir, spec, ckpt["dataset"])
    cal_ds = OpenFWIDataset(calibration_dir, require_models=False)
    cal_idx = _choose(len(cal_ds), n_calibration, seed, f"{calibration_dir}")
    raw_cal, x_cal, _ = samples(cal_ds, cal_idx, spec)  # 2 x (n, 5, 1000, 70)
    import litert_torch

    litert_torch.config.show_progress = log.isEnabledFor(logging.DEBUG)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = model.rx_per_device
    silence = float(normalize_data(np.zeros(1, np.float32), spec.data_min, spec.data_max)[0])
    paths, entries, encoders = [], [], {}
    for d in device_ids:
        lo, hi = (d - 1) * k, d * k
        t_dev = time.perf_counter()
        path = out_dir / f"device-{d}.tflite"
        x_dev, raw_dev = x_cal[..., lo:hi], raw_cal[..., lo:hi]  # (n, 5, 1000, k)
        enc = _convert(model.encoder, x_dev, silence, float_stem, path, spec, observer)
        entry = {"device_id": d, "file": path.name}
        if bias_correction:
            with torch.no_grad():
                float_lat = model.encoder(torch.from_numpy(
                    np.ascontiguousarray(x_dev))).numpy()  # (n, k, token_dim)
            shift = _mean_latent_error(enc, raw_dev, float_lat)
            enc = _convert(bias_corrected(model.encoder, shift), x_dev, silence, float_stem,
                           path, spec, observer)
            residual = _mean_latent_error(enc, raw_dev, float_lat)
            entry["bias_correction"] = {
                "latent_shift_per_channel": [round(float(v), 6) for v in shift],
                "mean_error_rms_before": float(np.sqrt((shift ** 2).mean())),
                "mean_error_rms_after": float(np.sqrt((residual ** 2).mean())),
                "measured_on": f"{len(cal_idx)} calibration gathers x {k} receivers"}
        encoders[d] = enc
        paths.append(path)
        entries.append({**entry, "sha256": sha256_file(path),
                        "size_bytes": path.stat().st_size, "receivers": [lo, hi],
                        "input": enc.io_spec("input"), "output": enc.io_spec("output")})
        log.info("device-%d: %s, %d bytes, %.1f s", d, path, path.stat().st_size,
                 time.perf_counter() - t_dev)
    del x_cal, raw_cal
    if test_dir is not None:
        test_dir = Path(test_dir)
        _check_card(test_dir, spec, ckpt["dataset"])
        test_ds = OpenFWIDataset(test_dir)
        test_idx = _choose(len(test_ds), n_test, seed, f"{test_dir}")
        parity = parity_report(model, encoders, test_ds, test_idx, spec, end_to_end=True)
    else:
        parity = parity_report(model, encoders, cal_ds, cal_idx, spec, end_to_end=False)
    parity = {"format": "epic-parity/1", "checkpoint": str(checkpoint),
              "data": str(test_dir if test_dir is not None else calibration_dir),
              "data_role": "test" if test_dir is not None else "calibration", **parity}
    growth = parity.get("end_to_end", {}).get("mae_relative_growth")
    if growth is not None and abs(growth) > MAE_GROWTH_TARGET:
        log.warning("int8 encoders change the MAE by %+.2f %% (target within +-%.0f %%); see "
                    "parity.json; `epic finetune` adapts the decoder to these encoders",
                    100 * growth, 100 * MAE_GROWTH_TARGET)
    parity_path = out_dir / "parity.json"
    parity_path.write_text(json.dumps(parity, indent=2) + "\n")
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": ckpt["dataset"],
        "normalisation": {"data_min": spec.data_min, "data_max": spec.data_max,
                          "transform": "sign(x)*log1p(|x|), min-max of the log bounds to "
                                       "[-1, 1] (epic.data.transforms.normalize_data)"},
        "source_checkpoint": {"path": str(checkpoint), "sha256": sha256_file(checkpoint),
                              "model": ckpt["model"], "config": ckpt["config"],
                              "epoch": ckpt.get("meta", {}).get("epoch")},
        "calibration": {"directory": str(calibration_dir), "samples": len(cal_idx),
                        "indices": [int(i) for i in cal_idx], "seed": seed,
                        "slice": "each device's own receivers"},
        "quantisation": {"method": "litert-torch PT2E static (post-training)",
                         "weights": "int8 per-channel symmetric (PerChannelMinMaxObserver)",
                         "activations": ("int8 per-tensor affine (MinMaxObserver)"
                                         if observer == "minmax" else "int8 per-tensor affine "
                                         "(HistogramObserver; the input MinMaxObserver)"),
                         "bias": "int32", "float_stem": float_stem,
                         "bias_correction": ("per latent channel: the projection bias lowered "
                                             "by the mean int8 error on the calibration "
                                             "gathers (epic.quantize.bias_corrected)"
                                             if bias_correction else None),
                         "input_anchor": None if float_stem else silence,
                         "io": ("float32 input (first conv block float32), int8 output"
                                if float_stem else "int8 input and output")},
        "versions": {p: version(p) for p in ("litert-torch", "ai-edge-litert", "torch",
                                              "numpy")},
        "n_devices": model.n_devices, "rx_per_device": k, "token_dim": model.token_dim,
        "devices": entries,
        "parity_report": parity_path.name,
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    wall_s = time.perf_counter() - t0
    log.info("exported %d encoders to %s in %.1f s", len(paths), out_dir, wall_s)
    return ExportResult(out_dir=out_dir, encoder_paths=tuple(paths), manifest_path=manifest_path,
                        parity_path=parity_path, parity=parity, wall_s=wall_s)
