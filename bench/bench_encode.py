"""Benchmark the device encoder runtime: latency per shot-gather, peak RSS, model sizes.

    .venv/bin/python bench/bench_encode.py [--manifest M] [--data DIR] [--json OUT]

* latency: ``EncoderRuntime.encode`` (validate, normalise, quantise, invoke, copy the int8
  latent) per device on one thread, p50/p99 over ``--gathers`` real gathers after a warm-up;
  ``invoke`` alone is timed too;
* peak RSS: a fresh process imports the runtime, loads one encoder and encodes
  ``--rss-gathers`` gathers read one at a time from the shard (plain reads, no memory map,
  so the file cache is not counted); ``resource.getrusage`` gives the peak;
* ``--python PY``: run the same measurements under another interpreter, e.g. a venv with
  tflite-runtime and numpy<2 but no ai-edge-litert (the runtime falls back to it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from devices.runtime import EncoderRuntime  # noqa: E402


def read_gather(shard: Path, index: int, receivers: tuple[int, int]) -> np.ndarray:
    """Gather ``index`` of an OpenFWI ``data*.npy`` shard, ``(5, 1000, n_rx)`` float32, read
    with a plain file read (no memory map)."""
    with open(shard, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if major == 1
                                 else np.lib.format.read_array_header_2_0(f))
        if fortran or len(shape) != 4:
            raise ValueError(f"{shard}: expected a C-order (N, 5, 1000, 70) array, got {shape}")
        per = int(np.prod(shape[1:])) * dtype.itemsize
        f.seek(index * per, os.SEEK_CUR)
        gather = np.frombuffer(f.read(per), dtype=dtype).reshape(shape[1:])
    return np.ascontiguousarray(gather[..., receivers[0]:receivers[1]], dtype=np.float32)


def gathers_for(data: Path | None, n: int, receivers: tuple[int, int]) -> list[np.ndarray]:
    """``n`` raw gathers of the device's receivers, real if ``data`` has a shard."""
    shards = sorted(data.glob("data*.npy")) if data else []
    if not shards:
        rng = np.random.default_rng(0)  # synthetic: the encoder's cost does not depend on it
        return [(rng.standard_normal((5, 1000, receivers[1] - receivers[0])) * 2)
                .astype(np.float32) for _ in range(n)]
    count = np.load(shards[0], mmap_mode="r").shape[0]
    return [read_gather(shards[0], i % count, receivers) for i in range(n)]


def latency(manifest: Path, data: Path | None, n: int, warmup: int, threads: int) -> dict:
    """p50/p99 of encode and invoke per device, milliseconds."""
    spec = json.loads(manifest.read_text())
    result = {}
    for entry in spec["devices"]:
        rt = EncoderRuntime.from_manifest(manifest, entry["device_id"], num_threads=threads)
        gathers = gathers_for(data, n, tuple(entry["receivers"]))
        for g in gathers[:warmup]:
            rt.encode(g)
        encode_s, invoke_s = [], []
        for g in gathers:
            t0 = time.perf_counter()
            rt.encode(g)
            encode_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            rt._interpreter.invoke()
            invoke_s.append(time.perf_counter() - t0)
        ms = {k: np.asarray(v) * 1e3 for k, v in (("encode", encode_s), ("invoke", invoke_s))}
        result[f"device-{entry['device_id']}"] = {
            f"{k}_{p}_ms": float(np.percentile(v, q)) for k, v in ms.items()
            for p, q in (("p50", 50), ("p99", 99))} | {"backend": rt.backend, "gathers": n}
    return result


def rss_child(manifest: Path, data: Path | None, n: int, threads: int) -> dict:
    """In this process: load device 1's encoder, encode ``n`` gathers; peak RSS in MiB."""
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    spec = json.loads(manifest.read_text())
    entry = spec["devices"][0]
    rt = EncoderRuntime.from_manifest(manifest, entry["device_id"], num_threads=threads)
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    shards = sorted(data.glob("data*.npy")) if data else []
    rng = np.random.default_rng(0)
    for i in range(n):
        if shards:
            g = read_gather(shards[0], i, tuple(entry["receivers"]))
        else:
            g = (rng.standard_normal((5, 1000, 14)) * 2).astype(np.float32)
        rt.encode(g)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"after_imports_mib": base_kib / 1024, "after_load_mib": loaded_kib / 1024,
            "peak_mib": peak_kib / 1024, "gathers": n, "backend": rt.backend,
            "torch_imported": "torch" in sys.modules}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path,
                    default=REPO / "artifacts/encoders/epic-flatvel-a/manifest.json")
    ap.add_argument("--data", type=Path, default=REPO / "data/flatvel-a/test",
                    help="OpenFWI shard directory (random gathers where absent)")
    ap.add_argument("--gathers", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--rss-gathers", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--python", default=sys.executable, help="interpreter for the run")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument("--child", choices=["latency", "rss"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    data = args.data if args.data.is_dir() else None
    if args.child == "latency":
        print(json.dumps(latency(args.manifest, data, args.gathers, args.warmup, args.threads)))
        return 0
    if args.child == "rss":
        print(json.dumps(rss_child(args.manifest, data, args.rss_gathers, args.threads)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    common = [args.python, __file__, "--manifest", str(args.manifest), "--data", str(args.data),
              "--threads", str(args.threads)]
    runs = {}
    for child, extra in (("latency", ["--gathers", str(args.gathers), "--warmup",
                                      str(args.warmup)]),
                         ("rss", ["--rss-gathers", str(args.rss_gathers)])):
        out = subprocess.run([*common, "--child", child, *extra], env=env, check=True,
                             capture_output=True, text=True).stdout
        runs[child] = json.loads(out.strip().splitlines()[-1])
    spec = json.loads(args.manifest.read_text())
    result = {"manifest": str(args.manifest), "python": args.python,
              "data": str(data) if data else "random", "threads": args.threads,
              "latency": runs["latency"], "rss": runs["rss"],
              "sizes_bytes": {e["file"]: (args.manifest.parent / e["file"]).stat().st_size
                              for e in spec["devices"]}}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
