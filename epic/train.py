"""Training: ``epic train --model NAME --data DIR --out DIR``.

Every model gets the same loop: AdamW, cosine learning-rate decay over the planned epochs,
L1 loss on the normalised velocity (optionally plus ``l2_weight`` x MSE, as OpenFWI), fixed
seeds, a tqdm bar, a checkpoint after every epoch (``last.pt``, resumable with ``resume``) and
one JSON line per epoch in ``log.jsonl``. Samples come from the training cache
(:mod:`epic.data.cache`: normalised once, float16, memory-mapped, already through the device
encoder's fixed decimation), and the model runs channels-last on the CPU. ``device`` is
``cpu`` or ``cuda[:N]``. Distributed models see random device dropout: each
sample loses 1 or 2 devices with probability ``device_dropout``, so the decoder learns to
cope with missing devices. ``max_minutes`` stops at the first batch past the budget, after
saving. ``precision="bf16"`` runs forward and backward under CPU bfloat16 autocast (weights,
optimizer state and the loss stay float32); evaluation always runs in float32.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from epic.accel import check_device
from epic.data.cache import cached_split
from epic.data.normalized import load_normalized
from epic.errors import InputError
from epic.metrics import fidelity
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.models.registry import DISTRIBUTED, MODELS, build_model

__all__ = ["TrainConfig", "predict", "random_presence", "train"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (stored in its checkpoints)."""

    model: str
    data_dir: str
    out_dir: str
    epochs: int = 10
    batch: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    l2_weight: float = 0.0
    seed: int = 0
    max_minutes: float | None = None
    device_dropout: float = 0.3
    token_dim: int | None = None
    val_dir: str | None = None
    limit: int | None = None
    dataset: str | None = None
    threads: int | None = None
    precision: str = "fp32"
    model_config: dict = field(default_factory=dict)
    device: str = "cpu"
    cache_dir: str | None = None

    def validate(self) -> None:
        if self.model not in MODELS:
            raise InputError(f"unknown model {self.model!r}; expected one of {', '.join(MODELS)}")
        for name in ("epochs", "batch"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.device_dropout <= 1:
            raise InputError(f"device_dropout must be within [0, 1], got {self.device_dropout}")
        if self.precision not in ("fp32", "bf16"):
            raise InputError(f"precision must be fp32 or bf16, got {self.precision!r}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise InputError(f"--max-minutes must be > 0, got {self.max_minutes}")


def random_presence(rng: np.random.Generator, batch: int, n_devices: int, p_drop: float
                    ) -> np.ndarray:
    """``(batch, n_devices)`` bool: each row drops 1 or 2 random devices with prob ``p_drop``."""
    present = np.ones((batch, n_devices), bool)
    for row in np.flatnonzero(rng.random(batch) < p_drop):
        k = rng.integers(1, 3)
        present[row, rng.choice(n_devices, size=k, replace=False)] = False
    return present


@torch.no_grad()
def predict(model: torch.nn.Module, x: np.ndarray, present: np.ndarray | None = None,
            batch: int = 16, device: str = "cpu", decimated: bool = False) -> np.ndarray:
    """Normalised gathers ``(N, 5, 1000, 70)`` -> normalised maps ``(N, 1, 70, 70)``, float32.

    ``decimated``: ``x`` is ``(N, 5, 1000 / decimate, 70)``, already through the encoder's
    Decimator (a training cache). Runs in float32 on ``device``.
    """
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(np.asarray(x[i : i + batch], np.float32)).to(device)
        p = None if present is None else torch.from_numpy(present[i : i + batch]).to(device)
        pred = model(xb, p, decimated=True) if decimated else model(xb, p)
        out.append(pred.float().cpu().numpy())
    return np.concatenate(out)


def _decimation(model: torch.nn.Module) -> int:
    """The time decimation the model's device encoder applies first (1: none)."""
    encoder = getattr(model, "encoder", None)
    return getattr(encoder, "decimate", 1) if encoder is not None else 1


def _model_config(cfg: TrainConfig) -> dict:
    config = dict(cfg.model_config)
    if cfg.token_dim is not None:
        config["token_dim"] = cfg.token_dim
    return config


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg.model``; write ``last.pt``, ``model.pt`` and ``log.jsonl`` in ``out_dir``.

    Returns the final epoch's log record.
    """
    cfg.validate()
    device = check_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    torch.manual_seed(cfg.seed)
    config = _model_config(cfg)
    model = build_model(cfg.model, **config)
    decimate = _decimation(model)
    split = cached_split(cfg.data_dir, dataset=cfg.dataset, decimate=decimate,
                         limit=cfg.limit, root=cfg.cache_dir, progress=progress)
    val = (load_normalized(cfg.val_dir, dataset=cfg.dataset, limit=cfg.limit)
           if cfg.val_dir else None)
    out.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if device == "cpu" else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = -(-len(split.x) // cfg.batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    start_epoch, rng = 0, np.random.default_rng(cfg.seed)
    record: dict = {}
    last = out / "last.pt"
    if resume and last.is_file():
        model, ckpt = load_checkpoint(last, expected_model=cfg.model)
        model = model.to(device, memory_format=memory_format)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        opt.load_state_dict(ckpt["optimizer"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.epochs * steps_per_epoch)
        sched.load_state_dict(ckpt["scheduler"])
        start_epoch = ckpt["meta"]["epoch"]  # epochs completed (a partial one is redone)
        record = ckpt["meta"].get("last", {})
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        log.info("resumed %s at epoch %d", last, start_epoch)
    distributed = cfg.model in DISTRIBUTED
    autocast = "cuda" if device.startswith("cuda") else "cpu"
    started = time.monotonic()
    budget_s = None if cfg.max_minutes is None else cfg.max_minutes * 60
    stopped_early = False
    log_path = out / "log.jsonl"
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        order = rng.permutation(len(split.x))
        losses = []
        bar = tqdm(range(0, len(order), cfg.batch), desc=f"{cfg.model} epoch {epoch + 1}",
                   disable=not progress, leave=False)
        for i in bar:
            idx = np.sort(order[i : i + cfg.batch])
            xb, yb = split.batch(idx)
            x = torch.from_numpy(xb).to(device).float().contiguous(memory_format=memory_format)
            y = torch.from_numpy(yb).to(device).float()
            present = (torch.from_numpy(random_presence(rng, len(idx), 5, cfg.device_dropout)
                                        ).to(device) if distributed else None)
            with torch.autocast(autocast, dtype=torch.bfloat16,
                                enabled=cfg.precision == "bf16"):
                pred = model(x, present, decimated=True) if decimate > 1 else model(x, present)
            pred = pred.float()
            loss = torch.nn.functional.l1_loss(pred, y)
            if cfg.l2_weight:
                loss = loss + cfg.l2_weight * torch.nn.functional.mse_loss(pred, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
            if budget_s is not None and time.monotonic() - started > budget_s:
                stopped_early = True
                break
        record = {"epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                  "lr": sched.get_last_lr()[0], "wall_s": round(time.monotonic() - started, 1),
                  "samples_seen": len(losses) * cfg.batch, "stopped_early": stopped_early}
        if val is not None:
            record["val"] = fidelity(predict(model, val.x, device=device), val.y)
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        completed = epoch if stopped_early else epoch + 1
        meta = {"epoch": completed, "train": asdict(cfg), "last": record}
        save_checkpoint(last, model, cfg.model, config, split.spec.name, meta, extra={
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()})
        log.info("epoch %d: %s", epoch + 1, record)
        if stopped_early:
            break
    save_checkpoint(out / "model.pt", model, cfg.model, config, split.spec.name,
                    {"epoch": record.get("epoch", start_epoch), "train": asdict(cfg),
                     "last": record})
    return record
