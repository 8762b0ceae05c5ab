"""Ship a trained checkpoint into ``artifacts/``: compact weights plus a manifest entry.

    .venv/bin/python bench/ship_artifact.py runs/fidelity/flatvel-a/epic \
        --test data/flatvel-a/test --maps ../shared/openfwi/FlatVelA_test.zip --weights int8

Writes ``artifacts/<model>-<dataset>.pt`` (``--weights``: int8 per-channel conv/linear
weights, or float16; :mod:`epic.models.checkpoint`) and updates ``artifacts/manifest.json``
with: the command that trained it (from its training config), the data, the budget (epochs,
samples, wall time), the test metrics of the float32 and of the shipped weights and their
change (``test_change``, ``mae_rel``; the bar, :func:`epic.ship.check_storage`: int8 within
1 % of the float32 MAE, float16 within 1e-3), and the metrics on a small fixed subset (the
first ``--subset`` maps of ``--maps``, re-synthesised; for a generator dataset, without
``--maps``, the first ``--subset`` maps of its generator at ``--subset-seed``) that
``tests/unit/test_artifacts.py`` reproduces.

A checkpoint from ``epic finetune`` (its meta holds ``finetune``) keeps its source's command,
data and budget, and its entry adds the fine-tuning: command, epochs, gathers, wall time and
the int8 encoders it was adapted to.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from epic.data.normalized import load_normalized, mean_map_mae
from epic.data.synth import read_card, synthesize
from epic.errors import InputError
from epic.metrics import fidelity
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.ship import check_storage, shipped_copy, storage_record
from epic.train import predict

MANIFEST = Path("artifacts/manifest.json")


def _train_command(train: dict) -> str:
    parts = ["epic train", f"--model {train['model']}", f"--data {train['data_dir']}",
             f"--out {train['out_dir']}", f"--epochs {train['epochs']}",
             f"--batch {train['batch']}", f"--seed {train['seed']}", f"--lr {train['lr']}",
             f"--device-dropout {train['device_dropout']}"]
    if train.get("token_dim"):
        parts.append(f"--token-dim {train['token_dim']}")
    if train.get("precision", "fp32") != "fp32":
        parts.append(f"--precision {train['precision']}")
    if train.get("threads"):
        parts.append(f"--threads {train['threads']}")
    return " ".join(parts)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--test", type=Path, required=True)
    p.add_argument("--maps", type=Path, help="real maps for the fixed subset (default: the "
                   "dataset's generator, for the generator datasets)")
    p.add_argument("--subset", type=int, default=4)
    p.add_argument("--subset-seed", type=int, default=0, help="generator seed of the subset")
    p.add_argument("--weights", choices=("int8", "float16"), default="int8")
    p.add_argument("--keep-float32", action="append", default=[], metavar="PREFIX",
                   help="tensors whose name starts with PREFIX stay float32 (repeatable), "
                   "e.g. encoder. for EPIC's device encoder")
    a = p.parse_args()
    torch.set_num_threads(2)
    model, ckpt = load_checkpoint(a.run_dir / "model.pt")
    name, dataset, meta = ckpt["model"], ckpt["dataset"], ckpt["meta"]
    finetune = meta.get("finetune")
    out = Path("artifacts") / f"{name}-{dataset}.pt"
    test = load_normalized(a.test)
    full = fidelity(predict(model, test.x), test.y)
    with tempfile.TemporaryDirectory() as tmp:
        shipped_model = shipped_copy(model, name, ckpt["config"], dataset, a.weights, tmp,
                                     tuple(a.keep_float32))
        storage = storage_record(full, fidelity(predict(shipped_model, test.x), test.y),
                                 a.weights)
        try:
            check_storage(storage)
        except InputError as exc:
            raise SystemExit(str(exc)) from None
        sub_dir = Path(tmp) / "subset"
        seed = 0 if a.maps else a.subset_seed
        synthesize(dataset, a.subset, seed, sub_dir, maps_path=a.maps, threads=2)
        sub = load_normalized(sub_dir)
        subset = fidelity(predict(shipped_model, sub.x), sub.y)
    log = [json.loads(x) for x in (a.run_dir / "log.jsonl").read_text().splitlines()]
    if finetune:  # the source's training, then the fine-tuning of this run
        base = {k: meta[k] for k in ("command", "data", "budget")}
        base["data"] = {**base["data"], "test": str(a.test), "test_samples": len(test.x)}
        cfg = finetune["config"]
        base["finetune"] = {
            "command": (f"epic finetune --checkpoint {finetune['source_checkpoint']} "
                        f"--encoders {finetune['encoders']['dir']} --data {finetune['data']} "
                        f"--out {a.run_dir} --epochs {cfg['epochs']} --batch {cfg['batch']} "
                        f"--lr {cfg['lr']} --p-int8 {cfg['p_int8']} --precision "
                        f"{cfg['precision']}"),
            "epochs": log[-1]["epoch"], "gathers": finetune["gathers"],
            "wall_s": log[-1]["wall_s"], "encoders": finetune["encoders"]}
    else:
        train = meta["train"]
        data_commands = []
        for split_dir in (Path(train["data_dir"]), a.test):
            card = read_card(split_dir) or {}
            gen = card.get("generator", {})
            maps = f" --maps {gen['source']}" if gen.get("kind") == "maps" else ""
            data_commands.append(f"epic data synth --dataset {card.get('dataset')} --count "
                                 f"{card.get('count')} --seed {card.get('seed')} --out "
                                 f"{split_dir}{maps}")
        base = {"command": _train_command(train),
                "data": {"train": train["data_dir"], "test": str(a.test),
                         "commands": data_commands, "train_samples": log[-1]["samples_seen"],
                         "test_samples": len(test.x)},
                "budget": {"epochs": log[-1]["epoch"], "batch": train["batch"],
                           "train_wall_s": log[-1]["wall_s"], "machine": "2-core CPU, shared"}}
    train_card = read_card(Path(base["data"]["train"])) or {}
    base["data"] = {**base["data"], "train_gathers": train_card.get("count")}
    entry = {
        "file": out.name,
        "model": name,
        "dataset": dataset,
        "config": ckpt["config"],
        "parameters": sum(t.numel() for t in model.state_dict().values()
                          if t.is_floating_point()),
        "float32_prefixes": a.keep_float32,
        **base,  # command, data, budget (and finetune)
        **storage,  # weights_dtype, test_metrics_float32, test_metrics, test_change
        "mean_map_mae": mean_map_mae(base["data"]["train"], a.test, dataset),
        "subset": {"maps": str(a.maps) if a.maps else None, "first": a.subset,
                   "seed": 0 if a.maps else a.subset_seed, "metrics": subset},
    }
    # from the float32 model: the same codes / values as the copy measured above
    save_checkpoint(out, model, name, ckpt["config"], dataset,
                    {k: v for k, v in entry.items() if k != "file"}, weights=a.weights,
                    float32_prefixes=tuple(a.keep_float32))
    entry["size_bytes"] = out.stat().st_size
    manifest = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {"checkpoints": {}}
    manifest["checkpoints"][out.name] = entry
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps(entry, indent=2))


if __name__ == "__main__":
    main()
