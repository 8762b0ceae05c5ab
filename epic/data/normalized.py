"""A dataset directory loaded and normalised for training and evaluation (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epic.data.openfwi import DatasetSpec, OpenFWIDataset, get_dataset
from epic.data.transforms import normalize_data, normalize_velocity
from epic.errors import DataError, InputError

__all__ = ["NormalizedSplit", "load_normalized", "mean_map_mae", "resolve_dataset"]


@dataclass(frozen=True)
class NormalizedSplit:
    """Attributes: ``x`` ``(N, 5, 1000, 70)`` and ``y`` ``(N, 1, 70, 70)`` float32 on OpenFWI's
    normalised scales; ``spec`` the dataset whose constants were used."""

    x: np.ndarray
    y: np.ndarray
    spec: DatasetSpec
    directory: Path


def resolve_dataset(directory: str | Path, dataset: str | None = None) -> DatasetSpec:
    """The dataset of ``directory``: ``dataset`` if given, else the one its card names."""
    from epic.data.synth import read_card

    if not Path(directory).is_dir():
        raise DataError(f"{directory}: no such directory")
    if dataset:
        return get_dataset(dataset)
    card = read_card(directory)
    if card is None or "dataset" not in card:
        raise DataError(f"{directory}: no card.json naming the dataset (for real OpenFWI "
                        "data pass --dataset NAME)")
    return get_dataset(card["dataset"])


def load_normalized(directory: str | Path, dataset: str | None = None,
                    limit: int | None = None) -> NormalizedSplit:
    """Load every sample of ``directory`` (or the first ``limit``) and normalise it."""
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise InputError(f"--limit must be >= 1, got {limit!r}")
    spec = resolve_dataset(directory, dataset)
    ds = OpenFWIDataset(directory)
    n = len(ds) if limit is None else min(limit, len(ds))
    x = np.empty((n, 5, 1000, 70), np.float32)
    y = np.empty((n, 1, 70, 70), np.float32)
    for i in range(n):
        data, velocity = ds[i]
        x[i] = normalize_data(data, spec.data_min, spec.data_max)
        y[i] = normalize_velocity(velocity, spec.velocity_min_mps, spec.velocity_max_mps)
    return NormalizedSplit(x=x, y=y, spec=spec, directory=Path(directory))


def mean_map_mae(train_dir: str | Path, test_dir: str | Path, dataset: str | None = None
                 ) -> float:
    """Test MAE (normalised scale) of always predicting the training maps' mean: no skill.

    Raises:
        DataError: a split without velocity maps (via :func:`epic.data.openfwi.find_shards`).
    """
    from epic.data.openfwi import find_shards, load_velocity

    spec = resolve_dataset(train_dir, dataset)

    def maps(directory: str | Path) -> np.ndarray:
        return normalize_velocity(
            np.concatenate([load_velocity(p.model_path) for p in find_shards(Path(directory))]),
            spec.velocity_min_mps, spec.velocity_max_mps)

    return float(np.abs(maps(test_dir) - maps(train_dir).mean(axis=0)).mean())
