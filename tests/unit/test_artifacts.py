"""Shipped checkpoints: they load, fit the size budget, and reproduce their manifest."""

import json
from pathlib import Path

import pytest
import torch

from epic.data.normalized import load_normalized
from epic.data.synth import synthesize
from epic.metrics import fidelity
from epic.models.checkpoint import load_checkpoint, weights_dtype
from epic.ship import check_storage
from epic.train import predict
from tests.conftest import REPO

ARTIFACTS = REPO / "artifacts"
MANIFEST = json.loads((ARTIFACTS / "manifest.json").read_text())["checkpoints"]


def test_artifacts_stay_under_120_mb():
    total = sum(p.stat().st_size for p in ARTIFACTS.rglob("*") if p.is_file())
    assert total < 120e6


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_manifest_entry_matches_its_checkpoint(name):
    entry = MANIFEST[name]
    _, ckpt = load_checkpoint(ARTIFACTS / name, expected_model=entry["model"])
    assert ckpt["dataset"] == entry["dataset"] and ckpt["config"] == entry["config"]
    assert weights_dtype(ckpt) == entry["weights_dtype"] in ("float16", "int8")
    floats = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    if entry["weights_dtype"] == "float16":
        assert all(v.dtype == torch.float16 for v in floats)
    else:  # int8 conv / linear weights with float32 per-channel scales, the rest float32
        assert ckpt["quant_weights"] and all(v.dtype == torch.float32 for v in floats)
        assert all(q.dtype == torch.int8 for q in ckpt["quant_weights"].values())
        assert (ARTIFACTS / name).stat().st_size == entry["size_bytes"]
    if "test_change" in entry:  # the storage met its bar against the float32 weights
        check_storage(entry)
        assert entry["test_change"]["mae"] == pytest.approx(
            entry["test_metrics"]["mae"] - entry["test_metrics_float32"]["mae"], abs=1e-12)
    assert entry["command"].startswith(f"epic train --model {entry['model']} ")


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_checkpoint_reproduces_manifest_metrics_on_fixed_subset(name, tmp_path, openfwi_dir):
    entry = MANIFEST[name]
    subset = entry["subset"]
    maps = None  # a generator dataset's subset: its generator at subset["seed"]
    if subset["maps"]:
        maps = openfwi_dir / Path(subset["maps"]).name
        if not maps.is_file():
            pytest.skip(f"real OpenFWI maps not found: {maps}")
    torch.set_num_threads(2)
    synthesize(entry["dataset"], subset["first"], subset["seed"], tmp_path / "s", maps_path=maps,
               threads=2)
    split = load_normalized(tmp_path / "s")
    model, _ = load_checkpoint(ARTIFACTS / name)
    got = fidelity(predict(model, split.x), split.y)
    for key in ("mae", "rmse", "ssim"):
        assert got[key] == pytest.approx(subset["metrics"][key], abs=1e-3), key
