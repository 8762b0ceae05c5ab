"""Synthesise OpenFWI-layout datasets: velocity maps (generated or real) -> shot-gathers.

The output directory gets OpenFWI's layout, so real and synthetic data are interchangeable:
``data1.npy`` ``(n, 5, 1000, 70)`` float32 and ``model1.npy`` ``(n, 1, 70, 70)`` float32 m/s
(the fault families use ``seis``/``vel``), 500 samples per shard as OpenFWI, plus a dataset
card ``card.json``. Everything is written into a temporary folder beside ``out`` and moved in
only when complete, so a failure leaves nothing half-written in ``out``.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from epic.data import families
from epic.data.forward import OPENFWI_ACQUISITION, Acquisition, forward_model
from epic.data.openfwi import DatasetSpec, get_dataset, read_velocity_maps
from epic.errors import DataError, InputError

__all__ = ["CARD_NAME", "SynthResult", "read_card", "synthesize"]

log = logging.getLogger(__name__)

CARD_NAME = "card.json"
_SHARD_FILE = re.compile(r"^(data|model|seis|vel)\d+\.npy$")


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote: paths, sample count, amplitude range and wall time."""

    out_dir: Path
    shard_paths: tuple[Path, ...]
    count: int
    data_min: float
    data_max: float
    wall_s: float
    card: dict


def _versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for pkg in ("epic-testbed", "deepwave", "torch", "numpy"):
        try:
            found[pkg] = version(pkg)
        except PackageNotFoundError:
            found[pkg] = "not installed"
    return found


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir}: exists and is not a directory")
    if out_dir.is_dir() and not overwrite:
        clash = sorted(p.name for p in out_dir.glob("*.npy")) + (
            [CARD_NAME] if (out_dir / CARD_NAME).exists() else []
        )
        if clash:
            raise InputError(
                f"--out {out_dir}: already holds {', '.join(clash[:3])}; "
                "choose another directory or pass --overwrite"
            )


def synthesize(
    dataset: str,
    count: int,
    seed: int,
    out_dir: str | Path,
    maps_path: str | Path | None = None,
    acquisition: Acquisition = OPENFWI_ACQUISITION,
    batch_size: int = 8,
    threads: int | None = None,
    shard_size: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> SynthResult:
    """Write ``count`` shot-gathers of ``dataset`` into ``out_dir`` in OpenFWI's layout.

    Args:
        dataset: a registry name (``flatvel-a`` ...); sets the generator and file naming.
        count: number of samples, > 0.
        seed: seeds the map generator (ignored for the maps themselves when ``maps_path``
            is given, but recorded).
        maps_path: real velocity maps (``.npy`` or ``.zip`` of them); the first ``count``
            are used in place of generated ones.
        shard_size: samples per shard (OpenFWI's 500 by default).
    """
    spec: DatasetSpec = get_dataset(dataset)
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise InputError(f"--count must be a positive integer, got {count!r}")
    shard_size = shard_size or spec.file_size
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)

    started = time.perf_counter()
    if maps_path is not None:
        maps = read_velocity_maps(maps_path, limit=count)
        if len(maps) < count:
            raise DataError(f"{maps_path}: holds {len(maps)} maps, fewer than --count {count}")
        generator = {"kind": "maps", "source": str(maps_path), "first": count}
    else:
        maps = families.generate(spec.name, count, seed)
        generator = {"kind": "family", "family": spec.name, "module": families.__name__}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        names = []
        data_min, data_max = np.inf, -np.inf
        for k, start in enumerate(range(0, count, shard_size), start=1):
            stop = min(start + shard_size, count)
            log.info("forward-modelling %s gathers %d..%d of %d", spec.title, start, stop, count)
            data = forward_model(maps[start:stop], acquisition, batch_size=batch_size,
                                 threads=threads, progress=progress)
            data_min, data_max = min(data_min, float(data.min())), max(data_max, float(data.max()))
            np.save(staging / f"{spec.data_prefix}{k}.npy", data)
            np.save(staging / f"{spec.model_prefix}{k}.npy", np.ascontiguousarray(maps[start:stop]))
            names.append(f"{spec.data_prefix}{k}.npy")
        wall_s = time.perf_counter() - started
        card = {
            "format": "openfwi",
            "dataset": spec.name,
            "title": spec.title,
            "count": count,
            "seed": seed,
            "generator": generator,
            "shards": names,
            "acquisition": acquisition.to_dict(),
            "normalisation": {"data_min": spec.data_min, "data_max": spec.data_max,
                              "velocity_min_mps": spec.velocity_min_mps,
                              "velocity_max_mps": spec.velocity_max_mps},
            "observed": {"data_min": data_min, "data_max": data_max,
                         "velocity_min_mps": float(maps.min()),
                         "velocity_max_mps": float(maps.max())},
            "synthesis_wall_s": round(wall_s, 3),
            "threads": threads,
            "versions": _versions(),
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2) + "\n")
        out_dir.mkdir(parents=True, exist_ok=True)
        if overwrite:
            stale = [p for p in out_dir.glob("*.npy") if _SHARD_FILE.match(p.name)]
            for old in [*stale, out_dir / CARD_NAME]:
                old.unlink(missing_ok=True)
        moved = []
        for path in sorted(staging.iterdir()):
            target = out_dir / path.name
            os.replace(path, target)
            moved.append(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SynthResult(
        out_dir=out_dir,
        shard_paths=tuple(p for p in moved if p.name != CARD_NAME),
        count=count,
        data_min=data_min,
        data_max=data_max,
        wall_s=wall_s,
        card=card,
    )


def read_card(directory: str | Path) -> dict | None:
    """The dataset card of ``directory``, or None where there is none (real OpenFWI data)."""
    path = Path(directory) / CARD_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
