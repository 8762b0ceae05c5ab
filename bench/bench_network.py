"""Network model speed, before against after: frames/s of 1,000 devices x 100 frames, interleaved.

    .venv/bin/python bench/bench_network.py --tree /tmp/net-before --tree . --runs 5

Each (run, tree, case) is a fresh process with ``PYTHONPATH=<tree>``, so two checkouts of the
code (e.g. ``git worktree add /tmp/net-before <commit>``) are timed alternately on the same
machine under the same load; the median per tree and case is printed, per wall-clock
second and per CPU second of the process (steadier on a shared machine). A case is the topology
of ``bench/test_bench_network.py``: the default topology's link and device, 1,000 devices,
a dedicated or shared link, with or without 0.1 % loss, one 1,086-byte message per gather.
Only ``NetworkModel.run`` is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CASES = (("dedicated", 0.0), ("dedicated", 0.001), ("shared", 0.0), ("shared", 0.001))
HERE = Path(__file__).resolve()


def one(kind: str, loss: float, repo: Path) -> tuple[float, float]:
    """Frames per wall-clock second and per CPU second of one run in this process."""
    from emulation.network import Message, NetworkModel, Workload
    from epic.topology import Topology, load_topology

    base = load_topology(repo / "topology.yaml").model_dump()
    base["links"]["wifi"].update(kind=kind, loss=loss)
    template = base["devices"][0]
    base["devices"] = [dict(template, id=f"device-{i + 1}", receivers=[14 * i, 14 * i + 14])
                       for i in range(1000)]
    topo = Topology.model_validate(base)
    work = Workload((Message(1086, 0.005),), gathers=100, interval_s=1.0)
    started, started_cpu = time.perf_counter(), time.process_time()
    result = NetworkModel(topo, seed=0).run(work)
    wall_s, cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    return result.frames.lost.size / wall_s, result.frames.lost.size / cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, required=False, default=[])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--one", nargs=2, metavar=("KIND", "LOSS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], float(args.one[1]), Path.cwd())))
        return
    trees = [t.resolve() for t in args.tree] or [HERE.parents[1]]
    samples: dict[tuple[str, str, float], list[tuple[float, float]]] = {}
    for run in range(args.runs):
        for kind, loss in CASES:
            for tree in trees:
                env = dict(os.environ, PYTHONPATH=str(tree))
                out = subprocess.run([sys.executable, str(HERE), "--one", kind, str(loss)],
                                     env=env, cwd=tree, check=True, capture_output=True,
                                     text=True).stdout
                fps, fps_cpu = json.loads(out.strip().splitlines()[-1])
                samples.setdefault((str(tree), kind, loss), []).append((fps, fps_cpu))
                print(f"run {run + 1}/{args.runs} {tree} {kind:9s} loss={loss:<6g} "
                      f"{fps:9,.0f} frames/s wall {fps_cpu:9,.0f} frames/s CPU", flush=True)
    for which, label in ((0, "wall-clock"), (1, "CPU")):
        print(f"\nmedian frames per {label} second (1,000 devices x 100 frames): "
              + "  ".join(str(t) for t in trees))
        for kind, loss in CASES:
            row = [statistics.median(x[which] for x in samples[(str(t), kind, loss)])
                   for t in trees]
            ratio = f"  last/first {row[-1] / row[0]:.3f}" if len(row) > 1 else ""
            print(f"  {kind:9s} loss={loss:<6g} " + "  ".join(f"{v:9,.0f}" for v in row)
                  + ratio)


if __name__ == "__main__":
    main()
