"""Checkpoints: a model's weights with the metadata needed to rebuild and trust it.

A checkpoint is a ``torch.save`` dict, readable with ``torch.load(weights_only=True)``:
``format``, ``model`` (registry name), ``config`` (constructor keywords), ``state_dict``,
``dataset`` (registry name, for the normalisation constants), free-form ``meta`` (training
budget, metrics) and ``weights_dtype`` (how the weights are stored, :data:`WEIGHTS`):

- ``"float32"``: the tensors as trained (float32; run directories);
- ``"float16"``: every floating-point tensor in float16 (``half=True``; 2 bytes a value);
- ``"int8"``: every floating-point *parameter* with ``ndim >= 2`` (conv, transposed-conv and
  linear weights, embeddings) as int8 with symmetric per-axis-0 float32 scales, 1 byte a value
  (:func:`quantize_per_channel`); everything else (biases, norm parameters, buffers such as
  BatchNorm running statistics) in float32. The int8 tensors are *not* in ``state_dict``:
  they are in ``quant_weights`` (name -> int8 tensor, the parameter's shape) with
  ``quant_scales`` (name -> float32 ``(shape[0],)``), so a reader that does not know the
  scheme fails on the missing keys instead of loading raw integers as weights.

:func:`load_checkpoint` always returns a float32 model: float16 is cast, int8 dequantised
(``w = q * scale[:, None, ...]``, :func:`dequantize_per_channel`). Checkpoints without
``weights_dtype`` (format 1, or format 2 before int8) hold float16 or float32 tensors in
``state_dict`` and load as before.

Format 2 changed a default of the distributed models (the encoder's 4x time decimation); a
format-1 checkpoint's config is read with the old default filled in
(:data:`FORMAT1_DEFAULTS`), so it rebuilds exactly the model it holds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from epic.errors import DataError, InputError
from epic.models.registry import DISTRIBUTED, build_model

__all__ = ["FORMAT", "FORMAT1", "INT8_QMAX", "INT8_SCHEME", "WEIGHTS", "convert_checkpoint",
           "dequantize_per_channel", "load_checkpoint", "model_config", "quantize_per_channel",
           "save_checkpoint", "weights_dtype"]

FORMAT = "epic-checkpoint/2"
FORMAT1 = "epic-checkpoint/1"
FORMAT1_DEFAULTS = {"decimate": 1}
"""Constructor defaults of the distributed models when format 1 was written."""

WEIGHTS = ("float32", "float16", "int8")
"""Weight storages of :func:`save_checkpoint`."""

INT8_QMAX = 127
"""int8 codes span [-127, 127] (symmetric: -128 is never used, so q = 0 is w = 0)."""

INT8_SCHEME = {"scheme": "symmetric per-channel", "axis": 0, "qmax": INT8_QMAX,
               "scale": "max |w| over the axis-0 slice / 127 (1.0 for an all-zero slice)",
               "applies_to": "floating-point parameters with ndim >= 2",
               "others": "float32"}
"""Recorded in an int8 checkpoint as ``quantization``."""


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-axis-0 int8 codes of a weight.

    Args:
        w: floating-point ``(C, ...)`` with ``ndim >= 2`` (C: output channels of a conv or
            linear weight, input channels of a transposed conv's).

    Returns:
        ``(q, scale)``: ``q`` int8 of ``w``'s shape in [-127, 127], ``scale`` float32 ``(C,)``
        in ``w``'s units per code, ``max |w[c]| / 127`` (1.0 where the slice is all zero).
        ``dequantize_per_channel(q, scale)`` differs from ``w`` by at most ``scale[c] / 2``
        per value (plus float32 rounding).

    Raises:
        InputError: ``w`` is not floating point, has ``ndim < 2``, or holds inf/NaN.
    """
    if not w.is_floating_point() or w.ndim < 2:
        raise InputError(f"int8 per-channel storage needs a floating-point tensor with ndim >= 2,"
                         f" got {w.dtype} {tuple(w.shape)}")
    w32 = w.detach().to("cpu", torch.float32)
    if not torch.isfinite(w32).all():
        raise InputError(f"cannot store a weight {tuple(w.shape)} with inf/NaN values as int8")
    amax = w32.abs().reshape(w32.shape[0], -1).amax(dim=1)
    scale = torch.where(amax > 0, amax / INT8_QMAX, torch.ones_like(amax))
    view = (-1,) + (1,) * (w32.ndim - 1)
    q = torch.round(w32 / scale.view(view)).clamp_(-INT8_QMAX, INT8_QMAX).to(torch.int8)
    return q.contiguous(), scale.contiguous()


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q (C, ...)`` int8 and ``scale (C,)`` float32 -> float32 ``q * scale[:, None, ...]``.

    The float32 product is the weight the model computes with, bit for bit, in torch and in
    ONNX Runtime (DequantizeLinear with zero point 0 and axis 0 computes the same product).
    """
    return q.to(torch.float32) * scale.to(torch.float32).view((-1,) + (1,) * (q.ndim - 1))


def _storage(weights: str | None, half: bool) -> str:
    if weights is None:
        return "float16" if half else "float32"
    if weights not in WEIGHTS:
        raise InputError(f"weights must be one of {', '.join(WEIGHTS)}, got {weights!r}")
    if half and weights != "float16":
        raise InputError(f"half=True (float16) contradicts weights={weights!r}")
    return weights


def save_checkpoint(path: str | Path, model: nn.Module, name: str, config: dict, dataset: str,
                    meta: dict | None = None, half: bool = False, extra: dict | None = None,
                    weights: str | None = None, float32_prefixes: tuple[str, ...] = ()) -> Path:
    """Write ``model``'s weights and metadata atomically (temp file + rename).

    Args:
        weights: the storage, one of :data:`WEIGHTS` (module docstring); default float32, or
            float16 with ``half=True`` (an alias of ``weights="float16"``).
        float32_prefixes: with int8 or float16 storage, tensors whose name starts with one
            of these stay float32 (a part of the model too sensitive to round: EPIC's device
            encoder moves the FlatVel-A test MAE by -3.2 % in int8, its decoder by 0.2 %).
        extra: more top-level entries (e.g. an optimizer state), saved as given.

    Raises:
        InputError: unknown ``weights``, ``half`` contradicting it, or a weight with inf/NaN
            values stored as int8.
    """
    storage = _storage(weights, half)
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    state, qweights, qscales = {}, {}, {}
    for k, v in model.state_dict().items():
        v = v.detach()
        keep = k.startswith(tuple(float32_prefixes)) if float32_prefixes else False
        if (storage == "int8" and not keep and k in params and v.is_floating_point()
                and v.ndim >= 2):
            qweights[k], qscales[k] = quantize_per_channel(v)
            continue
        if keep and v.is_floating_point():
            v = v.float()
        elif v.is_floating_point() and storage != "float32":  # float32: as trained
            v = v.half() if storage == "float16" else v.float()
        # contiguous: a channels-last training model must still store plain row-major bytes
        # (the ONNX decoders point into them)
        state[k] = v.cpu().contiguous().clone()
    payload = {"format": FORMAT, "model": name, "config": config, "state_dict": state,
               "dataset": dataset, "meta": meta or {}, "weights_dtype": storage,
               "float32_prefixes": list(float32_prefixes)}
    if storage == "int8":
        payload.update(quant_weights=qweights, quant_scales=qscales,
                       quantization=dict(INT8_SCHEME))
    payload.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The gist of torch's (often multi-paragraph) load error, on one line."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # skip the weights_only preamble: the cause follows
        text = text.split("WeightsUnpickler error:", 1)[1]
    empty = "the file ends too early" if isinstance(exc, EOFError) else "no detail"
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), empty)
    if len(line) > limit and ". " in line[:limit]:  # keep whole sentences
        return line[: line.rindex(". ", 0, limit) + 1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def model_config(ckpt: dict) -> dict:
    """The constructor keywords that rebuild ``ckpt``'s model (format-1 defaults filled in)."""
    config = dict(ckpt["config"])
    if ckpt.get("format") == FORMAT1 and ckpt["model"] in DISTRIBUTED:
        config = {**FORMAT1_DEFAULTS, **config}
    return config


def weights_dtype(ckpt: dict) -> str:
    """How ``ckpt`` stores its weights (:data:`WEIGHTS`); checkpoints written before
    ``weights_dtype`` was recorded: float16 if any floating-point tensor is float16."""
    if "weights_dtype" in ckpt:
        return ckpt["weights_dtype"]
    half = any(v.dtype == torch.float16 for v in ckpt["state_dict"].values())
    return "float16" if half else "float32"


def _dequantized(path: Path, ckpt: dict) -> dict[str, torch.Tensor]:
    """The float32 weights of an int8 checkpoint's ``quant_weights`` / ``quant_scales``."""
    qweights, qscales = ckpt.get("quant_weights"), ckpt.get("quant_scales")
    if not isinstance(qweights, dict) or not isinstance(qscales, dict):
        raise DataError(f"{path}: int8 checkpoint without quant_weights/quant_scales dicts")
    if set(qweights) != set(qscales):
        odd = sorted(set(qweights) ^ set(qscales))[:3]
        raise DataError(f"{path}: int8 weights and scales name different tensors ({odd})")
    clash = sorted(set(qweights) & set(ckpt["state_dict"]))[:3]
    if clash:
        raise DataError(f"{path}: tensors both int8 and in state_dict: {clash}")
    out = {}
    for k, q in qweights.items():
        s = qscales[k]
        if not (isinstance(q, torch.Tensor) and q.dtype == torch.int8 and q.ndim >= 1
                and isinstance(s, torch.Tensor) and s.dtype == torch.float32
                and s.shape == q.shape[:1] and bool(torch.isfinite(s).all())):
            got_s = f"{s.dtype} {tuple(s.shape)}" if isinstance(s, torch.Tensor) else type(s)
            got_q = f"{q.dtype} {tuple(q.shape)}" if isinstance(q, torch.Tensor) else type(q)
            raise DataError(f"{path}: int8 weight {k!r} is {got_q} with scale {got_s} "
                            "(expected int8 (C, ...) and finite float32 (C,))")
        out[k] = dequantize_per_channel(q, s)
    return out


def load_checkpoint(path: str | Path, expected_model: str | None = None
                    ) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint; return ``(model in eval mode, checkpoint dict)``.

    The model is float32 whatever the storage (float16 cast, int8 dequantised); the
    checkpoint dict is as stored.

    Raises:
        DataError: the file is missing, not a checkpoint, has an unknown or inconsistent
            weight storage, or its weights do not fit the model.
        InputError: ``expected_model`` is given and differs from the checkpoint's model.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise DataError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                        f"{_one_line(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (FORMAT, FORMAT1):
        raise DataError(f"{path}: not an EPIC checkpoint (expected format {FORMAT!r})")
    if expected_model is not None and ckpt["model"] != expected_model:
        raise InputError(f"{path}: holds a {ckpt['model']!r} model, expected {expected_model!r}")
    storage = ckpt.get("weights_dtype")
    if storage is not None and storage not in WEIGHTS:
        raise DataError(f"{path}: unknown weights_dtype {storage!r} (known: "
                        f"{', '.join(WEIGHTS)})")
    model = build_model(ckpt["model"], **model_config(ckpt))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    if storage == "int8":
        state.update(_dequantized(path, ckpt))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise DataError(f"{path}: weights do not fit {ckpt['model']!r} with config "
                        f"{ckpt['config']}: {' '.join(first)}") from None
    return model.eval(), ckpt


STANDARD_KEYS = ("format", "model", "config", "state_dict", "dataset", "meta", "weights_dtype",
                 "quant_weights", "quant_scales", "quantization")


def convert_checkpoint(src: str | Path, dst: str | Path, weights: str,
                       meta: dict | None = None) -> Path:
    """Re-store ``src``'s model in ``dst`` with another weight storage (:data:`WEIGHTS`).

    The model is rebuilt from ``src`` in float32 and saved again: from a float16 checkpoint
    the int8 codes quantise the float16 values. The config is written with format-1 defaults
    filled in (:func:`model_config`), so the result rebuilds the same model under the current
    format. ``meta`` replaces ``src``'s meta when given; other top-level entries are kept.
    ``dst`` may be ``src`` (written atomically).
    """
    model, ckpt = load_checkpoint(src)
    extra = {k: v for k, v in ckpt.items() if k not in STANDARD_KEYS}
    return save_checkpoint(dst, model, ckpt["model"], model_config(ckpt), ckpt["dataset"],
                           ckpt["meta"] if meta is None else meta, extra=extra,
                           weights=weights)
