"""Print the fidelity table, robustness and rate-distortion as Markdown, from the job's JSON.

    .venv/bin/python bench/fidelity_report.py --fidelity runs/fidelity --rd runs/rd

With ``--artifacts artifacts/manifest.json``: the table of the shipped EPIC checkpoints.
Otherwise reads ``FIDELITY/<dataset>/row.json`` (``bench/fidelity_row.py``) and
``RD/<dataset>/rd.json`` (``bench/rate_distortion.py``); prints what is there, in the
registry's dataset order.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from epic.data import normalized
from epic.data.openfwi import DATASETS
from epic.errors import DataError

COLUMNS = (("epic", "EPIC"), ("inversionnet", "InversionNet"), ("equal-fusion", "equal fusion"),
           ("isolated", "isolated"))
# OpenFWI's published InversionNet (MAE, SSIM), from a far larger budget. Only the figures we
# could check are listed; the rest are left blank rather than quoted from memory.
PUBLISHED = {"flatvel-a": (0.0131, 0.9895)}


LEARNT_CUT_PCT = 30.0
"""A row counts as learnt where EPIC's MAE is at least this far below the mean map's."""


def mean_map_mae(data_root: Path, dataset: str) -> float | None:
    """Test MAE of always predicting the training set's mean map (the no-skill baseline);
    None where ``DATA_ROOT/<dataset>`` lacks a split."""
    try:
        return normalized.mean_map_mae(data_root / dataset / "train", data_root / dataset / "test",
                                       dataset)
    except DataError:
        return None


def learnt_verdict(mae: float, base: float | None) -> str:
    """"yes (N % below)" where ``mae`` is at least 30 % below the mean map's ``base``."""
    if base is None:
        return "-"
    cut = 100 * (1 - mae / base)
    return (f"yes ({cut:.0f} % below)" if cut >= LEARNT_CUT_PCT
            else f"**no** ({cut:.0f} % below): needs a larger budget")


def shipped_table(manifest: dict) -> list[str]:
    """The shipped EPIC checkpoints (``artifacts/manifest.json``), one row per dataset in the
    registry's order: budget, test metrics of the shipped weights, the mean map, the verdict."""
    entries = {e["dataset"]: e for e in manifest["checkpoints"].values() if e["model"] == "epic"}
    lines = ["| dataset | checkpoint | budget (gathers x epochs) | test gathers | MAE | RMSE | "
             "SSIM | mean-map MAE | EPIC learnt | size |", "|---|---|---|---|---|---|---|---|"
             "---|---|"]
    for name in DATASETS:
        e = entries.get(name)
        if e is None:
            lines.append(f"| {name} | - | not shipped | | | | | | | |")
            continue
        m, base = e["test_metrics"], e.get("mean_map_mae")
        gathers = e["data"].get("train_gathers", e["data"]["train_samples"])
        budget = f"{gathers:,} x {e['budget']['epochs']}"
        if "finetune" in e:
            budget += f", + {e['finetune']['epochs']} int8-aware"
        lines.append(f"| {name} | `{e['file']}` | {budget} | {e['data']['test_samples']} | "
                     f"{m['mae']:.4f} | {m['rmse']:.4f} | {m['ssim']:.3f} | "
                     f"{'-' if base is None else f'{base:.4f}'} | {learnt_verdict(m['mae'], base)}"
                     f" | {e['size_bytes'] / 1e6:.2f} MB |")
    return lines


def _rows(root: Path) -> list[dict]:
    rows = {p.parent.name: json.loads(p.read_text()) for p in root.glob("*/row.json")}
    return [rows[name] for name in DATASETS if name in rows]


def fidelity_table(rows: list[dict], data_root: Path) -> list[str]:
    head = "| dataset | budget | " + " | ".join(f"{t} MAE / SSIM" for _, t in COLUMNS)
    lines = [head + " | mean-map MAE | EPIC learnt | EPIC <= InversionNet MAE | published "
             "InversionNet MAE / SSIM |", "|" + "---|" * (len(COLUMNS) + 6)]
    wins = 0
    for row in rows:
        res = row["results"]
        cells = []
        best = min(res[m]["mae"] for m, _ in COLUMNS if m in res)
        for m, _ in COLUMNS:
            if m not in res:
                cells.append("-")
                continue
            mae = f"{res[m]['mae']:.4f}"
            cells.append(f"{'**' + mae + '**' if res[m]['mae'] == best else mae} / "
                         f"{res[m]['ssim']:.3f}")
        win = ("epic" in res and "inversionnet" in res
               and res["epic"]["mae"] <= res["inversionnet"]["mae"])
        wins += win
        pub = PUBLISHED.get(row["dataset"])
        budget = (f"{row['train_count']}/{row['test_count']}, {row['epochs']} ep, "
                  f"{row.get('precision', 'fp32')}")
        base = mean_map_mae(data_root, row["dataset"])
        learnt = learnt_verdict(res["epic"]["mae"], base) if "epic" in res else "-"
        lines.append(f"| {row['dataset']} | {budget} | " + " | ".join(cells)
                     + f" | {'-' if base is None else f'{base:.4f}'} | {learnt} | "
                     + f"{'yes' if win else 'no'} | "
                     + (f"{pub[0]:.4f} / {pub[1]:.4f} |" if pub else "- |"))
    lines += ["", f"EPIC at or below InversionNet's MAE on **{wins} of {len(rows)}** datasets."]
    return lines


def ablation_table(rows: list[dict]) -> list[str]:
    """EPIC against its variants, where a row trained them: MAE / RMSE / SSIM."""
    variants = (("epic", "EPIC"), ("epic-noprior", "without the midpoint prior"),
                ("epic-resize", "resize-conv head"))
    lines = ["| dataset | " + " | ".join(t for _, t in variants) + " |",
             "|---|" + "---|" * len(variants)]
    for row in rows:
        res = row["results"]
        if not any(m in res for m, _ in variants[1:]):
            continue
        lines.append(f"| {row['dataset']} | " + " | ".join(
            f"{res[m]['mae']:.4f} / {res[m]['rmse']:.4f} / {res[m]['ssim']:.3f}" if m in res
            else "-" for m, _ in variants) + " |")
    return lines


def robustness_table(rows: list[dict]) -> list[str]:
    lines = ["| dataset | EPIC MAE, 0 / 1 / 2 devices missing | equal fusion MAE, 0 / 1 / 2 |",
             "|---|---|---|"]
    for row in rows:
        cells = []
        for m in ("epic", "equal-fusion"):
            rob = row["results"].get(m, {}).get("robustness")
            cells.append(" / ".join(f"{rob[k]['mae']:.4f}" for k in ("0", "1", "2"))
                         if rob else "-")
        lines.append(f"| {row['dataset']} | " + " | ".join(cells) + " |")
    return lines


def rd_table(root: Path) -> list[str]:
    lines = ["| dataset | budget | " + " | ".join(
        f"{b} B" for b in (56, 224, 896, 3584)) + " |", "|---|---|---|---|---|---|"]
    for path in sorted(root.glob("*/rd.json")):
        r = json.loads(path.read_text())
        by = {p["latent_bytes"]: p for p in r["points"]}
        cells = [f"{by[b]['mae']:.4f} / {by[b]['ssim']:.3f}" if b in by else "-"
                 for b in (56, 224, 896, 3584)]
        lines.append(f"| {r['dataset']} | {r['train_count']} gathers, {r['epochs']} ep, "
                     f"{r['precision']} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fidelity", type=Path, default=Path("runs/fidelity"))
    p.add_argument("--rd", type=Path, default=Path("runs/rd"))
    p.add_argument("--data-root", type=Path, default=Path("data"),
                   help="Where the rows' train/test splits are (for the mean-map baseline).")
    p.add_argument("--artifacts", type=Path, default=None,
                   help="Print only the shipped checkpoints' table from this manifest "
                   "(artifacts/manifest.json).")
    a = p.parse_args()
    if a.artifacts is not None:
        print("\n".join(shipped_table(json.loads(a.artifacts.read_text()))))
        return
    rows = _rows(a.fidelity)
    parts = [fidelity_table(rows, a.data_root), ablation_table(rows), robustness_table(rows),
             rd_table(a.rd)]
    print("\n\n".join("\n".join(p) for p in parts))


if __name__ == "__main__":
    main()
