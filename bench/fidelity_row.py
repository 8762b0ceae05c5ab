"""One row of the fidelity table: synthesise, train every model, evaluate, write the row.

    .venv/bin/python bench/fidelity_row.py flatvel-a \
        --maps-train ../shared/openfwi/FlatVelA_train.zip \
        --maps-test ../shared/openfwi/FlatVelA_test.zip --train-count 1200 --test-count 200 \
        --epochs 6 --threads 2 --out runs/fidelity

Every model gets the same training samples, the same epochs and batch, and the same seed.
Results: ``OUT/DATASET/<model>/result.json`` and ``OUT/DATASET/row.json``; existing
checkpoints and datasets are reused, so an interrupted job resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("epic", "inversionnet", "isolated", "equal-fusion", "epic-noprior", "epic-resize")
ROBUSTNESS = ("epic", "equal-fusion")


def _run(*args: str) -> None:
    print("+ epic", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "epic_cli", *args], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset")
    p.add_argument("--maps-train")
    p.add_argument("--maps-test")
    p.add_argument("--train-count", type=int, default=1200)
    p.add_argument("--test-count", type=int, default=200)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--seed", type=int, default=0, help="Data seed of the train split.")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("runs/fidelity"))
    a = p.parse_args()
    data = a.data_root / a.dataset
    for split, count, maps, seed in (("train", a.train_count, a.maps_train, a.seed),
                                     ("test", a.test_count, a.maps_test, a.seed + 10_000)):
        if not (data / split / "card.json").is_file():
            extra = ["--maps", maps] if maps else []
            _run("data", "synth", "--dataset", a.dataset, "--count", str(count), "--seed",
                 str(seed), "--threads", str(a.threads), "--out", str(data / split),
                 "--no-progress", "--overwrite", *extra)
    row_path = a.out / a.dataset / "row.json"  # a later run with other --models adds to it
    old = json.loads(row_path.read_text())["results"] if row_path.is_file() else {}
    row = {"dataset": a.dataset, "train_count": a.train_count, "test_count": a.test_count,
           "epochs": a.epochs, "batch": a.batch, "precision": a.precision, "results": old}
    for model in a.models.split(","):
        run = a.out / a.dataset / model
        started = time.monotonic()
        if not (run / "model.pt").is_file():
            _run("train", "--model", model, "--data", str(data / "train"), "--out", str(run),
                 "--epochs", str(a.epochs), "--batch", str(a.batch), "--threads",
                 str(a.threads), "--precision", a.precision, "--no-progress", "--resume")
        _run("evaluate", "--model", model, "--checkpoint", str(run / "model.pt"),
             "--data", str(data / "test"), "--out", str(run / "result.json"))
        result = json.loads((run / "result.json").read_text())
        if model in ROBUSTNESS:  # MAE with 1 and 2 of the 5 devices missing
            result["robustness"] = {"0": {k: result[k] for k in ("mae", "rmse", "ssim")}}
            for k in (1, 2):
                out = run / f"result-drop{k}.json"
                _run("evaluate", "--model", model, "--checkpoint", str(run / "model.pt"),
                     "--data", str(data / "test"), "--out", str(out), "--drop-devices", str(k))
                r = json.loads(out.read_text())
                result["robustness"][str(k)] = {m: r[m] for m in ("mae", "rmse", "ssim")}
        log_path = run / "log.jsonl"  # absent where model.pt is a shipped artifact
        last = ([json.loads(x) for x in log_path.read_text().splitlines()][-1]
                if log_path.is_file() else {})
        result["train_wall_s"] = last.get("wall_s")
        result["wall_s_this_job"] = round(time.monotonic() - started, 1)
        row["results"][model] = result
        row_path.write_text(json.dumps(row, indent=2) + "\n")
    print(json.dumps({m: {k: r[k] for k in ("mae", "rmse", "ssim")}
                      for m, r in row["results"].items()}, indent=2))


if __name__ == "__main__":
    main()
