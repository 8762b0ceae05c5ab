"""Benchmark: replay throughput, EPIC mode over unshaped links (issue: testbed).

    .venv/bin/python bench/bench_replay.py --count 80 --json /tmp/bench-replay.json

Brings up its own process-mode testbed (own Mosquitto, link proxies, central) on a copy of
``topology.yaml`` whose devices each get a dedicated, unshaped link (1 Tbit/s, no delay, no
jitter, no loss), replays ``--count`` gathers with ``epic replay --mode epic --rate max``
(:func:`emulation.replay.replay`), always brings the testbed down, and prints (and writes with
``--json``) one JSON object:

- ``gathers_per_s``: gathers over the mode's wall time, from calling ``replay`` (which
  launches the five agents within a few ms) to the end of central's last decode (agent
  start-up counted; taken from central's time stamps, so it means the same whatever
  ``replay`` does after the last decode);
  ``gathers_per_s_replay_wall``: over ``replay``'s own ``wall_s`` (the same plus its result
  polling; older versions of ``replay`` also counted up to 1 s of waiting for fresh proxy
  status files);
  ``gathers_per_s_steady``: between the first and the last decode (start-up not counted);
- ``phases_s``: agents' start-up (spawn -> first capture of the slowest agent), streaming
  (first capture -> last encode end), drain (last encode end -> last decode end), and the
  replay's own tail (last decode -> the end of ``replay``'s ``wall_s``: its polling);
- ``cpu_s``: CPU seconds (user + system) spent during the mode by the 5 agents together, by
  central, by the link proxies and by the broker, and per gather;
- ``agents``: encode time p50 per device (normalise + quantise + model, from the agents'
  stats files); ``central``: decode batches, their size and summed model time;
- the latency stages of :func:`emulation.replay.summarize_mode`.

Data: ``--data DIR`` if it holds ``--count`` gathers, else ``epic data synth --dataset
flatvel-a`` (generated maps, ``--seed``) into ``OUT/data`` (made once, then reused). Nothing is
written outside ``--out`` (default ``<tempdir>/epic-bench-replay``, outside the repository;
kept between runs so that the synthesised data is made once). The machine is rarely idle: compare
figures only with a baseline measured in the same session.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emulation.replay import replay  # noqa: E402
from emulation.runtime import ProcessRuntime  # noqa: E402
from emulation.runtime.process import load_info  # noqa: E402
from epic.data.openfwi import OpenFWIDataset  # noqa: E402
from epic.errors import InputError  # noqa: E402
from epic.rundir import AgentSummary, Result, RunDir, read_record, read_records  # noqa: E402

log = logging.getLogger("bench_replay")

UNSHAPED_LINK = {"kind": "dedicated", "bandwidth_bps": 1.0e12, "delay_s": 0.0, "jitter_s": 0.0,
                 "loss": 0.0, "mtu_bytes": 1536, "overhead_bytes": 76, "ack_payload_bytes": 4,
                 "rto_s": 0.2, "max_retries": 6}
"""Every device's link in the benchmark topology: a proxy that forwards at once."""


# Agents stream as soon as each is ready (no shared start lead), so their start-up is
# counted in the wall time as it was before replays had a shared start instant.
_NO_LEAD = {"lead_s": 0.0} if "lead_s" in inspect.signature(replay).parameters else {}


def unshaped_topology(source: Path, target: Path) -> Path:
    """Write ``source`` with every device on its own unshaped link (``UNSHAPED_LINK``)."""
    spec = yaml.safe_load(Path(source).read_text())
    spec["links"] = {"unshaped": dict(UNSHAPED_LINK)}
    for device in spec["devices"]:
        device["link"] = "unshaped"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("# bench/bench_replay.py: topology.yaml with unshaped links\n"
                      + yaml.safe_dump(spec, sort_keys=False))
    return target


def _gathers_in(data: Path) -> int:
    try:
        return len(OpenFWIDataset(data, require_models=False))
    except InputError:  # also DataError: no shards (yet)
        return 0


def ensure_data(data: Path | None, out: Path, count: int, seed: int) -> Path:
    """A directory with at least ``count`` gathers: ``data`` if it has them, else synthesised."""
    if data is not None:
        if _gathers_in(data) < count:
            raise InputError(f"{data} holds {_gathers_in(data)} gathers, --count is {count}")
        return data
    target = out / "data"
    if _gathers_in(target) >= count:
        return target
    log.info("synthesising %d flatvel-a gathers into %s", count, target)
    subprocess.run([sys.executable, "-m", "epic_cli", "data", "synth", "--dataset",
                    "flatvel-a", "--count", str(count), "--seed", str(seed), "--out",
                    str(target), "--overwrite", "--no-progress"], check=True, cwd=REPO)
    return target


def _cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process, None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _results(rundir: Path) -> list[Result]:
    return read_records(RunDir(rundir).results, Result)


def breakdown(records: list[Result], spawn_unix_s: float, wall_s: float) -> dict:
    """Where the mode's wall time went, from central's results.jsonl records (seconds)."""
    stamps = [s for r in records for s in r.devices.values()]
    first_capture = {}
    for rec in records:
        for device, s in rec.devices.items():
            first_capture[device] = min(first_capture.get(device, s.capture_ns), s.capture_ns)
    spawn_ns = spawn_unix_s * 1e9
    first_ns = min(s.capture_ns for s in stamps)
    encoded_ns = max(s.encode_end_ns for s in stamps)
    decode_end = sorted(r.decode_end_ns for r in records)
    batches = {(r.decode_start_ns, r.decode_end_ns): r.decode_batch for r in records}
    return {
        "phases_s": {
            "agent_startup_first": (first_ns - spawn_ns) / 1e9,
            "agent_startup_last": (max(first_capture.values()) - spawn_ns) / 1e9,
            "streaming": (encoded_ns - first_ns) / 1e9,
            "drain": (decode_end[-1] - encoded_ns) / 1e9,
            "replay_tail": wall_s - (decode_end[-1] - spawn_ns) / 1e9,
        },
        "agent_startup_s": {d: (t - spawn_ns) / 1e9 for d, t in sorted(first_capture.items())},
        "gathers_per_s_steady": ((len(decode_end) - 1) / ((decode_end[-1] - decode_end[0]) / 1e9)
                                 if len(decode_end) > 1 and decode_end[-1] > decode_end[0]
                                 else None),
        "gathers_per_s": len(records) / ((decode_end[-1] - spawn_ns) / 1e9),
        "central": {"batches": len(batches),
                    "mean_batch": float(np.mean(list(batches.values()))),
                    "model_s": sum(end - start for start, end in batches) / 1e9},
    }


def run(topology: Path, data: Path, count: int, out: Path, timeout_s: float) -> dict:
    """Testbed up, one EPIC replay at max rate, testbed down (always); the measurements."""
    rundir = out / "testbed"
    ProcessRuntime(rundir).down()  # a testbed left by an interrupted run
    ProcessRuntime(rundir).up(topology)
    info = load_info(rundir)
    try:
        pids = {p.role: p.pid for p in info.processes}
        before = {role: _cpu_s(pid) for role, pid in pids.items()}
        children_before = _children_cpu_s()
        spawn_unix_s = time.time()
        result = replay(rundir, data, count, mode="epic", rate="max", timeout_s=timeout_s,
                        **_NO_LEAD)
        agents_cpu_s = _children_cpu_s() - children_before
        after = {role: _cpu_s(pid) for role, pid in pids.items()}
        records = [r for r in _results(rundir) if r.mode == "latent"]
        agent_stats = {d: read_record(RunDir(rundir).agent_stats(d), AgentSummary)
                       for d in info.devices}
    finally:
        ProcessRuntime(rundir).down()
    mode = result["modes"]["epic"]
    cpu = {"agents": agents_cpu_s, **{role: (after[role] - before[role])
                                      if None not in (after[role], before[role]) else None
                                      for role in pids}}
    return {
        "count": count, "data": str(data), "topology": str(topology),
        "gathers": mode["gathers"], "partial": mode["partial"], "wall_s": mode["wall_s"],
        "gathers_per_s_replay_wall": mode["gathers"] / mode["wall_s"],
        **breakdown(records, spawn_unix_s, mode["wall_s"]),
        "cpu_s": cpu,
        "cpu_ms_per_gather": {k: (v * 1e3 / count if v is not None else None)
                              for k, v in cpu.items()},
        "agents": {d: {"encode_ms_p50": (s.encode_s.p50 or 0) * 1e3,
                       "backend": s.backend, "frames": s.frames_published}
                   for d, s in agent_stats.items()},
        "stages_ms_p50": {k: v["p50"] * 1e3 for k, v in mode["stages_s"].items()},
        "capture_to_decode_ms": {k: v * 1e3 for k, v in mode["capture_to_decode_s"].items()
                                 if v is not None},
        "load_avg_1min": os.getloadavg()[0], "cpus": os.cpu_count(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=80, help="gathers to replay")
    parser.add_argument("--data", type=Path, default=None,
                        help="OpenFWI-layout dir to reuse (default: synthesise into OUT/data)")
    parser.add_argument("--seed", type=int, default=7, help="synthesis seed")
    parser.add_argument("--topology", type=Path, default=REPO / "topology.yaml",
                        help="topology whose devices are kept (links are replaced)")
    parser.add_argument("--out", type=Path,
                        default=Path(tempfile.gettempdir()) / "epic-bench-replay",
                        help="work directory, outside the repository by default")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument("--timeout-s", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.count < 1:
        parser.error(f"--count must be >= 1, got {args.count}")
    out = args.out.resolve()
    data = ensure_data(args.data, out, args.count, args.seed)
    topology = unshaped_topology(args.topology, out / "topology-unshaped.yaml")
    result = run(topology, data.resolve(), args.count, out, args.timeout_s)
    text = json.dumps(result, indent=2) + "\n"
    print(text, end="")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
