"""Sweeps: `simulate` over the values of one parameter, the points run in parallel (on this
machine's cores, or on a Dask cluster), and their CSV table and plot.

``sweep(topology, key, values, out_dir)`` varies ``key`` (one of `SWEEP_KEYS`), checks every
value before writing anything, runs the points and writes ``sweep_<key>.csv`` and
``sweep_<key>.png``.

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

import csv
import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

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

__all__ = ["SWEEP_KEYS", "Point", "SweepResult", "SweepRunner", "check_sweep", "parse_sweep",
           "point_key", "result_from_dict", "sweep"]

log = logging.getLogger(__name__)

#: Parameters `sweep` can vary: every link's bandwidth or loss, the latent size, the device count.
SWEEP_KEYS: tuple[str, ...] = ("bandwidth_bps", "loss", "latent_frame_bytes", "devices")

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


def parse_sweep(text: str) -> tuple[str, tuple[float, ...]]:
    """Parse ``key=v1,v2,...`` (a `SWEEP_KEYS` key). Raises `InputError` naming the bad part."""
    key, sep, values = text.partition("=")
    key = key.strip()
    if not sep or key not in SWEEP_KEYS:
        raise InputError(f"--sweep must be KEY=v1,v2,... with KEY one of {', '.join(SWEEP_KEYS)},"
                         f" got {text!r}")
    try:
        parsed = tuple(float(v) for v in values.split(",") if v.strip())
    except ValueError as exc:
        raise InputError(f"--sweep {key}: values must be numbers, got {values!r}") from exc
    if not parsed:
        raise InputError(f"--sweep {key}: no values in {text!r}")
    return key, parsed


def _vary(topology: Topology, sizes: FrameSizes, key: str,
          value: float) -> tuple[Topology, FrameSizes]:
    """The topology and frame sizes with ``key`` set to ``value``."""
    if key in ("latent_frame_bytes", "devices") and not (math.isfinite(value)
                                                         and value == int(value)):
        raise InputError(f"sweep {key}={value:g}: must be a whole number")
    if key == "devices" and value < 1:
        raise InputError(f"sweep devices={value:g}: must be >= 1")
    if key == "latent_frame_bytes":
        try:
            return topology, dataclasses.replace(sizes, latent_frame_bytes=int(value))
        except InputError as exc:
            raise InputError(f"sweep {key}={value:g}: {exc}") from None
    data = topology.model_dump()
    if key in ("bandwidth_bps", "loss"):
        for link in data["links"].values():
            link[key] = value
    elif key == "devices":
        template, width = data["devices"][0], 14
        data["devices"] = [dict(template, id=f"device-{i + 1}", receivers=[width * i,
                                                                          width * (i + 1)])
                           for i in range(int(value))]
    else:
        raise InputError(f"sweep key must be one of {', '.join(SWEEP_KEYS)}, got {key!r}")
    try:
        return Topology.model_validate(data), sizes
    except ValidationError as exc:
        raise InputError(f"sweep {key}={value:g}: {exc.errors()[0]['msg']}") from None


def check_sweep(topology: Topology, key: str, values: tuple[float, ...],
                frame_sizes: FrameSizes = FrameSizes()) -> None:
    """Raise `InputError` naming the first value of ``key`` that cannot run; writes nothing.
    `sweep` calls it before its first file; call it before writing anything else."""
    for value in values:
        _vary(topology, frame_sizes, key, value)


@dataclass(frozen=True)
class SweepResult:
    """The runs of a sweep (one `SimulationResult` per value) and the files written."""

    key: str
    values: tuple[float, ...]
    results: tuple[SimulationResult, ...]
    csv_path: Path
    png_path: Path


_CSV_COLUMNS = ("key", "value", "mode", "latency_p50_s", "latency_p95_s", "latency_p99_s",
                "comm_j", "uplink_bytes", "frames", "frames_lost", "ratio_latency_p50",
                "ratio_energy_comm")


def sweep(topology: Topology, key: str, values: tuple[float, ...], out_dir: str | Path, *,
          shots: int = 20, seed: int = 0, frame_sizes: FrameSizes = FrameSizes(),
          compute: ComputeTimes = ComputeTimes(), interval_s: float = 1.0,
          runner: Callable[[list], list[SimulationResult]] | None = None) -> SweepResult:
    """Run `simulate` (both modes) for each value of ``key``; write ``sweep_<key>.csv`` and
    ``sweep_<key>.png`` under ``out_dir``. Every value is checked before anything is written.

    ``runner`` (an `emulation.sweeps.SweepRunner`: local cores or a Dask cluster, results
    cached by point) runs the points; without one they run here, one after another."""
    check_sweep(topology, key, values, frame_sizes)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    varied = [_vary(topology, frame_sizes, key, value) for value in values]
    if runner is None:
        results = [simulate(topo, "both", shots, seed, sizes, compute, interval_s)
                   for topo, sizes in varied]
    else:
        results = runner([Point(topo, sizes, shots, seed, compute, interval_s)
                          for topo, sizes in varied])
    csv_path = out_dir / f"sweep_{key}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(_CSV_COLUMNS)
        for value, res in zip(values, results, strict=True):
            for m in res.modes:
                writer.writerow([key, value, m.mode, m.gather_latency_s.p50,
                                 m.gather_latency_s.p95, m.gather_latency_s.p99, m.comm_j,
                                 m.uplink_bytes, m.frames, m.frames_lost,
                                 res.ratios.latency_p50, res.ratios.energy_comm])
    png_path = out_dir / f"sweep_{key}.png"
    _plot(key, values, results, png_path)
    log.info("sweep %s: wrote %s and %s", key, csv_path, png_path)
    return SweepResult(key, tuple(values), tuple(results), csv_path, png_path)


def _plot(key: str, values: tuple[float, ...], results: list[SimulationResult],
          path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    for mode in ("epic", "raw"):
        p50 = [r.mode(mode).gather_latency_s.p50 for r in results]
        p99 = [r.mode(mode).gather_latency_s.p99 for r in results]
        line, = axes[0].plot(values, p50, "o-", label=f"{mode} p50")
        axes[0].plot(values, p99, "--", color=line.get_color(), label=f"{mode} p99")
        axes[1].plot(values, [r.mode(mode).comm_j for r in results], "o-", label=mode)
    axes[2].plot(values, [r.ratios.latency_p50 for r in results], "o-", label="latency p50")
    axes[2].plot(values, [r.ratios.energy_comm for r in results], "s-", label="comm energy")
    for ax, ylabel in zip(axes, ("latency per device gather (s)", "comm energy, all devices (J)",
                                 "raw / EPIC"), strict=True):
        ax.set_xlabel(key)
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        if key in ("bandwidth_bps", "devices", "latent_frame_bytes"):
            ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"EPIC vs raw, sweep over {key} ({results[0].shots} shot-gathers)")
    fig.savefig(path, dpi=120)
    plt.close(fig)
