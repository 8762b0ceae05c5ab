"""Benchmark: device agent launch to ready, against a bare numpy + LiteRT + paho process.

    .venv/bin/python bench/bench_agent_start.py --runs 7 [--before DIR] [--json OUT]

Starts its own Mosquitto (the testbed's config, in a run directory under ``--out``, default a
fresh temporary directory), then, interleaved ``--runs`` times:

- ``agent``: ``python -m devices.agent --device-id 1 --mode epic --gathers 1`` straight to the
  broker; ready is the instant it starts streaming (``start_at_unix_s`` in its stats file:
  topology read, dataset opened, encoder loaded, MQTT session connected);
- ``bare``: a process that imports numpy, LiteRT and paho, loads device 1's ``.tflite`` and
  allocates its tensors, and connects to the same broker with the same credentials; ready is
  its CONNACK;
- ``before`` (with ``--before DIR``, a tree of an earlier commit, e.g. from ``git archive``):
  the same agent command run from that tree.

Each time is from just before ``Popen`` to ready (wall clock), so the interpreter's start-up
and every import count. Prints medians, the ratio agent / bare, and the load average.
``PYTHONDONTWRITEBYTECODE`` is passed on as set: a tree without ``__pycache__`` compiles its
modules at each launch.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emulation.testbed import prepare_rundir  # noqa: E402
from epic.broker import BrokerProcess  # noqa: E402
from epic.topology import load_topology  # noqa: E402

BARE = r"""
import sys, threading, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
import paho.mqtt.client as mqtt
model, host, port, user, password = sys.argv[1:6]
interp = Interpreter(model_path=model, num_threads=1)
interp.allocate_tensors()
connected = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-" + user)
c.username_pw_set(user, password)
c.on_connect = lambda *a: connected.set()
c.connect(host, int(port))
c.loop_start()
connected.wait(10)
print(time.time())
c.disconnect()
c.loop_stop()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def agent_ready_s(tree: Path, rundir: Path, data: Path, manifest: Path, port: int) -> float:
    """Launch one agent from ``tree``; seconds from launch to its start of streaming."""
    stats = rundir / "agent-device-1.json"
    stats.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "devices.agent", "--device-id", "1",
           "--topology", str(rundir / "topology.yaml"), "--rundir", str(rundir),
           "--encoders", str(manifest), "--data", str(data), "--mode", "epic",
           "--gathers", "1", "--confirm-timeout-s", "0", "--broker-host", "127.0.0.1",
           "--broker-port", str(port), "--log-level", "WARNING"]
    env = dict(os.environ, PYTHONPATH=str(tree))
    t0 = time.time()
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(stats.read_text())["start_at_unix_s"] - t0


def bare_ready_s(model: Path, port: int, password: str) -> float:
    t0 = time.time()
    out = subprocess.run([sys.executable, "-c", BARE, str(model), "127.0.0.1", str(port),
                          "device-1", password], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1]) - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--topology", type=Path, default=REPO / "topology.yaml")
    ap.add_argument("--data", type=Path, default=REPO / "data/flatvel-a/test")
    ap.add_argument("--manifest", type=Path,
                    default=REPO / "artifacts/encoders/epic-flatvel-a/manifest.json")
    ap.add_argument("--before", type=Path, default=None,
                    help="a tree of an earlier version, run the same way (e.g. git archive)")
    ap.add_argument("--out", type=Path, default=None,
                    help="run directory (default: a fresh temporary directory)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error(f"--runs must be >= 1, got {args.runs}")
    out = args.out or Path(tempfile.mkdtemp(prefix="bench-agent-start-"))
    rundir = (out / "testbed").resolve()
    rundir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    topology = load_topology(args.topology)
    runtime = prepare_rundir(args.topology.resolve(), topology, rundir, host="127.0.0.1",
                             port=port)
    model = args.manifest.parent / next(
        e["file"] for e in json.loads(args.manifest.read_text())["devices"]
        if e["device_id"] == 1)
    broker = BrokerProcess(runtime).start()
    times: dict[str, list[float]] = {"agent": [], "bare": []}
    if args.before:
        times["before"] = []
    load = [os.getloadavg()[0]]
    try:
        for _ in range(args.runs):
            times["bare"].append(bare_ready_s(model, port, runtime.password("device-1")))
            times["agent"].append(agent_ready_s(REPO, rundir, args.data.resolve(),
                                                args.manifest.resolve(), port))
            if args.before:
                times["before"].append(agent_ready_s(args.before.resolve(), rundir,
                                                     args.data.resolve(),
                                                     args.manifest.resolve(), port))
            load.append(os.getloadavg()[0])
    finally:
        broker.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"runs": args.runs, "median_s": med,
              "ratio_agent_to_bare": med["agent"] / med["bare"],
              **({"ratio_before_to_bare": med["before"] / med["bare"]} if args.before else {}),
              "samples_s": times, "load_avg_1min": {"min": min(load), "max": max(load)},
              "cpus": os.cpu_count(),
              "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE", "")}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
