"""Benchmark: the dashboard server's CPU during a realtime replay (issue 15: < 5 % of a core).

    .venv/bin/python bench/bench_dashboard.py --shots 6 --mode both \
        --json runs/bench-dashboard/result.json --screenshot docs/img/dashboard.png

Brings up a process testbed of ``topology.yaml`` (the 5 devices on the shared Wi-Fi channel,
with true maps and the shipped InversionNet for raw mode) with ``--dashboard``, opens the
page in a real headless Chromium (so the event stream is live and maps are pushed: the cost
of a watched page), runs ``epic replay --rate realtime`` (one gather every 5 s per mode), and
reads the dashboard process's CPU time (user + system, /proc/<pid>/stat) before and after
the replay. It prints (and writes with ``--json``) one JSON object:

- ``dashboard_cpu_s``, ``wall_s``: the server's CPU seconds and the replay's wall seconds;
- ``dashboard_cpu_percent_of_one_core``: their ratio, in percent;
- ``dashboard_rss_bytes``: its resident memory at the end;
- ``gathers``: decoded per mode; ``events_pushed``: the view's version at the end.

With ``--screenshot PATH`` the page is saved as PNG at the end of the replay (the README's
picture). Data: ``--data DIR`` if given, else ``epic data synth`` of ``--shots`` FlatVel-A
gathers into OUT/data (from ../shared/openfwi's FlatVel-A test maps when present, as
``make demo`` does). The testbed is always brought down.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from emulation.replay import replay  # noqa: E402
from emulation.runtime import ProcessRuntime  # noqa: E402
from epic_cli import main as epic_main  # noqa: E402
from tests.integration.chromium import Chromium, chromium_binary  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S  # utime + stime


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _data(out: Path, shots: int) -> Path:
    data = out / "data"
    if (data / "data1.npy").exists() or any(data.glob("data*.npy")):
        return data
    maps = REPO.parent / "shared" / "openfwi" / "FlatVelA_test.zip"
    args = [sys.executable, "-m", "epic_cli", "data", "synth", "--dataset", "flatvel-a",
            "--count", str(shots), "--seed", "0", "--overwrite", "--no-progress",
            "--out", str(data)]
    if maps.exists():
        args += ["--maps", str(maps)]
    subprocess.run(args, check=True, cwd=REPO)
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shots", type=int, default=6)
    parser.add_argument("--mode", choices=["epic", "raw", "both"], default="both")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-dashboard")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--no-browser", action="store_true",
                        help="Measure without a page open (no event stream).")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or _data(args.out, args.shots)
    rundir = args.out / "testbed"
    ProcessRuntime(rundir).down(timeout_s=5)
    up_args = ["testbed", "up", "--topology", str(REPO / "topology.yaml"), "--dir",
               str(rundir), "--truth", str(data), "--dashboard"]
    if args.mode != "epic":
        up_args += ["--raw-checkpoint", str(REPO / "artifacts" / "inversionnet-flatvel-a.pt")]
    browser = None
    try:
        captured = io.StringIO()
        with contextlib.redirect_stdout(captured):
            code = epic_main(up_args)
        print(captured.getvalue(), end="")
        if code != 0:
            return code
        match = re.search(r"dashboard (http://\S+) \(pid (\d+)", captured.getvalue())
        url, pid = match.group(1), int(match.group(2))
        if not args.no_browser:
            if chromium_binary() is None:
                print("no chromium: measuring without a page open", file=sys.stderr)
            else:
                browser = Chromium(args.out / "chromium")
                browser.navigate(url)
                browser.wait_for("document.querySelectorAll('#graph g.device').length > 0",
                                 60, "the page")
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        summary = replay(rundir, data, args.shots, args.mode, "realtime", timeout_s=600)
        wall_s, cpu_s = time.monotonic() - t0, _cpu_s(pid) - cpu0
        if browser is not None:
            want = sum(s["maps"] for s in summary["modes"].values())
            strip = min(want, 8)
            browser.wait_for(f"document.querySelectorAll('#strip figure').length >= {strip}",
                             30, "the maps in the strip")
            if args.screenshot:
                browser.screenshot(args.screenshot)
        state = json.loads(_fetch(url + "healthz"))
        result = {
            "command": " ".join(["bench/bench_dashboard.py", "--shots", str(args.shots),
                                 "--mode", args.mode]
                                + (["--no-browser"] if args.no_browser else [])),
            "page_open": browser is not None, "rate": "realtime",
            "wall_s": round(wall_s, 2), "dashboard_cpu_s": round(cpu_s, 3),
            "dashboard_cpu_percent_of_one_core": round(100 * cpu_s / wall_s, 2),
            "dashboard_rss_bytes": _rss_bytes(pid), "events_pushed": state["version"],
            "gathers": {m: s["gathers"] for m, s in summary["modes"].items()},
        }
    finally:
        if browser is not None:
            browser.close()
        ProcessRuntime(rundir).down(timeout_s=5)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


def _fetch(url: str) -> bytes:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read()


if __name__ == "__main__":
    sys.exit(main())
