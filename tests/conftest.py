"""Shared fixtures: paths to the real OpenFWI maps and small on-disk datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
OPENFWI_DIR = REPO.parent / "shared" / "openfwi"

requires_openfwi = pytest.mark.skipif(
    not (OPENFWI_DIR / "FlatVelA_test.zip").is_file(),
    reason=f"real OpenFWI maps not found in {OPENFWI_DIR}",
)


@pytest.fixture(scope="session", autouse=True)
def _training_cache_in_tmp(tmp_path_factory):
    """Training caches (epic.data.cache) go to a per-session folder, never ~/.cache."""
    import os

    from epic.data.cache import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("train-cache"))
    yield
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def openfwi_dir() -> Path:
    return OPENFWI_DIR


@pytest.fixture
def velocity_npy(tmp_path: Path) -> Path:
    """A small valid velocity shard, (3, 1, 70, 70) float32 m/s, with distinct maps."""
    maps = np.full((3, 1, 70, 70), 2000.0, np.float32)
    maps[:, :, 35:] = np.array([2500.0, 3000.0, 3500.0], np.float32)[:, None, None, None]
    path = tmp_path / "model1.npy"
    np.save(path, maps)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """8 synthesised FlatVel-A-like gathers in OpenFWI layout (real deepwave, ~3 s)."""
    from epic.data.synth import synthesize

    out = tmp_path_factory.mktemp("tiny") / "flatvel-a"
    synthesize("flatvel-a", 8, seed=5, out_dir=out, threads=2)
    return out
