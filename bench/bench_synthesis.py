"""Benchmark: synthesis throughput (shot-gathers per second) with 1 and 2 torch threads.

    .venv/bin/python bench/bench_synthesis.py --count 32 --json runs/bench/synthesis.json

Forward-models the same ``count`` FlatVel-A-like maps with each thread count and batch size,
after one warm-up batch, and reports gathers/s and the speed-up over 1 thread in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from epic.data.families import generate
from epic.data.forward import forward_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    maps = generate("flatvel-a", args.count, seed=0)
    forward_model(maps[:2], threads=1)  # warm-up: imports, allocator
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for threads in (1, 2):
            started = time.perf_counter()
            forward_model(maps, batch_size=batch, threads=threads)
            wall_s = time.perf_counter() - started
            rows.append({"threads": threads, "batch": batch, "count": args.count,
                         "wall_s": round(wall_s, 2),
                         "gathers_per_s": round(args.count / wall_s, 3)})
    base = {r["batch"]: r["gathers_per_s"] for r in rows if r["threads"] == 1}
    print("| threads | batch | gathers/s | s/gather | speed-up vs 1 thread |")
    print("|---|---|---|---|---|")
    for r in rows:
        r["speedup_vs_1_thread"] = round(r["gathers_per_s"] / base[r["batch"]], 2)
        print(f"| {r['threads']} | {r['batch']} | {r['gathers_per_s']:.2f} | "
              f"{1 / r['gathers_per_s']:.3f} | {r['speedup_vs_1_thread']:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
