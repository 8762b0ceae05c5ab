"""Export of central's decoders to ONNX (run torch-free by :mod:`epic.inference.decoders`).

``export_decoders(epic_checkpoint, inversionnet_checkpoint, out_dir, test_dir)`` writes, in
``out_dir``:

- ``epic-decoder.onnx``: :meth:`EPICModel.decode`, ``tokens (B, n_devices, k, token_dim)``
  float32 + ``present (B, n_devices)`` bool -> ``velocity (B, 1, 70, 70)`` normalised;
- ``inversionnet.onnx``: ``gathers (B, 5, 1000, 70)`` normalised -> ``velocity (B, 1, 70, 70)``;
- ``manifest.json`` (``epic-decoders/1``): files, sha256, the source checkpoints, I/O, the
  normalisation constants, tool versions, the command, and the parity summary;
- ``parity.json``: runtime against torch on the test split (MAE/RMSE/SSIM of each and their
  difference, mean and max absolute map difference, on the normalised scale), with every
  device present and with devices absent, and the decode time per gather at batch 1.

Graphs come from ``torch.onnx.export`` (dynamo, dynamic batch, opset 18+, no graph
optimisation so that weight tensors stay as they are in the state dict). Then every weight
initializer equal to a checkpoint tensor becomes an *external* initializer: the byte range of
that tensor inside the checkpoint's zip (stored uncompressed), in the checkpoint's dtype,
turned into float32 in the graph: float16 by a Cast; int8 codes (``weights="int8"``
checkpoints, :mod:`epic.models.checkpoint`) by a DequantizeLinear (axis 0) whose float32
per-channel scale is external too. The graphs thus hold no copy of the weights
(InversionNet: 24.4 M parameters, 49 MB in float16, 24.5 MB in int8) and run with exactly the
float32 weights torch runs with. ONNX Runtime folds the casts and dequantisations at load.

Why ONNX Runtime rather than LiteRT: a ``.tflite`` flatbuffer must embed its weights, and the
tracked tree has to stay under 60 MiB; InversionNet alone would add 49 MB (float16) or 24 MB
(int8 weights) on top of the checkpoint. ONNX external data lets the graph point into the
checkpoint that is shipped anyway. It also keeps a dynamic batch dimension.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import struct
import time
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from epic.data.openfwi import OpenFWIDataset, get_dataset
from epic.data.transforms import normalize_data, normalize_velocity
from epic.errors import DataError, InputError
from epic.inference.decoders import (
    MANIFEST_FORMAT,
    LatentDecoderRuntime,
    RawDecoderRuntime,
)
from epic.metrics import fidelity
from epic.models.checkpoint import (
    dequantize_per_channel,
    load_checkpoint,
    weights_dtype,
)
from epic.models.epic import DistributedModel

__all__ = ["PARITY_TARGET", "DecoderExportResult", "export_decoders", "externalize_weights"]

log = logging.getLogger(__name__)

PARITY_TARGET = 1e-3
"""Largest accepted |MAE_runtime - MAE_torch| and mean |map_runtime - map_torch| (normalised)."""

RUNTIME_WHY = (
    "ONNX Runtime: the graphs reference the weights inside the shipped checkpoints (float16, "
    "or int8 codes with per-channel scales; ONNX external data: byte ranges of the .pt "
    "zip), so InversionNet fits the < 60 MiB "
    "tracked-tree budget (a .tflite must embed its weights: +49 MB float16, +24 MB int8); "
    "dynamic batch; weights identical to torch's")


@dataclass(frozen=True)
class DecoderExportResult:
    """What :func:`export_decoders` wrote: the graphs by model kind, manifest, parity."""

    out_dir: Path
    graph_paths: dict[str, Path]
    manifest_path: Path
    parity_path: Path
    parity: dict
    wall_s: float


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _stored_entries(checkpoint: Path) -> dict[bytes, tuple[int, int]]:
    """sha256 of each uncompressed zip entry's bytes -> (offset of its data, length)."""
    entries: dict[bytes, tuple[int, int]] = {}
    with zipfile.ZipFile(checkpoint) as zf, open(checkpoint, "rb") as f:
        for info in zf.infolist():
            if info.compress_type != zipfile.ZIP_STORED or info.file_size == 0:
                continue
            f.seek(info.header_offset)
            header = f.read(30)
            if header[:4] != b"PK\x03\x04":
                raise DataError(f"{checkpoint}: bad zip local header for {info.filename}")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            f.seek(offset)
            data = f.read(info.file_size)
            entries.setdefault(hashlib.sha256(data).digest(), (offset, info.file_size))
    return entries


def externalize_weights(model_proto, checkpoint: str | Path, state_dict: dict,
                        quant_scales: dict | None = None) -> dict:
    """Point ``model_proto``'s weight initializers into ``checkpoint`` (in place).

    Args:
        model_proto: an ONNX ModelProto whose weights are float32 initializers.
        checkpoint: the checkpoint file (a torch zip, entries stored uncompressed).
        state_dict: the tensors as stored in it: float16, float32, or int8 codes (for an int8
            checkpoint, its ``state_dict`` plus its ``quant_weights``).
        quant_scales: name -> float32 ``(C,)`` scale of each int8 tensor of ``state_dict``
            (an int8 checkpoint's ``quant_scales``).

    A float32 initializer whose values equal a stored tensor (float16 and float32: the values;
    int8: its float32 dequantisation ``q * scale[:, None, ...]``), and whose stored bytes are
    one whole zip entry of the checkpoint, is replaced by an external initializer of the
    stored dtype (location: the checkpoint's file name, offset and length of the entry):

    - float32: under the original name;
    - float16: ``NAME::float16`` and a Cast to float32 named NAME;
    - int8: ``NAME::int8`` (shape of the weight) and ``NAME::scale`` (float32 ``(C,)``, also
      external when its bytes are a whole entry, else embedded), and a DequantizeLinear
      (axis 0, no zero point: 0) named NAME, which computes the same float32 product.

    The others stay embedded. Returns counts and bytes of both kinds (``external_bytes``
    counts the weights' bytes; ``int8`` and ``scale_bytes`` the int8 ones and their scales).
    """
    from onnx import TensorProto, helper, numpy_helper

    checkpoint = Path(checkpoint)
    quant_scales = quant_scales or {}
    entries = _stored_entries(checkpoint)
    stored: dict[tuple, tuple] = {}  # (dtype, shape, sha of float32 or float16 bytes) -> where
    for key, tensor in state_dict.items():
        tensor = tensor.detach().contiguous().cpu()
        if tensor.dtype == torch.int8 and key in quant_scales:
            scale = quant_scales[key].detach().contiguous().cpu()
            where = entries.get(hashlib.sha256(tensor.numpy().tobytes()).digest())
            if where is None:
                continue
            values = dequantize_per_channel(tensor, scale).numpy().tobytes()
            scale_np = scale.numpy()
            scale_where = entries.get(hashlib.sha256(scale_np.tobytes()).digest())
            stored.setdefault(("int8", tuple(tensor.shape), hashlib.sha256(values).digest()),
                              (*where, key, scale_np, scale_where))
            continue
        if tensor.dtype not in (torch.float16, torch.float32):
            continue
        data = tensor.numpy().tobytes()
        where = entries.get(hashlib.sha256(data).digest())
        if where is not None:
            dtype = "float16" if tensor.dtype == torch.float16 else "float32"
            stored.setdefault((dtype, tuple(tensor.shape), hashlib.sha256(data).digest()),
                              (*where, key))
    kept, pre = [], []
    report = {"external": 0, "external_bytes": 0, "embedded": 0, "embedded_bytes": 0,
              "int8": 0, "scale_bytes": 0, "location": checkpoint.name}

    def external(name: str, data_type: int, dims, offset: int, length: int):
        ext = TensorProto()
        ext.name, ext.data_type = name, data_type
        ext.dims.extend(dims)
        ext.data_location = TensorProto.EXTERNAL
        for k, v in (("location", checkpoint.name), ("offset", str(offset)),
                     ("length", str(length))):
            item = ext.external_data.add()
            item.key, item.value = k, v
        return ext

    for init in model_proto.graph.initializer:
        hit, dtype = None, None
        if init.data_type == TensorProto.FLOAT and init.data_location != TensorProto.EXTERNAL:
            a = numpy_helper.to_array(init)
            sha32 = hashlib.sha256(a.tobytes()).digest()
            for dtype in ("float32", "int8"):
                hit = stored.get((dtype, a.shape, sha32))
                if hit is not None:
                    break
            as16 = a.astype(np.float16)
            if hit is None and np.array_equal(as16.astype(np.float32), a):
                dtype = "float16"
                hit = stored.get(("float16", a.shape, hashlib.sha256(as16.tobytes()).digest()))
        if hit is None:
            kept.append(init)
            report["embedded"] += 1
            report["embedded_bytes"] += len(init.raw_data) or init.ByteSize()
            continue
        offset, length = hit[0], hit[1]
        if dtype == "float32":
            kept.append(external(init.name, TensorProto.FLOAT, init.dims, offset, length))
        elif dtype == "float16":
            ext = external(f"{init.name}::float16", TensorProto.FLOAT16, init.dims, offset,
                           length)
            kept.append(ext)
            pre.append(helper.make_node("Cast", [ext.name], [init.name], to=TensorProto.FLOAT,
                                        name=f"{init.name}::cast"))
        else:  # int8 codes + per-axis-0 scale -> DequantizeLinear
            scale_np, scale_where = hit[3], hit[4]
            codes = external(f"{init.name}::int8", TensorProto.INT8, init.dims, offset, length)
            if scale_where is not None:
                scale = external(f"{init.name}::scale", TensorProto.FLOAT, scale_np.shape,
                                 *scale_where)
            else:
                scale = numpy_helper.from_array(scale_np, f"{init.name}::scale")
            kept.extend([codes, scale])
            pre.append(helper.make_node("DequantizeLinear", [codes.name, scale.name],
                                        [init.name], axis=0, name=f"{init.name}::dequantize"))
            report["int8"] += 1
            report["scale_bytes"] += scale_np.nbytes
        report["external"] += 1
        report["external_bytes"] += length
    del model_proto.graph.initializer[:]
    model_proto.graph.initializer.extend(kept)
    nodes = list(model_proto.graph.node)
    del model_proto.graph.node[:]
    model_proto.graph.node.extend(pre + nodes)
    return report


def _strip(model_proto) -> None:
    """Drop the per-node source metadata (stack traces: 90 % of an unoptimised graph)."""
    for node in model_proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    for info in model_proto.graph.value_info:
        del info.metadata_props[:]
    del model_proto.graph.value_info[:]
    del model_proto.metadata_props[:]


class _Decode(torch.nn.Module):
    def __init__(self, model: DistributedModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        return self.model.decode(tokens, present)


class _Raw(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, gathers: torch.Tensor) -> torch.Tensor:
        return self.model(gathers)


def _onnx(module: torch.nn.Module, example: tuple, names: list[str]):
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(module.eval(), example, dynamo=True, input_names=names,
                                output_names=["velocity"], optimize=False, verbose=False,
                                dynamic_shapes={n: {0: batch} for n in names})
    proto = program.model_proto
    _strip(proto)
    return proto


def _raw_state(checkpoint: Path) -> tuple[dict, dict]:
    """The tensors as stored in ``checkpoint`` (int8 codes included) and the int8 scales."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return ({**ckpt["state_dict"], **ckpt.get("quant_weights", {})},
            ckpt.get("quant_scales", {}))


def _write_graph(proto, checkpoint: Path, path: Path) -> dict:
    report = externalize_weights(proto, checkpoint, *_raw_state(checkpoint))
    path.write_bytes(proto.SerializeToString())
    log.info("%s: %d bytes; %d weight tensors (%d bytes) in %s, %d (%d bytes) embedded", path,
             path.stat().st_size, report["external"], report["external_bytes"],
             checkpoint.name, report["embedded"], report["embedded_bytes"])
    return report


def _versions() -> dict:
    out = {}
    for p in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def _compare(pred_torch: np.ndarray, pred_rt: np.ndarray, truth: np.ndarray) -> dict:
    f_t, f_r = fidelity(pred_torch, truth), fidelity(pred_rt, truth)
    diff = np.abs(pred_rt.astype(np.float64) - pred_torch)
    mae_delta = abs(f_r["mae"] - f_t["mae"])
    return {"samples": len(truth), "torch": f_t, "runtime": f_r,
            "mae_abs_delta": mae_delta, "map_mean_abs_diff": float(diff.mean()),
            "map_max_abs_diff": float(diff.max()),
            "meets_target": bool(mae_delta <= PARITY_TARGET
                                 and diff.mean() <= PARITY_TARGET)}


def _median_ms(fn, n: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _masks(n: int, n_devices: int, absent: int, seed: int) -> np.ndarray:
    """``(n, n_devices)`` presence with ``absent`` devices missing per sample: device
    ``i % n_devices`` for one, else a seeded random choice."""
    present = np.ones((n, n_devices), bool)
    rng = np.random.default_rng(seed)
    for i in range(n):
        drop = [i % n_devices] if absent == 1 else rng.choice(n_devices, absent, replace=False)
        present[i, drop] = False
    return present


@torch.no_grad()
def _parity(epic_model, inv_model, latent_rt, raw_rt, ds: OpenFWIDataset, indices: np.ndarray,
            spec, batch: int, timing_gathers: int) -> dict:
    n_dev = epic_model.n_devices if epic_model is not None else 0
    masks = {"all_present": None,
             "one_absent": _masks(len(indices), n_dev, 1, 0) if n_dev else None,
             "two_absent": _masks(len(indices), n_dev, 2, 1) if n_dev else None}
    preds: dict[str, list] = {}
    truth, xs_for_timing, tok_for_timing = [], [], []
    for start in range(0, len(indices), batch):
        xs, ys = [], []
        for i in indices[start:start + batch]:
            data, velocity = ds[int(i)]
            xs.append(normalize_data(data, spec.data_min, spec.data_max))
            ys.append(normalize_velocity(velocity, spec.velocity_min_mps,
                                         spec.velocity_max_mps))
        x, y = np.stack(xs), np.stack(ys)
        truth.append(y)
        if len(xs_for_timing) < timing_gathers:
            xs_for_timing.extend(x[:timing_gathers - len(xs_for_timing)])
        if epic_model is not None:
            tokens = epic_model.encode(torch.from_numpy(x))
            if len(tok_for_timing) < timing_gathers:
                tok_for_timing.extend(tokens.numpy()[:timing_gathers - len(tok_for_timing)])
            for name, mask in masks.items():
                present = (np.ones((len(x), n_dev), bool) if mask is None
                           else mask[start:start + len(x)])
                pt = epic_model.decode(tokens, torch.from_numpy(present)).numpy()
                rt = latent_rt.decode_normalised(tokens.numpy(), present)
                preds.setdefault(f"epic/{name}/torch", []).append(pt)
                preds.setdefault(f"epic/{name}/runtime", []).append(rt)
        if inv_model is not None:
            preds.setdefault("inversionnet/torch", []).append(
                inv_model(torch.from_numpy(x)).numpy())
            preds.setdefault("inversionnet/runtime", []).append(raw_rt.decode_normalised(x))
    yt = np.concatenate(truth)
    out: dict = {}
    if epic_model is not None:
        out["epic"] = {name: _compare(np.concatenate(preds[f"epic/{name}/torch"]),
                                      np.concatenate(preds[f"epic/{name}/runtime"]), yt)
                       for name in masks}
    if inv_model is not None:
        out["inversionnet"] = _compare(np.concatenate(preds["inversionnet/torch"]),
                                       np.concatenate(preds["inversionnet/runtime"]), yt)
    # decode time per gather, batch 1, one thread each, same process and gathers
    timing: dict = {"batch": 1, "threads": 1, "gathers": 0, "statistic": "median"}
    if epic_model is not None and tok_for_timing:
        toks = [t[None] for t in tok_for_timing]
        ones = np.ones((1, n_dev), bool)
        it_t, it_r = iter(range(10**9)), iter(range(10**9))
        timing["epic"] = {
            "torch_ms": _median_ms(lambda: epic_model.decode(
                torch.from_numpy(toks[next(it_t) % len(toks)]), torch.from_numpy(ones)),
                len(toks)),
            "runtime_ms": _median_ms(lambda: latent_rt.decode_normalised(
                toks[next(it_r) % len(toks)], ones), len(toks))}
        timing["gathers"] = len(toks)
    if inv_model is not None and xs_for_timing:
        gs = [g[None] for g in xs_for_timing]
        it_t, it_r = iter(range(10**9)), iter(range(10**9))
        timing["inversionnet"] = {
            "torch_ms": _median_ms(lambda: inv_model(torch.from_numpy(gs[next(it_t) % len(gs)])),
                                   len(gs)),
            "runtime_ms": _median_ms(lambda: raw_rt.decode_normalised(
                gs[next(it_r) % len(gs)]), len(gs))}
        timing["gathers"] = len(gs)
    out["timing"] = timing
    return out


def export_decoders(epic_checkpoint: str | Path | None, inversionnet_checkpoint: str | Path | None,
                    out_dir: str | Path, test_dir: str | Path | None = None,
                    n_test: int | None = None, seed: int = 0, batch: int = 16,
                    timing_gathers: int = 20, command: str | None = None) -> DecoderExportResult:
    """Export the EPIC decoder and/or InversionNet to ONNX with a manifest and parity report.

    Args:
        epic_checkpoint: a distributed-model checkpoint (its decoder is exported), or None.
        inversionnet_checkpoint: an "inversionnet" checkpoint, or None.
        out_dir: receives the graphs, ``manifest.json`` and ``parity.json``.
        test_dir: OpenFWI-layout test split with velocity maps; ``n_test`` gathers drawn at
            random (``seed``), all by default. Without it, no parity is measured.
        batch: runtime and torch batch in the parity run (central's default, 16).
        timing_gathers: gathers timed one by one (batch 1) in each runtime.
        command: the command line recorded in the manifest.

    torch runs with one thread for the timing; set ``torch.set_num_threads`` before for the
    rest. Raises DataError (missing or invalid files) or InputError (bad arguments).
    """
    t0 = time.perf_counter()
    if epic_checkpoint is None and inversionnet_checkpoint is None:
        raise InputError("nothing to export: give an EPIC and/or an InversionNet checkpoint")
    if n_test is not None and n_test < 1:
        raise InputError(f"n_test must be >= 1, got {n_test}")
    if batch < 1 or timing_gathers < 0:
        raise InputError(f"batch must be >= 1 and timing_gathers >= 0, got {batch}, "
                         f"{timing_gathers}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    models, entries, graphs, datasets = {}, {}, {}, set()
    if epic_checkpoint is not None:
        ck = Path(epic_checkpoint)
        model, meta = load_checkpoint(ck)
        if not isinstance(model, DistributedModel):
            raise InputError(f"{ck}: model {meta['model']!r} has no latent decoder")
        k, d = model.rx_per_device, model.token_dim
        example = (torch.zeros(2, model.n_devices, k, d),
                   torch.ones(2, model.n_devices, dtype=torch.bool))
        path = out_dir / "epic-decoder.onnx"
        weights = _write_graph(_onnx(_Decode(model), example, ["tokens", "present"]), ck, path)
        models["epic"], graphs["epic"] = model, path
        datasets.add(meta["dataset"])
        entries["epic"] = {
            "file": path.name, "sha256": _sha256_file(path), "size_bytes": path.stat().st_size,
            "inputs": {"tokens": ["B", model.n_devices, k, d, "float32"],
                       "present": ["B", model.n_devices, "bool"]},
            "output": {"velocity": ["B", 1, 70, 70, "float32, normalised [-1, 1]"]},
            "n_devices": model.n_devices, "rx_per_device": k, "token_dim": d,
            "weights": {"file": _relative(ck, out_dir), "sha256": _sha256_file(ck),
                        "dtype": weights_dtype(meta), **weights},
            "source_checkpoint": {"path": str(ck), "model": meta["model"],
                                  "config": meta["config"], "dataset": meta["dataset"],
                                  "epoch": meta.get("meta", {}).get("epoch")}}
    if inversionnet_checkpoint is not None:
        ck = Path(inversionnet_checkpoint)
        model, meta = load_checkpoint(ck, expected_model="inversionnet")
        path = out_dir / "inversionnet.onnx"
        weights = _write_graph(_onnx(_Raw(model), (torch.zeros(2, 5, 1000, 70),), ["gathers"]),
                               ck, path)
        models["inversionnet"], graphs["inversionnet"] = model, path
        datasets.add(meta["dataset"])
        entries["inversionnet"] = {
            "file": path.name, "sha256": _sha256_file(path), "size_bytes": path.stat().st_size,
            "gather_shape": [5, 1000, 70],
            "inputs": {"gathers": ["B", 5, 1000, 70, "float32, normalised"]},
            "output": {"velocity": ["B", 1, 70, 70, "float32, normalised [-1, 1]"]},
            "weights": {"file": _relative(ck, out_dir), "sha256": _sha256_file(ck),
                        "dtype": weights_dtype(meta), **weights},
            "source_checkpoint": {"path": str(ck), "model": meta["model"],
                                  "config": meta["config"], "dataset": meta["dataset"],
                                  "epoch": meta.get("meta", {}).get("epoch")}}
    if len(datasets) != 1:
        raise InputError(f"the checkpoints were trained on different datasets: {datasets}")
    spec = get_dataset(datasets.pop())
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "runtime": {"name": "onnxruntime", "why": RUNTIME_WHY,
                    "load": "epic.inference.decoders (the graph as bytes, the weights "
                            "file's folder as the external-data folder)"},
        "dataset": spec.name,
        "normalisation": {"data_min": spec.data_min, "data_max": spec.data_max,
                          "velocity_min_mps": spec.velocity_min_mps,
                          "velocity_max_mps": spec.velocity_max_mps},
        "models": entries,
        "versions": _versions(),
        "parity_report": "parity.json",
    }
    manifest_path = out_dir / "manifest.json"
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    parity: dict = {"format": "epic-decoder-parity/1", "target": PARITY_TARGET,
                    "scale": "normalised velocity [-1, 1] (OpenFWI's MAE/RMSE), SSIM on [0, 1]",
                    "tokens": "float32 latents of the torch encoder (the decoder under test "
                              "sees the same tokens in both runtimes)"}
    if test_dir is not None:
        test_dir = Path(test_dir)
        ds = OpenFWIDataset(test_dir)
        if n_test is None or n_test >= len(ds):
            idx = np.arange(len(ds))
        else:
            idx = np.sort(np.random.default_rng(seed).choice(len(ds), n_test, replace=False))
        latent_rt = LatentDecoderRuntime(manifest_path) if "epic" in models else None
        raw_rt = RawDecoderRuntime(manifest_path) if "inversionnet" in models else None
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            parity.update({"data": str(test_dir), "indices": "all" if len(idx) == len(ds)
                           else [int(i) for i in idx], "batch": batch,
                           **_parity(models.get("epic"), models.get("inversionnet"), latent_rt,
                                     raw_rt, ds, idx, spec, batch, timing_gathers)})
        finally:
            torch.set_num_threads(threads)
        summary = {}
        for kind in ("epic", "inversionnet"):
            if kind not in parity:
                continue
            rows = parity[kind] if kind == "epic" else {"all_present": parity[kind]}
            summary[kind] = {name: {k: row[k] for k in ("mae_abs_delta", "map_mean_abs_diff",
                                                        "map_max_abs_diff", "meets_target")}
                             | {"mae_torch": row["torch"]["mae"],
                                "mae_runtime": row["runtime"]["mae"]}
                             for name, row in rows.items()}
        ok = all(r["meets_target"] for rows in summary.values() for r in rows.values())
        manifest["parity"] = {"data": str(test_dir), "samples": len(idx), "target":
                              PARITY_TARGET, "meets_target": ok, **summary,
                              "timing_ms_per_gather_batch1": parity["timing"]}
        if not ok:
            log.warning("runtime/torch parity misses the %.0e target; see %s", PARITY_TARGET,
                        out_dir / "parity.json")
    parity_path = out_dir / "parity.json"
    parity_path.write_text(json.dumps(parity, indent=2) + "\n")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    wall_s = time.perf_counter() - t0
    log.info("exported %s to %s in %.1f s", sorted(graphs), out_dir, wall_s)
    return DecoderExportResult(out_dir=out_dir, graph_paths=graphs, manifest_path=manifest_path,
                               parity_path=parity_path, parity=parity, wall_s=wall_s)
