"""Start-up and whole-command speed of `epic`, each against a bare baseline timed in the same run.

    .venv/bin/python bench/bench_cli.py --tree /tmp/before --tree . --runs 5 [--sweep-scaling]

Interleaved, a fresh process each (``PYTHONPATH=<tree>``), medians of ``--runs``:

- ``epic --help`` against a click + stdlib process printing a group's help;
- ``epic simulate --mode epic --shots 100 --json`` (start, parse, simulate, write) on the
  default topology scaled to 1,000 devices, dedicated links and one shared medium, in frames
  per wall-clock and per CPU second of the process (children's rusage), against a bare SimPy
  process (1,000 processes x 100 timeouts, start included) in events per second; and the
  model's SimPy events per frame (counted in-process);
- ``--sweep-scaling``: 8 sweep points on a local Dask cluster of 1 and of 2 worker processes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
BARE_CLICK = ("import click, json, logging, sys, pathlib\n"
              "@click.group()\ndef cli():\n    'A group.'\n"
              "@cli.command()\ndef verb():\n    'A verb.'\n"
              "cli(['--help'])")
BARE_SIMPY = ("import simpy\nenv = simpy.Environment()\n"
              "def p(env):\n    for _ in range(100):\n        yield env.timeout(1.0)\n"
              "for _ in range(1000):\n    env.process(p(env))\nenv.run()")
BARE_SIMPY_EVENTS = 1000 * 102  # 100 timeouts, the start and the end of each process
RUN_CLI = "import sys\nfrom epic_cli import main\nsys.exit(main())"


def timed(args: list[str], tree: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one process."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], env=env, cwd=tree, check=True,
                   stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall_s, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scaled(kind: str, n: int = 1000) -> dict:
    base = yaml.safe_load((REPO / "topology.yaml").read_text())
    base["links"]["wifi"]["kind"] = kind
    template = base["devices"][0]
    base["devices"] = [dict(template, id=f"device-{i + 1}", receivers=[14 * i, 14 * i + 14])
                       for i in range(n)]
    return base


def events_per_frame(path: str) -> float:
    """SimPy events the model processes per frame (run in the tree under test)."""
    from emulation.network import Message, NetworkModel, Workload
    from epic.topology import load_topology

    model = NetworkModel(load_topology(path), seed=0)
    steps = [0]
    step = model.env.step

    def counted() -> None:
        steps[0] += 1
        step()

    model.env.step = counted
    result = model.run(Workload((Message(1086, 0.005),), gathers=100, interval_s=1.0))
    return steps[0] / result.frames.lost.size


def sweep_scaling(runs: int) -> None:
    from distributed import LocalCluster

    from emulation.simulate import ComputeTimes, FrameSizes
    from emulation.sweeps import Point, SweepRunner, _vary
    from epic.topology import Topology

    topo = Topology.model_validate(scaled("shared", 200))
    points = [Point(t, s, 20, 0, ComputeTimes())
              for t, s in (_vary(topo, FrameSizes(), "bandwidth_bps", v)
                           for v in (5e6, 10e6, 20e6, 40e6, 6e6, 12e6, 24e6, 48e6))]
    times: dict[int, list[float]] = {1: [], 2: []}
    clusters = {n: LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                dashboard_address=None) for n in (1, 2)}
    try:
        for run in range(runs):
            for n, cluster in clusters.items():
                with tempfile.TemporaryDirectory() as tmp:
                    started = time.perf_counter()
                    SweepRunner(tmp, cluster=cluster.scheduler_address)(points)
                    times[n].append(time.perf_counter() - started)
                print(f"sweep run {run + 1}: {n} worker(s) {times[n][-1]:.2f} s", flush=True)
    finally:
        for cluster in clusters.values():
            cluster.close()
    one, two = statistics.median(times[1]), statistics.median(times[2])
    print(f"\nsweep, 8 points (200 devices, shared, 20 gathers, both modes) on a local Dask "
          f"cluster: 1 worker {one:.2f} s, 2 workers {two:.2f} s, speed-up {one / two:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, default=[])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sweep-scaling", action="store_true")
    parser.add_argument("--events", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.events:
        print(events_per_frame(args.events))
        return
    if args.sweep_scaling:
        sweep_scaling(args.runs)
        return
    trees = [t.resolve() for t in args.tree] or [REPO]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        topologies = {}
        for kind in ("dedicated", "shared"):
            topologies[kind] = tmp / f"{kind}-1000.yaml"
            topologies[kind].write_text(yaml.safe_dump(scaled(kind)))
        cases: dict[str, list[str] | None] = {"click --help (baseline)": ["-c", BARE_CLICK]}
        for t in trees:
            cases[f"epic --help {t}"] = ["-c", RUN_CLI, "--help"]
        cases["bare SimPy 102k events (baseline)"] = ["-c", BARE_SIMPY]
        for kind, path in topologies.items():
            for t in trees:
                cases[f"simulate {kind} {t}"] = ["-c", RUN_CLI, "simulate", "--topology",
                                                 str(path), "--mode", "epic", "--shots",
                                                 "100", "--json", str(tmp / "out.json")]
        samples: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
        for run in range(args.runs):
            for name, argv in cases.items():
                tree = next((t for t in trees if name.endswith(str(t))), trees[0])
                samples[name].append(timed(argv, tree))
            print(f"run {run + 1}/{args.runs} done", flush=True)
        epf = {(kind, t): float(subprocess.run(
            [sys.executable, str(HERE), "--events", str(path)], cwd=t, check=True,
            capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(t))).stdout)
            for kind, path in topologies.items() for t in trees}
    med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
           for k, v in samples.items()}
    base_help = med["click --help (baseline)"][0]
    print(f"\nmedians of {args.runs} (wall s, CPU s)")
    for name, (wall, cpu) in med.items():
        line = f"  {name:60s} {wall:7.3f} s wall {cpu:7.3f} s CPU"
        if "--help" in name:
            line += f"  {wall / base_help:5.2f}x the click baseline"
        elif name.startswith("bare"):
            line += f"  {BARE_SIMPY_EVENTS / wall:9,.0f} events/s wall " \
                    f"{BARE_SIMPY_EVENTS / cpu:9,.0f} events/s CPU"
        else:
            kind = name.split()[1]
            tree = next(t for t in trees if name.endswith(str(t)))
            line += (f"  {100_000 / wall:9,.0f} frames/s wall {100_000 / cpu:9,.0f} frames/s "
                     f"CPU  {epf[(kind, tree)]:.2f} SimPy events/frame")
        print(line)
    print(json.dumps({k: list(v) for k, v in med.items()}))


if __name__ == "__main__":
    main()
