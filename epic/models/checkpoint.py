"""Checkpoints: a model's weights with the metadata needed to rebuild and trust it.

A checkpoint is a ``torch.save`` dict: ``format``, ``model`` (registry name), ``config``
(constructor keywords), ``state_dict``, ``dataset`` (registry name, for the normalisation
constants) and free-form ``meta`` (training budget, metrics). Shipped checkpoints store
floating-point weights in float16; they are cast back to float32 on load.

Format 2 changed two defaults of the distributed models (the encoder's 4x time decimation
and a lighter upsampling head); a format-1 checkpoint's config is read with the old
defaults filled in (:data:`FORMAT1_DEFAULTS`), so it rebuilds exactly the model it holds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from epic.errors import DataError, InputError
from epic.models.registry import DISTRIBUTED, build_model

__all__ = ["FORMAT", "FORMAT1", "load_checkpoint", "model_config", "save_checkpoint"]

FORMAT = "epic-checkpoint/2"
FORMAT1 = "epic-checkpoint/1"
FORMAT1_DEFAULTS = {"decimate": 1, "head_widths": (128, 64, 32)}
"""Constructor defaults of the distributed models when format 1 was written."""


def save_checkpoint(path: str | Path, model: nn.Module, name: str, config: dict, dataset: str,
                    meta: dict | None = None, half: bool = False, extra: dict | None = None
                    ) -> Path:
    """Write ``model``'s weights and metadata atomically (temp file + rename)."""
    # contiguous: a channels-last training model must still store plain row-major bytes (the
    # ONNX decoders point into them)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             .contiguous().clone()
             for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": name, "config": config, "state_dict": state,
               "dataset": dataset, "meta": meta or {}, **(extra or {})}
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
        legacy = dict(FORMAT1_DEFAULTS)
        if ckpt["model"] not in ("epic", "epic-noprior", "epic-resize"):
            legacy.pop("head_widths")  # only EPIC's head took the new default
        config = {**legacy, **config}
    return config


def load_checkpoint(path: str | Path, expected_model: str | None = None
                    ) -> tuple[nn.Module, dict]:
    """Rebuild the model of a checkpoint; return ``(model in eval mode, checkpoint dict)``.

    Raises:
        DataError: the file is missing, not a checkpoint, or its weights do not fit the model.
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
    model = build_model(ckpt["model"], **model_config(ckpt))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise DataError(f"{path}: weights do not fit {ckpt['model']!r} with config "
                        f"{ckpt['config']}: {' '.join(first)}") from None
    return model.eval(), ckpt
