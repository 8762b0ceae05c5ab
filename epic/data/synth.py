"""Synthesise OpenFWI-layout datasets: velocity maps (generated or real) -> shot-gathers.

The output directory gets OpenFWI's layout, so real and synthetic data are interchangeable:
``data1.npy`` ``(n, 5, 1000, 70)`` float32 and ``model1.npy`` ``(n, 1, 70, 70)`` float32 m/s
(the fault families use ``seis``/``vel``), 500 samples per shard as OpenFWI, plus a dataset
card ``card.json``. Work goes into ``.<out>.partial/`` beside ``out`` in resumable pieces of
50 gathers (a killed job, run again, continues where it stopped; ``--workers`` processes share
the pieces) and is moved in only when complete, so ``out`` never holds a half-written dataset.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import platform
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from tqdm import tqdm

from epic.accel import check_device
from epic.data import families
from epic.data.forward import OPENFWI_ACQUISITION, Acquisition, forward_model
from epic.data.openfwi import DatasetSpec, get_dataset, read_velocity_maps
from epic.errors import DataError, InputError
from epic.rundir import write_json

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


def _job_spec(spec: DatasetSpec, count: int, seed: int, maps_path, acquisition: Acquisition,
              shard_size: int) -> dict:
    """What determines the gathers: a partial job resumes only under the same spec."""
    job = {"dataset": spec.name, "count": count, "seed": seed,
           "maps": None if maps_path is None else str(Path(maps_path).resolve()),
           "acquisition": acquisition.to_dict(), "shard_size": shard_size}
    return json.loads(json.dumps(job))  # as it reads back from job.json (tuples -> lists)


def _pieces(count: int, shard_size: int, piece_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` work units: at most ``piece_size`` maps, never across a shard."""
    out = []
    for shard_start in range(0, count, shard_size):
        shard_stop = min(shard_start + shard_size, count)
        out += [(a, min(a + piece_size, shard_stop))
                for a in range(shard_start, shard_stop, piece_size)]
    return out


def _piece_name(start: int, stop: int) -> str:
    return f"piece-{start:07d}-{stop:07d}.npy"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _forward_piece(maps: np.ndarray, acquisition: Acquisition, batch_size: int,
                   threads: int | None, device: str, path: Path) -> tuple[float, float]:
    """Worker: forward-model one piece, save it atomically, return its amplitude range."""
    data = forward_model(maps, acquisition, batch_size=batch_size, threads=threads,
                         device=device)
    _save_atomic(path, data)
    return float(data.min()), float(data.max())


def _open_staging(staging: Path, job: dict) -> None:
    """Create ``staging`` for ``job``, or check that the partial job there is the same one."""
    job_path = staging / "job.json"
    if job_path.is_file():
        try:
            old = json.loads(job_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = None
        if old != job:
            differs = ([k for k in job if old.get(k) != job[k]] if isinstance(old, dict)
                       else ["job.json unreadable"])
            raise InputError(
                f"{staging}: holds a partial synthesis of another job (differs in "
                f"{', '.join(differs)}); pass --overwrite to discard it, or repeat the "
                "command that started it to resume")
        return
    staging.mkdir(parents=True, exist_ok=True)
    write_json(job_path, job)


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
    workers: int = 1,
    device: str = "cpu",
    piece_size: int = 50,
) -> SynthResult:
    """Write ``count`` shot-gathers of ``dataset`` into ``out_dir`` in OpenFWI's layout.

    The job is resumable: finished pieces of ``piece_size`` gathers are kept in
    ``.<out name>.partial/`` beside ``out_dir``; running the same job again (same dataset,
    count, seed, maps, acquisition and shard size) forward-models only the missing pieces.
    ``out_dir`` receives the shards and ``card.json`` only once all are done.

    Args:
        dataset: a registry name (``flatvel-a`` ...); sets the generator and file naming.
        count: number of samples, > 0.
        seed: seeds the map generator (ignored for the maps themselves when ``maps_path``
            is given, but recorded).
        maps_path: real velocity maps (``.npy`` or ``.zip`` of them); the first ``count``
            are used in place of generated ones.
        threads: torch threads per worker (default: all cores split over the workers).
        shard_size: samples per shard (OpenFWI's 500 by default).
        workers: parallel forward-modelling processes (CPU); 1 runs in this process.
        device: ``cpu`` or ``cuda`` (deepwave's propagator runs there).
        piece_size: gathers per resumable unit of work.
    """
    spec: DatasetSpec = get_dataset(dataset)
    for name, value in (("--count", count), ("--workers", workers), ("piece_size", piece_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    device = check_device(device)
    if device != "cpu" and workers > 1:
        raise InputError(f"--workers {workers}: parallel workers are for the CPU; on "
                         f"{device} one process drives the accelerator")
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
    staging = out_dir.parent / f".{out_dir.name}.partial"
    job = _job_spec(spec, count, seed, maps_path, acquisition, shard_size)
    if overwrite:
        shutil.rmtree(staging, ignore_errors=True)
    _open_staging(staging, job)
    pieces = _pieces(count, shard_size, piece_size)
    todo = [p for p in pieces if not (staging / _piece_name(*p)).is_file()]
    done_maps = count - sum(b - a for a, b in todo)
    if done_maps:
        log.info("resuming %s: %d of %d gathers already synthesised in %s", spec.title,
                 done_maps, count, staging)
    if threads is None and device == "cpu":
        threads = max(1, (os.cpu_count() or 1) // workers)
    bar = tqdm(total=count, initial=done_maps, unit="gather", desc=f"synth {spec.name}",
               disable=not progress)
    try:
        if workers == 1:
            for a, b in todo:
                _forward_piece(maps[a:b], acquisition, batch_size, threads, device,
                               staging / _piece_name(a, b))
                bar.update(b - a)
        else:
            ctx = multiprocessing.get_context("spawn")  # no torch state forked into workers
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {pool.submit(_forward_piece, maps[a:b], acquisition, batch_size,
                                       threads, device, staging / _piece_name(a, b)): (a, b)
                           for a, b in todo}
                for future in as_completed(futures):
                    future.result()
                    a, b = futures[future]
                    bar.update(b - a)
    finally:
        bar.close()
    wall_s = time.perf_counter() - started

    names = []
    data_min, data_max = np.inf, -np.inf
    for k, start in enumerate(range(0, count, shard_size), start=1):
        stop = min(start + shard_size, count)
        parts = [np.load(staging / _piece_name(a, b)) for a, b in pieces
                 if start <= a < stop]
        data = np.concatenate(parts)
        data_min, data_max = min(data_min, float(data.min())), max(data_max, float(data.max()))
        _save_atomic(staging / f"{spec.data_prefix}{k}.npy", data)
        _save_atomic(staging / f"{spec.model_prefix}{k}.npy",
                     np.ascontiguousarray(maps[start:stop]))
        names.append(f"{spec.data_prefix}{k}.npy")
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
        "resumed_from_gathers": done_maps,
        "threads": threads,
        "workers": workers,
        "device": device,
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
    for name in [*names, *(f"{spec.model_prefix}{k}" + ".npy"
                           for k in range(1, len(names) + 1)), CARD_NAME]:
        target = out_dir / name
        os.replace(staging / name, target)
        moved.append(target)
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
