"""End-to-end delivery across broker restarts: the fault table of docs/benchmarks.md.

Each run brings up a fresh process testbed of ``--topology`` (default: the 5-device, 20 Mbit/s
shared Wi-Fi testbed), replays ``--shots`` gathers in ``--mode`` at ``--rate``, restarts the
broker (SIGKILL or SIGTERM) ``--at-s`` seconds after the replay started, waits for the replay,
and counts, from central's own records: gathers decoded partially, gathers dropped, frames
rejected ``late`` and ``duplicate``, and the frames the agents sent again after reconnecting.

    .venv/bin/python bench/bench_delivery.py --runs 3 --json runs/bench/delivery.json

Writes under ``--work`` (default: a temporary directory outside the repository).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulation.replay import replay  # noqa: E402
from emulation.runtime import ProcessRuntime  # noqa: E402
from epic.rundir import (  # noqa: E402
    AgentSummary,
    CentralStatus,
    DroppedGather,
    Result,
    RunDir,
    read_record,
    read_records,
)


def _central_status_after(rundir: Path, unix_s: float, timeout_s: float = 15.0) -> CentralStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = read_record(RunDir(rundir).central_status, CentralStatus)
        if status.updated_ns / 1e9 > unix_s or time.monotonic() > deadline:
            return status
        time.sleep(0.1)


def one_run(work: Path, topology: Path, data: Path, shots: int, mode: str, rate: str,
            signal_name: str, at_s: float, timeout_s: float) -> dict:
    """One testbed, one replay, one broker restart; central's counts."""
    rundir = work / f"run-{signal_name}-{time.time_ns()}"
    ProcessRuntime(rundir).up(topology, timeout_s=90)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = replay(rundir, data, shots, mode, rate, timeout_s=timeout_s)
        except Exception as exc:  # reported in the row
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    try:
        started = time.time()
        worker = threading.Thread(target=run)
        worker.start()
        time.sleep(max(started + at_s - time.time(), 0))
        ProcessRuntime(rundir).restart_broker(hard=signal_name == "SIGKILL")
        worker.join(timeout_s + 60)
        ended = time.time()
        central_mode = "latent" if mode == "epic" else "raw"
        files = RunDir(rundir)
        records = [r for r in read_records(files.results, Result) if r.mode == central_mode]
        dropped = [r for r in read_records(files.dropped, DroppedGather)
                   if r.mode == central_mode]
        frames = _central_status_after(rundir, ended + 1.0).frames
        agents = [read_record(p, AgentSummary) for p in sorted(rundir.glob(files.AGENT_GLOB))]
        return {
            "signal": signal_name, "gathers": shots,
            "decoded": len(records),
            "partial": sum(r.missing_any for r in records),
            "dropped": len(dropped) + max(shots - len(records) - len(dropped), 0),
            "late": frames.rejected.get("late", 0),
            "duplicates": frames.rejected.get("duplicate", 0),
            "resent": sum(a.resent for a in agents),
            "error": outcome.get("error"),
        }
    finally:
        ProcessRuntime(rundir).down(timeout_s=10)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3, help="runs per signal")
    p.add_argument("--signals", default="SIGKILL,SIGTERM")
    p.add_argument("--shots", type=int, default=8)
    p.add_argument("--mode", choices=("epic", "raw"), default="raw")
    p.add_argument("--rate", choices=("realtime", "max"), default="max")
    p.add_argument("--at-s", type=float, default=6.0,
                   help="restart the broker this long after the replay started (s)")
    p.add_argument("--topology", type=Path, default=REPO / "topology.yaml")
    p.add_argument("--data", type=Path, default=None,
                   help="OpenFWI-layout gathers (default: synthesise --shots FlatVel-A ones)")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="epic-delivery-"))
    data = args.data
    if data is None:
        from epic.data.synth import synthesize

        data = work / "flatvel-a"
        if not (data / "card.json").is_file():
            synthesize("flatvel-a", args.shots, seed=0, out_dir=data, threads=2)
    rows = []
    for signal_name in args.signals.split(","):
        for _ in range(args.runs):
            row = one_run(work, args.topology, data, args.shots, args.mode, args.rate,
                          signal_name, args.at_s, args.timeout_s)
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = json.dumps({"mode": args.mode, "rate": args.rate, "shots": args.shots,
                       "at_s": args.at_s, "rows": rows}, indent=2) + "\n"
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print("| run | gathers partial | gathers dropped | frames rejected `late` | duplicates "
          "| frames resent |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['signal']} | {row['partial']} | {row['dropped']} | {row['late']} | "
              f"{row['duplicates']} | {row['resent']} |" + (f" {row['error']}" if row["error"]
                                                           else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
