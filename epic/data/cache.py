"""Training cache: a dataset directory normalised once, stored compactly, memory-mapped.

Training reads every sample once per epoch. Reading OpenFWI's float32 shards and normalising
each sample in Python costs more than a training step of the decimated encoder, and holding
5,000 normalised gathers in float32 takes 7 GB of RAM. The cache stores, per directory:

- ``x.npy`` ``(N, 5, T, 70)`` float16: normalised gathers (OpenFWI's log + min-max), passed
  through the device encoder's fixed :class:`~epic.models.encoder.Decimator` when
  ``decimate > 1`` (``T = 1000 / decimate``), so training never decimates the same trace twice;
- ``y.npy`` ``(N, 1, 70, 70)`` float16: normalised velocity;
- ``cache.json``: what it was built from (paths, shard sizes and mtimes, dataset constants,
  decimation, filter) and the build time.

float16 keeps 11 significant bits: the normalised values lie in [-1, 1], so the storage error
is below 5e-4, under the bfloat16 autocast's own rounding (4e-3). A batch is one fancy-index
into the memory map, with no per-sample Python.

The cache lives under ``$EPIC_CACHE_DIR`` (default ``~/.cache/epic-testbed``), one folder
per (directory, limit, decimation, dataset) whose name carries a hash of the source's shard
sizes and mtimes: a changed dataset gets a new cache, never a stale one. It is built in a
temporary folder and renamed into place, so an interrupted build leaves nothing to trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from epic.data.normalized import resolve_dataset
from epic.data.openfwi import DatasetSpec, OpenFWIDataset, find_shards
from epic.data.transforms import normalize_data, normalize_velocity
from epic.errors import DataError, InputError

__all__ = ["CACHE_ENV", "CachedSplit", "cache_root", "cached_split"]

log = logging.getLogger(__name__)

CACHE_ENV = "EPIC_CACHE_DIR"
_FORMAT = "epic-train-cache/1"
_CHUNK = 50  # samples normalised per step while building


@dataclass(frozen=True)
class CachedSplit:
    """A cached split. Attributes: ``x`` ``(N, 5, T, 70)`` and ``y`` ``(N, 1, 70, 70)``
    float16 memory maps; ``spec`` the dataset; ``decimate`` the time decimation of ``x``;
    ``directory`` the source; ``path`` the cache folder."""

    x: np.ndarray
    y: np.ndarray
    spec: DatasetSpec
    decimate: int
    directory: Path
    path: Path

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of the samples ``idx`` (sorted for locality), float16."""
        return self.x[idx], self.y[idx]


def cache_root() -> Path:
    """``$EPIC_CACHE_DIR``, or ``~/.cache/epic-testbed``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "epic-testbed")


def _source_fingerprint(directory: Path) -> list[list]:
    """Name, size and mtime of every shard: a changed dataset gets another cache key."""
    out = []
    for pair in find_shards(directory, require_models=True):
        for path in (pair.data_path, pair.model_path):
            st = path.stat()
            out.append([path.name, st.st_size, st.st_mtime_ns])
    return out


def _decimator(decimate: int):
    from epic.models.encoder import Decimator

    return Decimator(decimate).eval()


def cached_split(directory: str | Path, dataset: str | None = None, decimate: int = 1,
                 limit: int | None = None, root: str | Path | None = None,
                 progress: bool = False) -> CachedSplit:
    """The training cache of ``directory`` (the first ``limit`` samples), built if absent.

    Args:
        directory: an OpenFWI-layout directory with velocity shards.
        dataset: the dataset for the normalisation constants (default: from card.json).
        decimate: 1 (full 1 ms traces, for InversionNet) or the device encoder's factor.
        limit: cache only the first ``limit`` samples.
        root: where caches live (default :func:`cache_root`).
        progress: show a tqdm bar while building.
    """
    if limit is not None and (isinstance(limit, bool) or limit < 1):
        raise InputError(f"--limit must be >= 1, got {limit!r}")
    if decimate not in (1, 4):
        raise InputError(f"decimate must be 1 or 4, got {decimate!r}")
    directory = Path(directory)
    spec = resolve_dataset(directory, dataset)
    fingerprint = _source_fingerprint(directory)
    source = {"directory": str(directory.resolve()), "dataset": spec.name, "limit": limit,
              "decimate": decimate, "shards": fingerprint,
              "normalisation": [spec.data_min, spec.data_max, spec.velocity_min_mps,
                                spec.velocity_max_mps]}
    if decimate > 1:
        dec = _decimator(decimate)
        source["filter"] = {"taps": dec.taps, "kernel_sha256": hashlib.sha256(
            dec.kernel.numpy().tobytes()).hexdigest()}
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(root) if root is not None else cache_root()
    path = root / f"{spec.name}-{directory.resolve().name}-d{decimate}-{key}"
    if not (path / "cache.json").is_file():
        _build(directory, spec, decimate, limit, source, path, progress)
    try:
        x = np.load(path / "x.npy", mmap_mode="r")
        y = np.load(path / "y.npy", mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable training cache ({exc}); delete it to rebuild"
                        ) from None
    if len(x) != len(y):
        raise DataError(f"{path}: x holds {len(x)} samples, y {len(y)}; delete it to rebuild")
    return CachedSplit(x=x, y=y, spec=spec, decimate=decimate, directory=directory, path=path)


def _build(directory: Path, spec: DatasetSpec, decimate: int, limit: int | None,
           source: dict, path: Path, progress: bool) -> None:
    import torch
    from tqdm import tqdm

    started = time.perf_counter()
    ds = OpenFWIDataset(directory)
    n = len(ds) if limit is None else min(limit, len(ds))
    dec = _decimator(decimate) if decimate > 1 else None
    nt = 1000 if dec is None else dec.output_length(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        x = np.lib.format.open_memmap(staging / "x.npy", "w+", np.float16, (n, 5, nt, 70))
        y = np.lib.format.open_memmap(staging / "y.npy", "w+", np.float16, (n, 1, 70, 70))
        buf = np.empty((_CHUNK, 5, 1000, 70), np.float32)
        bar = tqdm(total=n, unit="gather", desc=f"cache {spec.name}", disable=not progress)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            for i in range(start, stop):
                data, velocity = ds[i]
                normalize_data(data, spec.data_min, spec.data_max, out=buf[i - start])
                y[i] = normalize_velocity(velocity, spec.velocity_min_mps,
                                          spec.velocity_max_mps)
            chunk = buf[: stop - start]
            if dec is not None:
                with torch.no_grad():
                    chunk = dec(torch.from_numpy(chunk)).numpy()
            x[start:stop] = chunk
            bar.update(stop - start)
        bar.close()
        x.flush()
        y.flush()
        del x, y
        meta = {"format": _FORMAT, "samples": n, "x_shape": [n, 5, nt, 70], "dtype": "float16",
                "source": source, "build_wall_s": round(time.perf_counter() - started, 2)}
        (staging / "cache.json").write_text(json.dumps(meta, indent=2) + "\n")
        shutil.rmtree(path, ignore_errors=True)  # a stale, incomplete folder
        os.replace(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("cached %d %s gathers (decimate %d) in %s", n, spec.title, decimate, path)
