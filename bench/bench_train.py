"""Training throughput, before and after (issue 14, 1): samples per second of ``epic train``.

"Before" is the project at ``--before REV`` (default: the last commit before the training
work), run from a git worktree with this venv: float32 arrays loaded whole, the 1 ms encoder
and the 128/64/32 head, float32 or bf16 as given. "After" is this checkout: the float16
training cache, the decimating encoder, the 128/64/32 head, channels-last. Same data, batch,
seed and step count for both; each timing is the second epoch (the first pays for warm-up),
read from ``log.jsonl`` (``wall_s`` and ``samples_seen``).

    .venv/bin/python bench/bench_train.py --data data/full/flatvel-a/test --limit 160 \\
        --json runs/bench/train.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEFORE = "05eecb3"

RUNS = [  # (label, model, precision)
    ("EPIC, float32", "epic", "fp32"),
    ("EPIC, bf16", "epic", "bf16"),
    ("InversionNet, float32", "inversionnet", "fp32"),
    ("InversionNet, bf16", "inversionnet", "bf16"),
]


def _samples_per_s(log_path: Path) -> float:
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    a, b = records[-2], records[-1]
    return (b["samples_seen"]) / (b["wall_s"] - a["wall_s"])


def _train(checkout: Path, model: str, precision: str, data: str, limit: int, batch: int,
           threads: int | None, out: Path, env: dict) -> float:
    cmd = [sys.executable, "-m", "epic_cli", "train", "--model", model, "--data", data,
           "--out", str(out), "--epochs", "2", "--batch", str(batch), "--limit", str(limit),
           "--precision", precision, "--no-progress", "--device-dropout", "0.3"]
    if threads:
        cmd += ["--threads", str(threads)]
    subprocess.run(cmd, cwd=checkout, env={**env, "PYTHONPATH": str(checkout)}, check=True,
                   stdout=subprocess.DEVNULL)
    return _samples_per_s(out / "log.jsonl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="OpenFWI-layout directory with a card")
    parser.add_argument("--limit", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--before", default=BEFORE, help="git revision of the baseline")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp = Path(tmp)
        worktree = tmp / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.before],
                       cwd=REPO, check=True, capture_output=True)
        env = {**os.environ, "EPIC_CACHE_DIR": str(tmp / "cache")}
        try:
            for label, model, precision in RUNS:
                before = _train(worktree, model, precision, data, args.limit, args.batch,
                                args.threads, tmp / f"b-{model}-{precision}", env)
                after = _train(REPO, model, precision, data, args.limit, args.batch,
                               args.threads, tmp / f"a-{model}-{precision}", env)
                rows.append({"run": label, "before_samples_per_s": round(before, 2),
                             "after_samples_per_s": round(after, 2),
                             "speedup": round(after / before, 2)})
                print(json.dumps(rows[-1]), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=REPO,
                           capture_output=True)
    base = {r["run"]: r for r in rows}
    summary = {
        "rows": rows,
        "epic_shipped_recipe_to_new_recipe": round(
            base["EPIC, bf16"]["after_samples_per_s"]
            / base["EPIC, float32"]["before_samples_per_s"], 2),
        "before": args.before, "data": data, "limit": args.limit, "batch": args.batch,
    }
    print(json.dumps(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
