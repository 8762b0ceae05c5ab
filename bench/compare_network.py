"""Bit-identity of the network model between two checkouts: same seed, same results.

    .venv/bin/python bench/compare_network.py --before /tmp/net-before --after .

For each checkout (``PYTHONPATH=<tree>``, a fresh process each) it runs:

- ``epic simulate --json`` on the default topology (200 shots) and on 1,000-device versions of
  it (shared and dedicated links, 0.1 % loss, 5 shots), and compares the JSON texts, ``wall_s``
  left out (the only field that is not a model output);
- `NetworkModel` on 1,000-device, 10 %-loss and LoRa topologies, closed form and event by
  event, and compares a SHA-256 of every array of `FrameRecords` and of the energy books.

Exits 1 if anything differs. Writes its topologies to a temporary folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
MODELS = (  # (name, link changes, energy, devices, closed_form)
    ("shared-1000-loss", {"kind": "shared", "loss": 0.001}, None, 1000, True),
    ("dedicated-1000-loss", {"kind": "dedicated", "loss": 0.001}, None, 1000, True),
    ("dedicated-100-loss10", {"kind": "dedicated", "loss": 0.1, "max_retries": 2}, None, 100,
     True),
    ("shared-50-loss10-events", {"kind": "shared", "loss": 0.1}, None, 50, False),
    ("lora-shared-20", {"kind": "shared", "loss": 0.05, "mtu_bytes": 255,
                        "overhead_bytes": 13}, "lora-sf8", 20, True),
    ("lora-dedicated-20-events", {"kind": "dedicated", "loss": 0.05, "mtu_bytes": 255,
                                  "overhead_bytes": 13}, "lora-sf9", 20, False),
)


def scaled(n_devices: int, link: dict, energy: str | None) -> dict:
    """The default topology with ``n_devices`` devices and ``link`` changes, as a dict."""
    base = yaml.safe_load((REPO / "topology.yaml").read_text())
    base["links"]["wifi"].update(link)
    template = dict(base["devices"][0], **({"energy": energy} if energy else {}))
    base["devices"] = [dict(template, id=f"device-{i + 1}", receivers=[14 * i, 14 * i + 14])
                       for i in range(n_devices)]
    return base


def model_digest(path: Path, closed_form: bool) -> str:
    """SHA-256 of every output of one `NetworkModel` run (run in the checkout under test)."""
    from emulation.network import Message, NetworkModel, Workload
    from epic.topology import load_topology

    work = Workload((Message(1086, 0.005), Message(56_076), Message(300)), gathers=20,
                    interval_s=0.5)
    result = NetworkModel(load_topology(path), seed=3, closed_form=closed_form).run(work)
    h = hashlib.sha256()
    f = result.frames
    for array in (f.device, f.gather, f.message, f.start_s, f.end_s, f.stages_s, f.lost,
                  f.wire_bytes):
        h.update(array.dtype.str.encode() + repr(array.shape).encode())
        h.update(array.tobytes())
    h.update(repr((result.energy, result.uplink_bytes, result.downlink_bytes,
                   result.horizon_s)).encode())
    return h.hexdigest()


def in_tree(tree: Path, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, *args], env=env, cwd=tree, check=True,
                          capture_output=True, text=True).stdout


def simulate_json(tree: Path, topology: Path, shots: int, out: Path) -> str:
    run_cli = ("try:\n from epic_cli import cli\n"  # epic.cli before the CLI moved
               "except ImportError:\n from epic.cli import cli\ncli()")
    in_tree(tree, "-c", run_cli, "simulate", "--topology",
            str(topology), "--shots", str(shots), "--seed", "0", "--json", str(out))
    data = json.loads(out.read_text())

    def strip(node):
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "wall_s"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return json.dumps(strip(data), sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--after", type=Path, default=REPO)
    parser.add_argument("--digest", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.digest:
        print(model_digest(Path(args.digest[0]), args.digest[1] == "1"))
        return 0
    trees = (args.before.resolve(), args.after.resolve())
    differ = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        runs = [("default topology, 200 shots", REPO / "topology.yaml", 200)]
        for name, link in (("shared", {"kind": "shared", "loss": 0.001}),
                           ("dedicated", {"kind": "dedicated", "loss": 0.001})):
            path = tmp / f"sim-{name}-1000.yaml"
            path.write_text(yaml.safe_dump(scaled(1000, link, None)))
            runs.append((f"1,000 devices, {name}, 0.1 % loss, 5 shots", path, 5))
        for label, path, shots in runs:
            texts = [simulate_json(t, path, shots, tmp / f"{i}.json")
                     for i, t in enumerate(trees)]
            same = texts[0] == texts[1]
            differ += not same
            print(f"epic simulate --json  {label:42s} {len(texts[0]):9,d} chars  "
                  f"{'identical' if same else 'DIFFERENT'}", flush=True)
        for name, link, energy, n, closed_form in MODELS:
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(scaled(n, link, energy)))
            digests = [in_tree(t, str(HERE), "--before", str(t), "--digest", str(path),
                               "1" if closed_form else "0").strip() for t in trees]
            same = digests[0] == digests[1]
            differ += not same
            print(f"NetworkModel sha256   {name:42s} {digests[0][:16]}  "
                  f"{'identical' if same else 'DIFFERENT ' + digests[1][:16]}", flush=True)
    print("all identical" if not differ else f"{differ} DIFFER")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
