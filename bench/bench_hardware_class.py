"""Encode time in the device container at several CPU shares, beside the model's prediction.

    .venv/bin/python bench/bench_hardware_class.py [--cpus 1.0 0.5] [--seconds 8] \
        [--repeats 3] [--hardware rpi4] [--image epic-device] [--json OUT]

For each share (and once without a quota, the host reference), ``docker run --cpus C
--memory M`` runs this file inside the device image (``--inner``): it loads device 1's int8
LiteRT encoder (one thread, as the agent) and encodes random gathers back to back for
``--seconds``. It reports, in milliseconds:

* ``encode_p50_ms``: p50 of the single encodes. A CFS quota is a rate limit with a burst of
  ``cpus × 100 ms`` per 100 ms period: a sub-millisecond encode either runs at full speed or
  waits out the rest of the period, so this p50 barely moves with the share;
* ``sustained_p50_ms``: p50 over 0.5 s windows of (window length / encodes in it), the encode
  time when encoding continuously (what the share sets); the ratio check uses it;
* ``mean_ms``: all the time over all the encodes.

The runs are interleaved (share A, share B, ..., again ``--repeats`` times) and the median of
the repeats is kept. The model's prediction is ``t_host × compute_scale`` of a class with that
share (`epic.hardware.HardwareClass.encode_time_s`), ``t_host`` the run without a quota. The
ratio of the first two shares must follow the model's within 20 %. Needs a Docker engine and
the epic-device image (``make docker-base`` then ``docker-compose build``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WINDOW_S = 0.5
TOLERANCE = 0.20


def inner(seconds: float, manifest: str) -> dict:
    """In the container: encode back to back for ``seconds``; times in milliseconds."""
    from devices.runtime import EncoderRuntime

    rt = EncoderRuntime.from_manifest(manifest, 1, num_threads=1)
    rng = np.random.default_rng(0)
    gathers = [(rng.standard_normal((5, 1000, 14)) * 2).astype(np.float32) for _ in range(16)]
    for i in range(50):  # warm-up
        rt.encode(gathers[i % 16])
    start = time.perf_counter()
    ends, took = [], []
    while (now := time.perf_counter()) - start < seconds:
        rt.encode(gathers[len(took) % 16])
        end = time.perf_counter()
        ends.append(end - start)
        took.append(end - now)
    ends_a, took_a = np.asarray(ends), np.asarray(took)
    counts = np.bincount((ends_a // WINDOW_S).astype(int))[:-1]  # full windows only
    counts = counts[counts > 0]
    return {"encodes": len(took), "encode_p50_ms": float(np.median(took_a) * 1e3),
            "encode_p99_ms": float(np.percentile(took_a, 99) * 1e3),
            "sustained_p50_ms": float(np.median(WINDOW_S / counts) * 1e3),
            "mean_ms": float(ends_a[-1] / len(took) * 1e3), "backend": rt.backend}


def run_share(image: str, cpus: float | None, mem_bytes: int, seconds: float) -> dict:
    """One container run at ``cpus`` (None: no quota); its `inner` result."""
    quota = [] if cpus is None else ["--cpus", f"{cpus:g}"]
    cmd = ["docker", "run", "--rm", *quota, "--memory", str(mem_bytes), "--network", "none",
           "-v", f"{REPO / 'bench'}:/bench:ro", "--entrypoint", "python", image,
           "/bench/bench_hardware_class.py", "--inner", "--seconds", str(seconds)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(image: str, shares: list[float], mem_bytes: int, seconds: float,
            repeats: int) -> dict:
    """Interleaved runs: the host reference and each share, ``repeats`` times; medians."""
    from epic.hardware import HardwareClass

    keys = [None, *shares]
    runs: dict[float | None, list[dict]] = {k: [] for k in keys}
    for _ in range(repeats):
        for k in keys:
            runs[k].append(run_share(image, k, mem_bytes, seconds))
    fields = ("encode_p50_ms", "encode_p99_ms", "sustained_p50_ms", "mean_ms")
    med = {k: {f: float(np.median([r[f] for r in v])) for f in fields} for k, v in runs.items()}
    host_ms = med[None]["sustained_p50_ms"]
    rows = []
    for c in shares:
        hw = HardwareClass(cpus=c, mem_limit_bytes=mem_bytes, active_w=0.0, idle_w=0.0)
        rows.append({"cpus": c, **med[c], "model_ms": hw.encode_time_s(host_ms / 1e3) * 1e3,
                     "compute_scale": hw.compute_scale,
                     "runs": [r["sustained_p50_ms"] for r in runs[c]]})
    a, b = rows[0], rows[1] if len(rows) > 1 else rows[0]
    ratio = b["sustained_p50_ms"] / a["sustained_p50_ms"]
    model_ratio = b["compute_scale"] / a["compute_scale"]
    return {"image": image, "seconds": seconds, "repeats": repeats, "mem_limit_bytes": mem_bytes,
            "host": {**med[None], "runs": [r["sustained_p50_ms"] for r in runs[None]]},
            "shares": rows, "ratio": {
                "cpus": [a["cpus"], b["cpus"]], "measured_sustained": ratio,
                "measured_single_encode_p50": b["encode_p50_ms"] / a["encode_p50_ms"],
                "measured_mean": b["mean_ms"] / a["mean_ms"], "model": model_ratio,
                "within_20_percent": abs(ratio / model_ratio - 1) <= TOLERANCE}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=float, nargs="+", default=[1.0, 0.5])
    ap.add_argument("--hardware", default="rpi4", help="preset whose memory limit to use")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--image", default="epic-device")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", default="/models/epic-flatvel-a/manifest.json",
                    help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        print(json.dumps(inner(args.seconds, args.manifest)))
        return 0
    sys.path.insert(0, str(REPO))
    from epic.hardware import PRESETS

    if args.hardware not in PRESETS:
        ap.error(f"--hardware must be one of {', '.join(PRESETS)}, got {args.hardware!r}")
    mem = PRESETS[args.hardware].hardware.mem_limit_bytes
    result = measure(args.image, args.cpus, mem, args.seconds, args.repeats)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0 if result["ratio"]["within_20_percent"] else 1


if __name__ == "__main__":
    sys.exit(main())
