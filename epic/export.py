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
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from epic.data.openfwi import DatasetSpec, OpenFWIDataset, get_dataset
from epic.data.transforms import normalize_data, normalize_velocity
from epic.errors import DataError, InputError
from epic.inference.encoder import EncoderRuntime
from epic.metrics import fidelity
from epic.models.checkpoint import load_checkpoint
from epic.models.epic import DistributedModel

__all__ = [
    "MAE_GROWTH_TARGET",
    "MANIFEST_FORMAT",
    "ExportResult",
    "export_encoders",
    "quantization_config",
    "quantize_encoder",
    "sha256_file",
]

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "epic-encoders/1"
MAE_GROWTH_TARGET = 0.02
"""Largest accepted relative growth of the end-to-end MAE from int8 encoders (2 %)."""


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


def quantization_config():
    """PT2E static int8 config: per-channel symmetric int8 weights (min-max), per-tensor
    affine int8 activations with a MinMax observer (litert-torch's default is histogram)."""
    from litert_torch.quantize import pt2e_quantizer as pq
    from torchao.quantization.pt2e.observer import MinMaxObserver

    base = pq.get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(base.input_activation,
                              observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    return dataclasses.replace(base, input_activation=act, output_activation=act)


def _in_stem(node) -> bool:
    """True for graph nodes of the encoder's first block (``body.0``: conv + ReLU)."""
    for path, _ in node.meta.get("nn_module_stack", {}).values():
        if re.sub(r"\[(\d+)\]", r".\1", path.replace("L['self'].", "")) == "body.0":
            return True
    return False


def _anchor_input_grid(graph: torch.fx.GraphModule, anchor: float) -> float:
    """Widen the calibrated int8 grid of the graph input so that ``anchor`` lies on it.

    The step grows from ``s`` to ``|anchor| / k`` with ``k = floor(|anchor| / s)`` (at most a
    factor ``(k + 1) / k``) and the zero point moves to keep the observed range covered.
    Returns the new step.
    """
    x = next(n for n in graph.graph.nodes if n.op == "placeholder")
    observers = [getattr(graph, u.target) for u in x.users
                 if u.op == "call_module" and hasattr(getattr(graph, u.target), "min_val")]
    if len(observers) != 1:
        raise RuntimeError(f"expected one observer on the graph input, found {len(observers)}")
    obs = observers[0]
    lo, hi = min(float(obs.min_val), 0.0), max(float(obs.max_val), 0.0)
    step = (hi - lo) / (obs.quant_max - obs.quant_min)
    if anchor == 0 or step <= 0:
        return step
    step = abs(anchor) / max(1, int(abs(anchor) // step))
    zero_point = min(max(obs.quant_min - round(lo / step), obs.quant_min), obs.quant_max)
    obs.min_val = torch.tensor(step * (obs.quant_min - zero_point))
    obs.max_val = torch.tensor(step * (obs.quant_max - zero_point))
    return step


def quantize_encoder(encoder: torch.nn.Module, calibration: np.ndarray, float_stem: bool = False,
                     input_anchor: float | None = None):
    """PT2E-quantise ``encoder`` calibrated on ``calibration`` ``(N, 5, 1000, k)`` float32.

    With ``float_stem`` the first block (``body.0``, a 5 -> 16 channel conv + ReLU, about
    7 % of the MACs) stays float32, and so does the model input: its output is the first
    int8 tensor. This is an escape hatch for checkpoints that are sensitive to int8 input
    (58 % of a normalised gather's samples lie within one int8 step of silence): with the
    epoch-3 FlatVel-A checkpoint, int8 input cost 8.8 % of MAE and the float stem -3 %; with
    the final one both stay near 1 % (docs/edge.md), so the default is fully int8.

    ``input_anchor`` (int8 input only): a normalised input value that must be exactly
    representable, the value of zero amplitude (silence, -0.089 for FlatVel-A). Min-max puts
    silence between two steps, so every quiet sample (58 % of a gather) gets the same
    rounding error: a bias of up to half a step that the decoder amplifies (with the shipped
    checkpoint, +1.8 % to +18 % MAE depending on the calibration draw).

    Returns ``(graph, quantizer)``: the converted (Q/DQ) ``torch.fx.GraphModule``, fixed to
    batch 1, and the ``PT2EQuantizer`` that litert-torch needs to lower it to int8.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    class _Quantizer(PT2EQuantizer):
        def annotate(self, model):
            model = super().annotate(model)
            if float_stem:
                stem = [n for n in model.graph.nodes if _in_stem(n)]
                if not stem:
                    raise RuntimeError("float_stem: no node of the encoder's body.0 found")
                for node in stem:
                    node.meta.pop("quantization_annotation", None)
            return model

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) < 1:
        raise InputError(f"calibration: expected (N >= 1, 5, nt, k), got {calibration.shape}")
    quantizer = _Quantizer().set_global(quantization_config())
    example = (torch.from_numpy(calibration[:1]),)
    graph = torch.export.export(copy.deepcopy(encoder).eval(), example).module()
    graph = prepare_pt2e(graph, quantizer)
    with torch.no_grad():
        for sample in calibration:  # the exported graph has a static batch of 1
            graph(torch.from_numpy(sample[None]))
    if input_anchor is not None and not float_stem:
        _anchor_input_grid(graph, input_anchor)
    return convert_pt2e(graph, fold_quantize=False), quantizer


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


def _normalised(ds: OpenFWIDataset, indices: np.ndarray, spec: DatasetSpec
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """`_samples` without the raw amplitudes."""
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
def _parity(model: DistributedModel, encoders: dict[int, EncoderRuntime], ds: OpenFWIDataset,
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


def _choose(n_available: int, n: int | None, seed: int, what: str) -> np.ndarray:
    if n is None or n >= n_available:
        if n is not None and n > n_available:
            log.warning("%s: asked for %d samples, only %d available; using all", what, n,
                        n_available)
        return np.arange(n_available)
    return np.sort(np.random.default_rng(seed).choice(n_available, size=n, replace=False))


def export_encoders(checkpoint: str | Path, calibration_dir: str | Path, out_dir: str | Path,
                    n_calibration: int = 64, test_dir: str | Path | None = None,
                    n_test: int | None = None, devices: Sequence[int] | None = None,
                    seed: int = 0, threads: int | None = None, float_stem: bool = False
                    ) -> ExportResult:
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

    Raises:
        DataError: a missing or invalid checkpoint or data directory.
        InputError: a bad argument value.
    """
    t0 = time.perf_counter()
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
    x_cal, _ = _normalised(cal_ds, cal_idx, spec)  # (n, 5, 1000, 70)
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig

    litert_torch.config.show_progress = log.isEnabledFor(logging.DEBUG)
    out_dir.mkdir(parents=True, exist_ok=True)
    k = model.rx_per_device
    silence = float(normalize_data(np.zeros(1, np.float32), spec.data_min, spec.data_max)[0])
    paths, entries, encoders = [], [], {}
    for d in device_ids:
        lo, hi = (d - 1) * k, d * k
        t_dev = time.perf_counter()
        graph, quantizer = quantize_encoder(model.encoder, x_cal[..., lo:hi], float_stem,
                                            input_anchor=silence)
        example = (torch.from_numpy(np.ascontiguousarray(x_cal[:1, ..., lo:hi])),)
        edge = litert_torch.convert(graph, example,
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        path = out_dir / f"device-{d}.tflite"
        edge.export(str(path))
        encoders[d] = enc = EncoderRuntime(path, 1, data_min=spec.data_min,
                                           data_max=spec.data_max, n_receivers=k)
        paths.append(path)
        entries.append({"device_id": d, "file": path.name, "sha256": sha256_file(path),
                        "size_bytes": path.stat().st_size, "receivers": [lo, hi],
                        "input": enc.io_spec("input"), "output": enc.io_spec("output")})
        log.info("device-%d: %s, %d bytes, %.1f s", d, path, path.stat().st_size,
                 time.perf_counter() - t_dev)
    del x_cal
    if test_dir is not None:
        test_dir = Path(test_dir)
        _check_card(test_dir, spec, ckpt["dataset"])
        test_ds = OpenFWIDataset(test_dir)
        test_idx = _choose(len(test_ds), n_test, seed, f"{test_dir}")
        parity = _parity(model, encoders, test_ds, test_idx, spec, end_to_end=True)
    else:
        parity = _parity(model, encoders, cal_ds, cal_idx, spec, end_to_end=False)
    parity = {"format": "epic-parity/1", "checkpoint": str(checkpoint),
              "data": str(test_dir if test_dir is not None else calibration_dir),
              "data_role": "test" if test_dir is not None else "calibration", **parity}
    growth = parity.get("end_to_end", {}).get("mae_relative_growth")
    if growth is not None and growth > MAE_GROWTH_TARGET:
        log.warning("int8 encoders grow the MAE by %.2f %% (target <= %.0f %%); see parity.json"
                    "; consider float_stem=True", 100 * growth, 100 * MAE_GROWTH_TARGET)
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
                         "activations": "int8 per-tensor affine (MinMaxObserver)",
                         "bias": "int32", "float_stem": float_stem,
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
