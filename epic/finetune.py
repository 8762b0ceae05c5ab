"""Quantisation-aware fine-tuning of a distributed model's decoder against its int8 encoders.

Why: post-training int8 quantisation moves each device's latent by 4-8 % of the latents'
spread (rounding inside the encoder, not only at its output). A decoder trained on float
latents only turns that into an end-to-end MAE change of -3 % to +7 %, depending on the
calibration draw (docs/benchmarks.md), outside the +-2 % parity target.

``finetune_decoder(checkpoint, encoders_dir, data_dir, out_dir)``:

1. **Latents.** Every training gather goes through the float encoder (torch) and through the
   devices' own int8 ``.tflite`` encoders (:class:`epic.inference.EncoderRuntime`, the code
   the devices run, via :func:`epic.export_parity.paired_latents`). They are kept in
   ``OUT/latents.npz`` and reused by a rerun with the same checkpoint, encoders and data.
2. **Decoder.** The encoder is frozen, so the exported encoders stay exact for the new
   checkpoint. The decoder trains on a mixture: each device of each sample sends its int8
   latent with probability ``p_int8`` (default 0.5), else its float one, and devices drop out
   as in training (``device_dropout``). A device without an exported encoder always sends
   its float latent. L1 loss on the normalised velocity, AdamW with cosine
   decay from ``lr``, bf16 autocast where asked. ``OUT/last.pt`` after every epoch: a killed
   job resumes from its last whole epoch.
3. ``OUT/model.pt``: the whole model, its ``meta["finetune"]`` naming the encoders it was
   adapted to.

Training the decoder on both latents keeps the float model's fidelity while teaching the
decoder the int8 encoders' error, which is what the parity measures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from epic.accel import check_device
from epic.data.openfwi import OpenFWIDataset, get_dataset
from epic.errors import DataError, InputError
from epic.export_parity import paired_latents
from epic.inference.encoder import EncoderRuntime
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.models.epic import DistributedModel
from epic.train import random_presence

__all__ = ["FinetuneConfig", "finetune_decoder"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneConfig:
    """The fine-tuning's settings (recorded in the checkpoint's meta)."""

    epochs: int = 3
    batch: int = 16
    lr: float = 1e-4
    weight_decay: float = 1e-4
    p_int8: float = 0.5
    device_dropout: float = 0.3
    precision: str = "bf16"
    seed: int = 0
    limit: int | None = None

    def validate(self) -> None:
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise InputError(f"lr must be > 0, got {self.lr}")
        for name in ("p_int8", "device_dropout"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{name} must be within [0, 1], got {getattr(self, name)}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.limit is not None and self.limit < 1:
            raise InputError(f"limit must be >= 1, got {self.limit}")


def _encoders(encoders_dir: Path, checkpoint: Path, ckpt: dict, model: DistributedModel
              ) -> tuple[dict[int, EncoderRuntime], dict]:
    """The int8 runtimes of ``encoders_dir``'s manifest, checked against ``checkpoint``."""
    from epic.export import sha256_file

    manifest_path = encoders_dir / "manifest.json"
    if not manifest_path.is_file():
        raise DataError(f"--encoders {encoders_dir}: no manifest.json (make one with epic export)")
    try:
        manifest = json.loads(manifest_path.read_text())
        source = manifest["source_checkpoint"]["sha256"]
        ids = [int(e["device_id"]) for e in manifest["devices"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{manifest_path}: not an encoder manifest "
                        f"({type(exc).__name__}: {exc})") from None
    digest = sha256_file(checkpoint)
    if source != digest:
        raise InputError(f"--encoders {encoders_dir}: exported from a checkpoint with sha256 "
                         f"{source[:12]}..., not {checkpoint} ({digest[:12]}...); export the "
                         "encoders of this checkpoint first (epic export)")
    if manifest.get("dataset") != ckpt["dataset"]:
        raise InputError(f"--encoders {encoders_dir}: dataset {manifest.get('dataset')!r}, the "
                         f"checkpoint's is {ckpt['dataset']!r}")
    if not ids or not set(ids) <= set(range(1, model.n_devices + 1)):
        raise InputError(f"--encoders {encoders_dir}: encoders for devices {sorted(ids)}; the "
                         f"model has devices 1..{model.n_devices}")
    return ({d: EncoderRuntime.from_manifest(manifest_path, d) for d in ids},
            {"dir": str(encoders_dir), "manifest_sha256": sha256_file(manifest_path),
             "calibration": manifest.get("calibration", {}).get("samples")})


def _latents(path: Path, key: dict, model: DistributedModel, encoders: dict,
             data_dir: Path, spec, limit: int | None) -> dict[str, np.ndarray]:
    """``{"float", "int8": (N, n_dev, k, token_dim), "y": (N, 1, 70, 70)}``, cached at path."""
    if path.is_file():
        with np.load(path) as cached:
            if json.loads(str(cached["key"])) == key:
                log.info("%s: reusing the latents", path)
                return {k: cached[k] for k in ("float", "int8", "y")}
        log.info("%s: made from other inputs; recomputing", path)
    ds = OpenFWIDataset(data_dir)
    n = len(ds) if limit is None else min(limit, len(ds))
    t0 = time.perf_counter()
    tokens, tokens_q, y = paired_latents(model, encoders, ds, np.arange(n), spec)
    if y is None:
        raise DataError(f"--data {data_dir}: no velocity maps to train against")
    log.info("latents of %d gathers in %.1f s", n, time.perf_counter() - t0)
    tmp = path.with_suffix(".partial.npz")
    np.savez(tmp, float=tokens, int8=tokens_q, y=y.astype(np.float32), key=json.dumps(key))
    tmp.replace(path)
    return {"float": tokens, "int8": tokens_q, "y": y.astype(np.float32)}


def finetune_decoder(checkpoint: str | Path, encoders_dir: str | Path, data_dir: str | Path,
                     out_dir: str | Path, config: FinetuneConfig | None = None,
                     device: str = "cpu", threads: int | None = None) -> dict:
    """Fine-tune the decoder of ``checkpoint`` on its int8 encoders' latents (module doc).

    Args:
        checkpoint: a distributed model (EPIC) checkpoint.
        encoders_dir: ``epic export`` output of that same checkpoint (sha256 checked).
        data_dir: OpenFWI-layout training split (raw amplitudes and velocity).
        out_dir: receives ``latents.npz``, ``last.pt``, ``log.jsonl`` and ``model.pt``.
        device: ``cpu`` or ``cuda[:N]`` for the decoder's training.

    Returns the last epoch's record.

    Raises:
        DataError: a missing or invalid checkpoint, manifest or data directory.
        InputError: a bad setting, or encoders exported from another checkpoint.
    """
    cfg = config or FinetuneConfig()
    cfg.validate()
    device = check_device(device)
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    checkpoint, encoders_dir = Path(checkpoint), Path(encoders_dir)
    data_dir, out = Path(data_dir), Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    model, ckpt = load_checkpoint(checkpoint)
    if not isinstance(model, DistributedModel):
        raise InputError(f"{checkpoint}: model {ckpt['model']!r} has no device encoder")
    encoders, enc_record = _encoders(encoders_dir, checkpoint, ckpt, model)
    spec = get_dataset(ckpt["dataset"])
    out.mkdir(parents=True, exist_ok=True)
    shards = sorted(str(p.relative_to(data_dir)) for p in data_dir.rglob("*.npy"))
    key = {"encoders": enc_record["manifest_sha256"], "data": str(data_dir.resolve()),
           "limit": cfg.limit, "shards": shards}
    lat = _latents(out / "latents.npz", key, model, encoders, data_dir, spec, cfg.limit)
    n = len(lat["y"])

    torch.manual_seed(cfg.seed)
    model = model.to(device)
    model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-n // cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    rng, start_epoch, record = np.random.default_rng(cfg.seed), 0, {}
    last = out / "last.pt"
    if last.is_file():
        resumed, saved = load_checkpoint(last)
        if saved.get("meta", {}).get("finetune", {}).get("config") == asdict(cfg):
            model = resumed.to(device)
            model.encoder.requires_grad_(False)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
            opt.load_state_dict(saved["optimizer"])
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(
                opt, T_max=cfg.epochs * steps_per_epoch)
            sched.load_state_dict(saved["scheduler"])
            rng.bit_generator.state = saved["rng"]
            torch.set_rng_state(saved["torch_rng"])
            start_epoch = saved["meta"]["finetune"]["epoch"]
            record = saved["meta"]["finetune"].get("last", {})
            log.info("resumed %s at epoch %d", last, start_epoch)
        else:
            log.info("%s: another configuration; starting over", last)
    autocast = "cuda" if device.startswith("cuda") else "cpu"
    started = time.monotonic()
    meta_base = {k: v for k, v in ckpt.get("meta", {}).items() if k != "finetune"}
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        losses, int8_share = [], []
        order = rng.permutation(n)
        for i in range(0, n, cfg.batch):
            idx = np.sort(order[i:i + cfg.batch])
            use_int8 = rng.random((len(idx), model.n_devices)) < cfg.p_int8
            tokens = np.where(use_int8[:, :, None, None], lat["int8"][idx], lat["float"][idx])
            present = random_presence(rng, len(idx), model.n_devices, cfg.device_dropout)
            t = torch.from_numpy(tokens).to(device)
            y = torch.from_numpy(lat["y"][idx]).to(device)
            with torch.autocast(autocast, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                pred = model.decode(t, torch.from_numpy(present).to(device))
            loss = torch.nn.functional.l1_loss(pred.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            int8_share.append(float(use_int8.mean()))
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "int8_share": round(float(np.mean(int8_share)), 3),
                  "lr": sched.get_last_lr()[0], "wall_s": round(time.monotonic() - started, 1)}
        with (out / "log.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        log.info("finetune epoch %d: %s", epoch + 1, record)
        finetune = {"config": asdict(cfg), "epoch": epoch + 1, "last": record,
                    "encoders": enc_record, "source_checkpoint": str(checkpoint),
                    "data": str(data_dir), "gathers": n}
        save_checkpoint(last, model, ckpt["model"], ckpt["config"], ckpt["dataset"],
                        {**meta_base, "finetune": finetune},
                        extra={"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                               "rng": rng.bit_generator.state,
                               "torch_rng": torch.get_rng_state()})
    model, final = load_checkpoint(last)
    save_checkpoint(out / "model.pt", model, ckpt["model"], ckpt["config"], ckpt["dataset"],
                    final["meta"])
    return record
