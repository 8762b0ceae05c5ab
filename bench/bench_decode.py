"""Benchmark central's decoders: ONNX Runtime (torch-free) against torch, same process.

    .venv/bin/python bench/bench_decode.py [--manifest M] [--data DIR] [--json OUT]

For the EPIC decoder (tokens + presence -> map) and InversionNet (normalised gather -> map):
time per gather at batch 1 and at central's default batch 16, p50 and p90 over ``--repeats``
calls after a warm-up, one thread each (``torch.set_num_threads(1)``, ONNX Runtime
``intra_op_num_threads=1``), interleaved call by call so that both see the same machine
load. Also the time to load each model. Inputs: ``--data`` gathers (OpenFWI layout) if
given, else seeded noise (the cost does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from epic.data.openfwi import OpenFWIDataset, get_dataset  # noqa: E402
from epic.data.transforms import normalize_data  # noqa: E402
from epic.inference import LatentDecoderRuntime, RawDecoderRuntime  # noqa: E402
from epic.models.checkpoint import load_checkpoint  # noqa: E402

DEFAULT_MANIFEST = REPO / "artifacts" / "decoders" / "flatvel-a" / "manifest.json"


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _race(fns: dict, repeats: int, per: int) -> dict:
    """Interleaved calls; ms per gather (call time / ``per``), p50 and p90."""
    for fn in fns.values():
        fn()  # warm-up
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn) * 1e3 / per)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"p50_ms": round(statistics.median(ts), 3),
                     "p90_ms": round(ts[int(0.9 * (len(ts) - 1))], 3)}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=DEFAULT_MANIFEST)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    manifest = json.loads(args.manifest.read_text())
    spec = get_dataset(manifest["dataset"])
    if args.data is not None:
        ds = OpenFWIDataset(args.data)
        raw = np.stack([ds[i % len(ds)][0] for i in range(16)])
    else:
        raw = (np.random.default_rng(0).standard_normal((16, 5, 1000, 70)) * 2).astype(
            np.float32)
    x = normalize_data(raw, spec.data_min, spec.data_max)
    result: dict = {"manifest": str(args.manifest), "data": str(args.data), "threads": 1,
                    "repeats": args.repeats, "versions": {"torch": torch.__version__}}
    import onnxruntime

    result["versions"]["onnxruntime"] = onnxruntime.__version__
    ckpt = {k: args.manifest.parent / v["weights"]["file"] for k, v in
            manifest["models"].items()}
    with torch.inference_mode():
        if "epic" in ckpt:
            t0 = time.perf_counter()
            rt = LatentDecoderRuntime(args.manifest)
            t_rt = time.perf_counter() - t0
            t0 = time.perf_counter()
            model, _ = load_checkpoint(ckpt["epic"])
            t_pt = time.perf_counter() - t0
            tokens = model.encode(torch.from_numpy(x))
            present = torch.ones(16, model.n_devices, dtype=torch.bool)
            tok_np, pres_np = tokens.numpy(), present.numpy()
            row = {"load_s": {"runtime": round(t_rt, 3), "torch": round(t_pt, 3)}}
            for b in (1, 16):
                row[f"batch{b}"] = _race({
                    "runtime": lambda b=b: rt.decode_normalised(tok_np[:b], pres_np[:b]),
                    "torch": lambda b=b: model.decode(tokens[:b], present[:b])},
                    args.repeats, b)
            result["epic"] = row
        if "inversionnet" in ckpt:
            t0 = time.perf_counter()
            rt = RawDecoderRuntime(args.manifest)
            t_rt = time.perf_counter() - t0
            t0 = time.perf_counter()
            model, _ = load_checkpoint(ckpt["inversionnet"], expected_model="inversionnet")
            t_pt = time.perf_counter() - t0
            xt = torch.from_numpy(x)
            row = {"load_s": {"runtime": round(t_rt, 3), "torch": round(t_pt, 3)}}
            for b in (1, 16):
                row[f"batch{b}"] = _race({
                    "runtime": lambda b=b: rt.decode_normalised(x[:b]),
                    "torch": lambda b=b: model(xt[:b])}, max(3, args.repeats // (b // 4 + 1)),
                    b)
            result["inversionnet"] = row
    text = json.dumps(result, indent=1)
    print(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
