"""Where one training step's time goes (issue 14, 1): data, normalisation, forward, backward,
optimiser, per model, in milliseconds per sample.

Two data paths are timed for every model: the old one (raw float32 gathers read from the
OpenFWI shards and normalised in numpy, as ``epic train`` did before the cache) and the
training cache (:func:`epic.data.cache.cached_split`: normalised, decimated where the model's
encoder decimates, float16, memory-mapped). The model phases are timed with the cache's
batches, bf16 autocast or float32 as given, channels-last on the CPU, as ``epic train`` runs
them. Each figure is the median over ``--steps`` steps after ``--warmup`` steps.

    .venv/bin/python bench/profile_step.py --data data/full/flatvel-a/test --limit 160 \\
        --threads 2 --json runs/bench/profile.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from epic.data.cache import cached_split
from epic.data.normalized import resolve_dataset
from epic.data.openfwi import OpenFWIDataset
from epic.data.transforms import normalize_data
from epic.models.registry import build_model
from epic.train import random_presence

MODELS = ("epic", "inversionnet")
PHASES = ("read raw", "normalise", "read cache", "forward", "backward", "optimiser")


def profile(name: str, data: Path, limit: int, batch: int, steps: int, warmup: int,
            precision: str) -> dict[str, float]:
    """Median milliseconds per sample of each of :data:`PHASES` for model ``name``."""
    torch.manual_seed(0)
    model = build_model(name)
    decimate = getattr(getattr(model, "encoder", None), "decimate", 1)
    split = cached_split(data, decimate=decimate, limit=limit)
    raw = OpenFWIDataset(data)
    spec = resolve_dataset(data)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for step in range(warmup + steps):
        idx = np.sort(rng.choice(len(split.x), size=batch, replace=False))
        t0 = time.perf_counter()
        gathers = np.stack([raw[int(i)][0] for i in idx])
        t1 = time.perf_counter()
        normalize_data(gathers, spec.data_min, spec.data_max)
        t2 = time.perf_counter()
        xb, yb = split.batch(idx)
        x = torch.from_numpy(xb).float().contiguous(memory_format=torch.channels_last)
        y = torch.from_numpy(yb).float()
        t3 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if name == "inversionnet":
                pred = model(x)
            else:
                present = torch.from_numpy(random_presence(rng, batch, 5, 0.3))
                pred = model(x, present, decimated=decimate > 1)
        loss = torch.nn.functional.l1_loss(pred.float(), y)
        t4 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t5 = time.perf_counter()
        opt.step()
        t6 = time.perf_counter()
        if step >= warmup:
            for phase, (a, b) in zip(PHASES, ((t0, t1), (t1, t2), (t2, t3), (t3, t4),
                                              (t4, t5), (t5, t6)), strict=True):
                times[phase].append(b - a)
    return {p: 1e3 * float(np.median(v)) / batch for p, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--limit", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    result = {m: profile(m, a.data, a.limit, a.batch, a.steps, a.warmup, a.precision)
              for m in MODELS}
    print(f"ms per sample, batch {a.batch}, {a.precision}, {a.threads} threads "
          f"(median of {a.steps} steps)")
    print("| model | " + " | ".join(PHASES) + " | step with the cache |")
    print("|---|" + "---:|" * (len(PHASES) + 1))
    for m, r in result.items():
        step = r["read cache"] + r["forward"] + r["backward"] + r["optimiser"]
        print(f"| {m} | " + " | ".join(f"{r[ph]:.2f}" for ph in PHASES) + f" | {step:.2f} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                      "ms_per_sample": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
