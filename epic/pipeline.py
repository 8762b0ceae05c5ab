"""The whole fidelity pipeline as one resumable job: ``epic pipeline --scale S --out DIR``.

Steps, each skipped where its output is already complete, so a job that is stopped (or that
runs under a per-command time limit, as on a lent GPU machine) continues where it stopped:

1. **synthesise** every dataset's train and test split (:func:`epic.data.synth.synthesize`,
   itself resumable piece by piece) into ``DATA/<dataset>/{train,test}``;
2. **train** every model of every dataset (:func:`epic.train.train`, resuming from its
   ``last.pt``) into ``OUT/runs/<dataset>/<model>[-seed<k>]``;
3. **evaluate** each on its test split (:func:`epic.evaluate.evaluate`), plus the no-skill
   mean-map baseline (the training maps' mean);
4. **export** the int8 device encoders of each dataset's EPIC model
   (:func:`epic.export.export_encoders`) into ``OUT/encoders/<dataset>``;
5. **fine-tune** that model's decoder against its int8 encoders where the plan asks
   (:func:`epic.finetune.finetune_decoder`, into ``OUT/runs/<dataset>/epic-seed0-int8ft``),
   evaluate it, and export its encoders again (the same ``.tflite`` bytes, a manifest and a
   parity for the new checkpoint) into ``OUT/encoders/<dataset>-int8ft``;
6. write ``OUT/results.json``: per dataset and model the budget (gathers, epochs, batch,
   optimiser, precision, device, wall time) and the test metrics.

Scales: ``smoke`` (seconds on a CPU: what the test suite runs), ``cpu`` (the budget the 2-core
development machine affords) and ``full`` (the issue's data and OpenFWI-like epochs, for an
accelerator: ``--device cuda``).
"""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from epic.accel import check_device
from epic.data.normalized import mean_map_mae
from epic.errors import InputError
from epic.rundir import write_json

__all__ = ["SCALES", "DatasetPlan", "PipelinePlan", "run_pipeline"]

log = logging.getLogger(__name__)

_REAL_MAPS = {"flatvel-a": "FlatVelA", "curvevel-a": "CurveVelA"}
_GENERATED = ("flatvel-b", "curvevel-b", "flatfault-a", "flatfault-b", "curvefault-a",
              "curvefault-b", "style-a", "style-b")
TINY_MODELS = {"token_dim": 8, "encoder_width": 16, "dim": 32, "depth": 1, "heads": 2}


@dataclass(frozen=True)
class DatasetPlan:
    """One dataset's share of the job: gathers, models, seeds and epochs."""

    name: str
    train_count: int
    test_count: int
    models: tuple[str, ...] = ("epic",)
    seeds: tuple[int, ...] = (0,)
    ablation_seeds: tuple[int, ...] = ()  # extra seeds of epic and epic-noprior
    epochs: int = 10
    finetune_epochs: int = 0  # quantisation-aware decoder fine-tuning of epic-seed0 (0: none)
    export: bool = True  # export epic-seed0's int8 encoders (and measure their parity)


@dataclass(frozen=True)
class PipelinePlan:
    """Everything that sets the job's results (written into results.json)."""

    scale: str
    datasets: tuple[DatasetPlan, ...]
    batch: int = 16
    lr: float = 1e-3
    precision: str = "bf16"
    model_config: dict = field(default_factory=dict)
    n_calibration: int = 64
    n_parity: int = 200  # test gathers of the int8 encoders' end-to-end parity
    export_devices: tuple[int, ...] = ()  # () = all five


def _scales() -> dict[str, PipelinePlan]:
    both = ("epic", "inversionnet")
    return {
        "smoke": PipelinePlan(
            "smoke", (DatasetPlan("flatvel-a", 16, 8, both, epochs=2, ablation_seeds=(1,),
                                  finetune_epochs=1),),
            batch=4, model_config=TINY_MODELS, n_calibration=4, export_devices=(1,)),
        "cpu": PipelinePlan("cpu", (
            DatasetPlan("flatvel-a", 5000, 500, both, epochs=8, ablation_seeds=(0, 1, 2),
                        finetune_epochs=3),
            DatasetPlan("curvevel-a", 5000, 500, both, epochs=8, finetune_epochs=3),
            *(DatasetPlan(name, 2000, 200, ("epic",), epochs=8, export=False)
              for name in _GENERATED),
        )),
        "full": PipelinePlan("full", (
            DatasetPlan("flatvel-a", 5000, 1000, both, epochs=120, ablation_seeds=(0, 1, 2),
                        finetune_epochs=3),
            DatasetPlan("curvevel-a", 5000, 1000, both, epochs=120, finetune_epochs=3),
            *(DatasetPlan(name, 2000, 500, ("epic",), epochs=120, finetune_epochs=3)
              for name in _GENERATED),
        )),
    }


SCALES = _scales()
"""The named plans of ``epic pipeline --scale``."""


def _maps(openfwi: Path | None, name: str, split: str) -> Path | None:
    """Real OpenFWI maps for ``name``'s split, or None for the generator datasets."""
    if name not in _REAL_MAPS:
        return None
    if openfwi is None:
        raise InputError(f"{name} needs the real OpenFWI maps: pass --openfwi DIR")
    path = openfwi / f"{_REAL_MAPS[name]}_{split}.zip"
    if not path.is_file():
        raise InputError(f"--openfwi {openfwi}: no {path.name} (see ../shared/openfwi/README.md)")
    return path


def _synth(plan: DatasetPlan, data_root: Path, openfwi: Path | None, device: str,
           workers: int, progress: bool) -> dict[str, Path]:
    from epic.data.synth import read_card, synthesize

    out = {}
    for split, count, seed in (("train", plan.train_count, 0), ("test", plan.test_count, 10_000)):
        directory = data_root / plan.name / split
        card = read_card(directory) if directory.is_dir() else None
        if card is None or card.get("count") != count:
            synthesize(plan.name, count, seed, directory, maps_path=_maps(openfwi, plan.name,
                                                                          split),
                       overwrite=card is not None, progress=progress, device=device,
                       workers=workers)
        out[split] = directory
    return out


def _finetune(ds: DatasetPlan, plan: PipelinePlan, out: Path, dirs: dict[str, Path],
              epic_ckpt: Path, enc_dir: Path, device: str) -> dict:
    """Step 5: EPIC's decoder fine-tuned against its int8 encoders, evaluated and re-exported."""
    from epic.evaluate import evaluate
    from epic.export import export_encoders
    from epic.finetune import FinetuneConfig, finetune_decoder

    run_dir = out / "runs" / ds.name / "epic-seed0-int8ft"
    ft_enc = out / "encoders" / f"{ds.name}-int8ft"
    cfg = FinetuneConfig(epochs=ds.finetune_epochs, batch=plan.batch)
    if not (ft_enc / "manifest.json").is_file():
        finetune_decoder(epic_ckpt, enc_dir, dirs["train"], run_dir, cfg, device=device)
        evaluate("epic", run_dir / "model.pt", dirs["test"], run_dir / "test.json",
                 device=device)
        export_encoders(run_dir / "model.pt", dirs["train"], ft_enc,
                        n_calibration=plan.n_calibration, test_dir=dirs["test"],
                        n_test=plan.n_parity, devices=plan.export_devices or None)
    metrics = json.loads((run_dir / "test.json").read_text())
    return {"checkpoint": str(run_dir / "model.pt"), "config": asdict(cfg),
            "test": {k: metrics[k] for k in ("mae", "rmse", "ssim", "samples")},
            "encoders": {"dir": str(ft_enc),
                         "parity": json.loads((ft_enc / "parity.json").read_text())}}


def run_pipeline(scale: str, out_dir: str | Path, device: str = "cpu",
                 openfwi: str | Path | None = None, data_root: str | Path | None = None,
                 datasets: tuple[str, ...] | None = None, max_minutes: float | None = None,
                 workers: int = 1, progress: bool = False) -> dict:
    """Run (or continue) the pipeline at ``scale``; return and write ``results.json``.

    Args:
        scale: a key of :data:`SCALES`.
        out_dir: receives ``runs/``, ``encoders/`` and ``results.json``.
        device: ``cpu`` or ``cuda[:N]`` for synthesis, training and evaluation.
        openfwi: the folder of real OpenFWI map zips (FlatVel-A, CurveVel-A).
        data_root: where datasets are synthesised (default ``OUT/data``); shared by jobs.
        datasets: only these datasets of the plan.
        max_minutes: stop training (after a checkpoint) once this wall time has passed;
            run the same command again to continue.
        workers: parallel synthesis processes (CPU).
    """
    from epic.evaluate import evaluate
    from epic.export import export_encoders
    from epic.train import TrainConfig, train

    if scale not in SCALES:
        raise InputError(f"--scale {scale!r}: expected one of {', '.join(SCALES)}")
    device = check_device(device)
    plan = SCALES[scale]
    if datasets:
        unknown = sorted(set(datasets) - {d.name for d in plan.datasets})
        if unknown:
            raise InputError(f"--datasets: {', '.join(unknown)} not in the {scale} plan "
                             f"({', '.join(d.name for d in plan.datasets)})")
        plan = replace(plan, datasets=tuple(d for d in plan.datasets if d.name in datasets))
    out = Path(out_dir)
    data_root = Path(data_root) if data_root else out / "data"
    openfwi = Path(openfwi) if openfwi else None
    started = time.monotonic()
    results: dict = {"plan": asdict(plan), "device": device, "datasets": {},
                     "machine": platform.machine(), "complete": False}

    def minutes_left() -> float | None:
        if max_minutes is None:
            return None
        return max_minutes - (time.monotonic() - started) / 60

    complete = True
    for ds in plan.datasets:
        dirs = _synth(ds, data_root, openfwi, device, workers, progress)
        row: dict = {"train": str(dirs["train"]), "test": str(dirs["test"]),
                     "train_gathers": ds.train_count, "test_gathers": ds.test_count,
                     "models": {}}
        runs = [(m, s) for m in ds.models for s in ds.seeds]
        runs += [(m, s) for m in ("epic", "epic-noprior") for s in ds.ablation_seeds
                 if (m, s) not in runs]
        for model, seed in runs:
            run_dir = out / "runs" / ds.name / f"{model}-seed{seed}"
            left = minutes_left()
            if left is not None and left <= 0:
                complete = False
                break
            cfg = TrainConfig(model=model, data_dir=str(dirs["train"]), out_dir=str(run_dir),
                              epochs=ds.epochs, batch=plan.batch, lr=plan.lr, seed=seed,
                              precision=plan.precision, device=device, max_minutes=left,
                              model_config=(dict(plan.model_config)
                                            if model != "inversionnet" else {}))
            record = train(cfg, resume=True, progress=progress)
            if record.get("epoch", 0) < ds.epochs:
                complete = False
                break
            test_json = run_dir / "test.json"
            if (test_json.is_file()
                    and test_json.stat().st_mtime_ns > (run_dir / "model.pt").stat().st_mtime_ns):
                metrics = json.loads(test_json.read_text())
            else:
                metrics = evaluate(model, run_dir / "model.pt", dirs["test"], test_json,
                                   device=device)
            row["models"][f"{model}-seed{seed}"] = {
                "model": model, "seed": seed, "checkpoint": str(run_dir / "model.pt"),
                "budget": {"gathers": ds.train_count, "epochs": ds.epochs,
                           "batch": plan.batch, "optimiser": f"AdamW lr {plan.lr} cosine",
                           "precision": plan.precision, "device": device,
                           "train_wall_s": record.get("wall_s")},
                "test": {k: metrics[k] for k in ("mae", "rmse", "ssim", "samples")}}
        if not complete:
            results["datasets"][ds.name] = row
            break
        row["mean_map_mae"] = mean_map_mae(dirs["train"], dirs["test"])
        epic_ckpt = out / "runs" / ds.name / "epic-seed0" / "model.pt"
        enc_dir = out / "encoders" / ds.name
        if "epic" in ds.models and ds.export and not (enc_dir / "manifest.json").is_file():
            export_encoders(epic_ckpt, dirs["train"], enc_dir, n_calibration=plan.n_calibration,
                            test_dir=dirs["test"], n_test=plan.n_parity,
                            devices=plan.export_devices or None)
        if (enc_dir / "parity.json").is_file():
            row["encoders"] = {"dir": str(enc_dir),
                               "parity": json.loads((enc_dir / "parity.json").read_text())}
        if "epic" in ds.models and ds.export and ds.finetune_epochs:
            row["finetuned"] = _finetune(ds, plan, out, dirs, epic_ckpt, enc_dir, device)
        results["datasets"][ds.name] = row
    results["complete"] = complete
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["written_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    return results
