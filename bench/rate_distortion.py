"""Rate and distortion: EPIC's test MAE against the latent bytes each device sends.

    .venv/bin/python bench/rate_distortion.py flatvel-a --token-dims 4,16,64,256 \
        --epochs 5 --precision bf16 --out runs/rd
    .venv/bin/python bench/rate_distortion.py --plot docs/img/rate-distortion.png --out runs/rd

A device sends 14 receiver tokens of ``token_dim`` int8 values, so token_dim 4 / 16 / 64 / 256
is 56 / 224 / 896 / 3,584 bytes of latent per gather. Uses the train and test splits that
``bench/fidelity_row.py`` synthesised under ``DATA_ROOT/DATASET``; every point gets the same
samples, epochs, batch and seed. Results: ``OUT/DATASET/rd.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

RX_PER_DEVICE = 14


def _run(*args: str) -> None:
    print("+ epic", " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "epic_cli", *args], check=True)


def measure(a: argparse.Namespace) -> None:
    data = a.data_root / a.dataset
    card = json.loads((data / "train" / "card.json").read_text())
    points = []
    for token_dim in (int(t) for t in a.token_dims.split(",")):
        run = a.out / a.dataset / f"token-{token_dim}"
        if not (run / "model.pt").is_file():
            _run("train", "--model", "epic", "--data", str(data / "train"), "--out", str(run),
                 "--epochs", str(a.epochs), "--batch", str(a.batch), "--token-dim",
                 str(token_dim), "--threads", str(a.threads), "--precision", a.precision,
                 "--no-progress", "--resume")
        _run("evaluate", "--model", "epic", "--checkpoint", str(run / "model.pt"),
             "--data", str(data / "test"), "--out", str(run / "result.json"))
        r = json.loads((run / "result.json").read_text())
        points.append({"token_dim": token_dim, "latent_bytes": token_dim * RX_PER_DEVICE,
                       **{k: r[k] for k in ("mae", "rmse", "ssim", "samples")}})
        result = {"dataset": a.dataset, "train_count": card.get("count"), "epochs": a.epochs,
                  "batch": a.batch, "precision": a.precision, "points": points}
        (a.out / a.dataset / "rd.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(points, indent=2))


def plot(a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for path in sorted(a.out.glob("*/rd.json")):
        r = json.loads(path.read_text())
        pts = sorted(r["points"], key=lambda p: p["latent_bytes"])
        ax.plot([p["latent_bytes"] for p in pts], [p["mae"] for p in pts], "o-",
                label=f"{r['dataset']} ({r['train_count']} gathers, {r['epochs']} epochs)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("latent per device per gather (bytes, int8)")
    ax.set_ylabel("test MAE (normalised velocity)")
    ax.set_title("EPIC rate and distortion")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    a.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(a.plot, dpi=100)
    print(f"wrote {a.plot}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", nargs="?")
    p.add_argument("--token-dims", default="4,16,64,256")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    p.add_argument("--data-root", type=Path, default=Path("data"))
    p.add_argument("--out", type=Path, default=Path("runs/rd"))
    p.add_argument("--plot", type=Path, help="Draw every OUT/*/rd.json into this PNG.")
    a = p.parse_args()
    if a.plot:
        plot(a)
    elif a.dataset:
        measure(a)
    else:
        p.error("give a DATASET to measure, or --plot PNG")


if __name__ == "__main__":
    main()
