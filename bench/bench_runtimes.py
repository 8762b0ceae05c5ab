"""The container testbed against the process testbed: the same gathers, the same topology.

For each runtime (processes, then containers through the Docker SDK), brings a testbed of
``--topology`` up, replays ``--shots`` gathers in ``--mode`` at ``--rate``, and records the
per-device latencies of central's records (capture -> decoded, and the stages: encode, link
and broker, assembly, decode); then takes it down. Prints each runtime's p50/p95 and the
ratios containers / processes, and writes them to ``--json``.

    .venv/bin/python bench/bench_runtimes.py --shots 6 --json runs/bench/runtimes.json

Needs a Docker engine and the images' bases (``make docker-base``). Writes under a temporary
directory outside the repository.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulation.replay import replay  # noqa: E402
from emulation.runtime import DockerRuntime, ProcessRuntime  # noqa: E402


def one(kind: str, work: Path, topology: Path, data: Path, shots: int, mode: str,
        rate: str) -> dict:
    rundir = work / kind
    runtime = (ProcessRuntime(rundir) if kind == "process"
               else DockerRuntime(rundir, build=True, publish_broker=False))
    try:
        runtime.up(topology, truth=data, timeout_s=300)
        result = replay(rundir, data, shots, mode, rate, timeout_s=300)
    finally:
        runtime.down(timeout_s=10)
    summary = result["modes"][mode]
    return {"capture_to_decode_s": summary["capture_to_decode_s"],
            "stages_s": summary["stages_s"], "gathers": summary["gathers"],
            "partial": summary["partial"], "fidelity": summary["fidelity"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topology", type=Path, default=REPO / "topology.yaml")
    p.add_argument("--data", type=Path, default=None,
                   help="OpenFWI-layout gathers (default: synthesise --shots FlatVel-A ones)")
    p.add_argument("--shots", type=int, default=6)
    p.add_argument("--mode", choices=("epic", "raw"), default="epic")
    p.add_argument("--rate", choices=("realtime", "max"), default="realtime")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="epic-runtimes-"))
    data = args.data
    if data is None:
        from epic.data.synth import synthesize

        data = work / "flatvel-a"
        synthesize("flatvel-a", args.shots, seed=0, out_dir=data, threads=2)
    runs = {kind: one(kind, work, args.topology, data, args.shots, args.mode, args.rate)
            for kind in ("process", "docker")}
    ratios = {}
    for key in ("p50", "p95"):
        ratios[f"capture_to_decode_{key}"] = (runs["docker"]["capture_to_decode_s"][key]
                                              / runs["process"]["capture_to_decode_s"][key])
        for stage in runs["process"]["stages_s"]:
            base = runs["process"]["stages_s"][stage][key]
            ratios[f"{stage}_{key}"] = (runs["docker"]["stages_s"][stage][key] / base
                                        if base else None)
    result = {"topology": str(args.topology), "shots": args.shots, "mode": args.mode,
              "rate": args.rate, "runs": runs, "docker_over_process": ratios}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    for kind, run in runs.items():
        lat, stages = run["capture_to_decode_s"], run["stages_s"]
        print(f"{kind:8s} capture->decoded p50 {lat['p50'] * 1e3:7.1f} ms  p95 "
              f"{lat['p95'] * 1e3:7.1f} ms  "
              + "  ".join(f"{s} {v['p50'] * 1e3:.1f}" for s, v in stages.items()))
    print(f"docker / process: p50 {ratios['capture_to_decode_p50']:.2f}x, "
          f"p95 {ratios['capture_to_decode_p95']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
