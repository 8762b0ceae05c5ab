"""The points of a sweep, run in parallel: on this machine's cores, or on a Dask cluster.

A what-if study is many independent `emulation.simulate.simulate` runs. `SweepRunner` runs a
list of points (a topology and frame sizes each, with the sweep's shots, seed, compute times
and interval) and returns one `SimulationResult` per point, in order:

- by default on every local core (a process pool);
- with ``cluster="tcp://host:8786"``, as tasks on that Dask scheduler's workers
  (`distributed.Client`; the ``sweeps`` extra installs it). A task runs a batch of points
  (``batch``; by default about 4 batches per worker), never one tiny point each.

Every result is written to ``cache_dir/<key>.json`` as soon as its batch comes back, where
``key`` is the SHA-256 of the point (topology, frame sizes, compute times, shots, seed,
interval). A point whose file exists and holds that key is not run again, so an interrupted
sweep resumes where it stopped. Results equal those of a serial run: each point is the same
seeded, deterministic `simulate` call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from emulation.energy import DeviceEnergy
from emulation.simulate import (
    ComputeTimes,
    FrameSizes,
    ModelFit,
    ModeSummary,
    Percentiles,
    Ratios,
    SimulationResult,
    simulate,
)
from epic.errors import InputError
from epic.topology import Topology

__all__ = ["Point", "SweepRunner", "point_key", "result_from_dict"]

log = logging.getLogger(__name__)

#: Version of the cached result files; a file of another version is run again.
CACHE_VERSION = 1


@dataclass(frozen=True)
class Point:
    """One run of a sweep: `simulate(topology, "both", shots, seed, frame_sizes, compute,
    interval_s)`."""

    topology: Topology
    frame_sizes: FrameSizes
    shots: int
    seed: int
    compute: ComputeTimes
    interval_s: float = 1.0

    @property
    def key(self) -> str:
        """`point_key` of this point."""
        return point_key(self)

    def run(self) -> SimulationResult:
        return simulate(self.topology, "both", self.shots, self.seed, self.frame_sizes,
                        self.compute, self.interval_s)


def point_key(point: Point) -> str:
    """SHA-256 (hex) of everything a point's result depends on: the topology, frame sizes,
    compute times, shots, seed and interval (and the cache version)."""
    text = json.dumps({"version": CACHE_VERSION, "mode": "both",
                       "topology": point.topology.model_dump(mode="json"),
                       "frame_sizes": dataclasses.asdict(point.frame_sizes),
                       "compute": dataclasses.asdict(point.compute), "shots": point.shots,
                       "seed": point.seed, "interval_s": point.interval_s},
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _run_batch(points: Sequence[Point]) -> list[tuple[str, str]]:
    """Run a batch of points (in a worker): (key, result JSON) per point."""
    return [(p.key, p.run().to_json()) for p in points]


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _of(cls, data: dict, **override):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names and k not in override},
               **override)


def result_from_dict(data: dict) -> SimulationResult:
    """The `SimulationResult` of `SimulationResult.to_dict` (or its JSON, nulls for NaN)."""
    def pct(d: dict) -> Percentiles:
        return Percentiles(_nan(d["p50"]), _nan(d["p95"]), _nan(d["p99"]))

    modes = tuple(
        _of(ModeSummary, {k: v for k, v in m.items() if k not in ("gather_latency_s",
                                                                  "frame_latency_s", "energy")},
            gather_latency_s=pct(m["gather_latency_s"]), frame_latency_s=pct(m["frame_latency_s"]),
            energy=tuple(_of(DeviceEnergy, e) for e in m["energy"]))
        for m in data["modes"])
    ratios = data["ratios"]
    fit = data.get("shipped_models")
    return SimulationResult(
        data["testbed"], data["seed"], data["shots"], _of(FrameSizes, data["frame_sizes"]),
        _of(ComputeTimes, data["compute"]), modes,
        Ratios(**{k: _nan(v) for k, v in ratios.items()}) if ratios is not None else None,
        _of(ModelFit, fit, problems=tuple(fit["problems"])) if fit is not None else None)


class SweepRunner:
    """Runs sweep points in parallel and caches each result under ``cache_dir``.

    Args:
        cache_dir: where ``<key>.json`` result files go (created).
        cluster: a Dask scheduler address (``tcp://host:8786``); None runs on local cores.
        workers: local processes (default: every core); ignored with ``cluster``.
        batch: points per task (default: enough for about 4 tasks per worker), >= 1.

    Calling it with points returns their results in order; `computed` then holds the keys it
    ran (the others came from the cache).
    """

    def __init__(self, cache_dir: str | Path, *, cluster: str | None = None,
                 workers: int | None = None, batch: int | None = None) -> None:
        if workers is not None and workers < 1:
            raise InputError(f"sweep workers must be >= 1, got {workers}")
        if batch is not None and batch < 1:
            raise InputError(f"sweep batch must be >= 1, got {batch}")
        self.cache_dir = Path(cache_dir)
        self.cluster, self.workers, self.batch = cluster, workers, batch
        self.computed: list[str] = []

    def cached(self, key: str) -> dict | None:
        """The cached result of ``key`` as a dict, or None if missing or not valid."""
        path = self.cache_dir / f"{key}.json"
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = (isinstance(record, dict) and record.get("key") == key
              and record.get("version") == CACHE_VERSION and isinstance(record.get("result"), dict))
        return record["result"] if ok else None

    def _store(self, key: str, result_json: str) -> None:
        path = self.cache_dir / f"{key}.json"
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(f'{{"key": "{key}", "version": {CACHE_VERSION}, "result": '
                       f"{result_json}}}\n", encoding="utf-8")
        os.replace(tmp, path)  # a reader sees the whole file or none
        self.computed.append(key)

    def __call__(self, points: Sequence[Point]) -> list[SimulationResult]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        keys = [p.key for p in points]
        missing = {}
        for key, point in zip(keys, points, strict=True):
            if key not in missing and self.cached(key) is None:
                missing[key] = point
        todo = list(missing.values())
        log.info("sweep: %d points, %d cached, %d to run", len(points),
                 len(points) - len(todo), len(todo))
        if todo:
            self._run(todo)
        results = []
        for key in keys:
            data = self.cached(key)
            if data is None:
                raise RuntimeError(f"sweep point {key} has no valid result in {self.cache_dir}")
            results.append(result_from_dict(data))
        return results

    def _batches(self, points: list[Point], n_workers: int) -> list[list[Point]]:
        size = self.batch or max(1, math.ceil(len(points) / (4 * n_workers)))
        return [points[i:i + size] for i in range(0, len(points), size)]

    def _run(self, points: list[Point]) -> None:
        if self.cluster is not None:
            self._run_dask(points)
            return
        n_workers = self.workers or os.cpu_count() or 1
        batches = self._batches(points, n_workers)
        if n_workers == 1 or len(batches) == 1:
            for b in batches:
                for key, text in _run_batch(b):
                    self._store(key, text)
            return
        with ProcessPoolExecutor(max_workers=min(n_workers, len(batches))) as pool:
            for done in pool.map(_run_batch, batches):
                for key, text in done:
                    self._store(key, text)

    def _run_dask(self, points: list[Point]) -> None:
        try:
            from distributed import Client, as_completed
        except ImportError as exc:
            raise InputError("--cluster needs Dask: pip install -e '.[sweeps]'") from exc
        with Client(self.cluster, timeout="30s") as client:
            n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
            batches = self._batches(points, n_workers)
            futures = client.map(_run_batch, batches, pure=False)
            for future in as_completed(futures):
                for key, text in future.result():
                    self._store(key, text)
