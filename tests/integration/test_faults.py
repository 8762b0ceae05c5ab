"""Device faults on the live testbed: kill-device, partial decodes and their fidelity cost,
restore-device, the agents' shared start instant, and broker restarts (SIGKILL and SIGTERM)
while the agents publish.

Real Mosquitto, link proxies, central and LiteRT device agents, over the fast dedicated links of
``test_testbed``; ``epic`` commands through the real CLI entry point (``epic_cli.main``).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from emulation.replay import replay
from emulation.runtime import ProcessRuntime
from emulation.runtime.process import load_info, running_agents
from emulation.runtime.processes import is_alive
from epic.report.testbed_report import write_report
from epic_cli import main
from tests.integration.conftest import requires_mosquitto
from tests.integration.test_testbed import _fast_topology

pytestmark = [pytest.mark.integration, requires_mosquitto]

DEVICES = [f"device-{i}" for i in range(1, 6)]


@pytest.fixture
def run_dir(tmp_path: Path):
    path = tmp_path / "run"
    yield path
    ProcessRuntime(path).down(timeout_s=5)  # whatever the test did, leave nothing running


def _records(rundir: Path, gathers: range) -> list[dict]:
    lines = (rundir / "results.jsonl").read_text().splitlines()
    return sorted((r for r in map(json.loads, lines) if r["gather"] in gathers),
                  key=lambda r: r["gather"])


def _epic(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_kill_device_gives_flagged_partial_decodes_with_their_cost(tmp_path, run_dir,
                                                                   tiny_dataset, capsys):
    ProcessRuntime(run_dir).up(_fast_topology(tmp_path), truth=tiny_dataset, timeout_s=90)
    rd = str(run_dir)

    # a full replay first: the baseline of the fidelity cost, and the shared start
    full = replay(run_dir, tiny_dataset, 1, "epic", "max", timeout_s=60)["modes"]["epic"]
    assert full["partial"] == 0 and full["agents"]["started"] == DEVICES
    lags = full["agents"]["start_lag_s"]  # how closely they start together: a benchmark below
    assert set(lags) == set(DEVICES) and all(lag >= 0 for lag in lags.values()), lags

    code, out, err = _epic(capsys, "testbed", "fault", "kill-device", "device-9", "--dir", rd)
    assert code == 2 and "device-9" in err and "device-1, device-2" in err, err
    assert len(err.strip().splitlines()) == 1
    code, out, _ = _epic(capsys, "testbed", "fault", "kill-device", "device-3", "--dir", rd)
    assert code == 0 and "no agent running" in out, out
    assert "device-3" in json.loads((run_dir / "faults.json").read_text())["dead"]

    gathers = range(1, 4)
    code, out, err = _epic(capsys, "replay", "--data", str(tiny_dataset), "--shots", "3",
                           "--start", "1", "--mode", "epic", "--dir", rd)
    assert code == 0, err
    assert "without device-3" in out and "fidelity cost" in out, out
    records = _records(run_dir, gathers)
    assert [r["gather"] for r in records] == list(gathers)  # every gather decoded
    present = [d for d in DEVICES if d != "device-3"]
    for r in records:
        assert r["partial"] and r["present"] == present and r["absent"] == ["device-3"], r
        assert r["map"] and r["metrics"]
    summary = json.loads((run_dir / "replay.json").read_text())
    epic = summary["modes"]["epic"]
    assert summary["dead_devices"] == ["device-3"]
    assert epic["agents"]["skipped_dead"] == ["device-3"] and "device-3" not in epic["agents"][
        "started"]
    assert epic["partial"] == 3
    assert epic["partial_sets"] == [{"present": present, "absent": ["device-3"],
                                     "gathers": [1, 2, 3]}]
    cost = epic["fidelity_cost"]
    assert cost["baseline"] == "earlier on this testbed" and cost["full"]["gathers"] == [0]
    assert cost["partial"]["n"] == 3
    assert cost["delta"]["mae"] == pytest.approx(cost["partial"]["mae"] - cost["full"]["mae"])
    text = write_report(run_dir, tmp_path / "report").read_text()
    assert "without device-3" in text and "fidelity cost of the 3 partial decodes" in text

    code, out, _ = _epic(capsys, "testbed", "fault", "restore-device", "device-3", "--dir", rd)
    assert code == 0 and "restored" in out
    back = replay(run_dir, tiny_dataset, 1, "epic", "max", start=4, timeout_s=60)
    assert back["dead_devices"] == [] and back["modes"]["epic"]["partial"] == 0
    (last,) = _records(run_dir, range(4, 5))
    assert not last["partial"] and last["present"] == DEVICES

    # a new testbed in the same run directory starts without faults; killing device-3 again
    # and replaying gather 4 compares the partial decode with gather 4's full decode above
    ProcessRuntime(run_dir).down(timeout_s=5)
    ProcessRuntime(run_dir).up(_fast_topology(tmp_path), truth=tiny_dataset, timeout_s=90)
    assert not (run_dir / "faults.json").exists()
    ProcessRuntime(run_dir).kill_device("device-3")
    again = replay(run_dir, tiny_dataset, 1, "epic", "max", start=4, timeout_s=60)
    cost = again["modes"]["epic"]["fidelity_cost"]
    assert cost["baseline"] == "same gathers, earlier replay", cost
    assert cost["partial"]["gathers"] == cost["full"]["gathers"] == [4]
    assert cost["full"]["mae"] == pytest.approx(last["metrics"]["mae"])


@pytest.mark.benchmark
def test_benchmark_shared_start_spread(tmp_path, run_dir, tiny_dataset):
    """How closely the agents start together (wall clock: a benchmark, not the default run).

    Measured ~1-3 ms between the five capture instants on the idle machine."""
    ProcessRuntime(run_dir).up(_fast_topology(tmp_path), timeout_s=90)
    full = replay(run_dir, tiny_dataset, 1, "epic", "max", timeout_s=60)["modes"]["epic"]
    (first,) = _records(run_dir, range(1))
    captures_ms = [d["capture_ns"] / 1e6 for d in first["devices"].values()]
    lags = full["agents"]["start_lag_s"]
    print(f"capture spread {max(captures_ms) - min(captures_ms):.1f} ms, start lags {lags}")
    assert max(captures_ms) - min(captures_ms) < 50, captures_ms
    assert all(0 <= lag < 0.05 for lag in lags.values()), lags


def test_kill_device_during_a_realtime_replay(tmp_path, run_dir, tiny_dataset):
    ProcessRuntime(run_dir).up(_fast_topology(tmp_path), truth=tiny_dataset, timeout_s=90)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(
        replay(run_dir, tiny_dataset, 2, "epic", "realtime", timeout_s=60)))
    worker.start()
    deadline = time.monotonic() + 30
    while "device-2" not in running_agents(run_dir):
        assert time.monotonic() < deadline and worker.is_alive(), "agents never started"
        time.sleep(0.05)
    killed = ProcessRuntime(run_dir).kill_device("device-2")  # before gather 0 completes
    assert killed is not None and killed.startswith("agent pid "), killed
    worker.join(60)
    assert not worker.is_alive() and result, "replay did not finish"
    epic = result["modes"]["epic"]
    assert epic["agents"]["killed"] == ["device-2"]
    assert epic["gathers"] == 2 and epic["partial"] == 2
    records = _records(run_dir, range(2))
    for r in records:
        assert r["absent"] == ["device-2"] and r["at_deadline"], r
        # the shared start: every device's gather k ends at T + (k + 1) x 5 s
        captures = {d["capture_ns"] for d in r["devices"].values()}
        assert max(captures) - min(captures) < 1e6, captures
    start_at = epic["agents"]["start_at_unix_s"]
    assert records[0]["devices"]["device-1"]["capture_ns"] / 1e9 == pytest.approx(
        start_at + 5.0, abs=1e-3)
    assert epic["fidelity_cost"]["full"] is None  # nothing full on this testbed yet
    assert epic["fidelity_cost"]["partial"]["n"] == 2


def test_fault_commands_without_a_testbed_exit_2(tmp_path, capsys):
    for command in ("kill-device", "restore-device"):
        code, _, err = _epic(capsys, "testbed", "fault", command, "device-1", "--dir",
                             str(tmp_path / "none"))
        assert code == 2 and "no testbed" in err, err


def _start_instant(rundir: Path, timeout_s: float = 30.0) -> float:
    """The running replay's shared start T, from its agents' ``--start-at-unix-s`` argument."""
    deadline = time.monotonic() + timeout_s
    while len(agents := running_agents(rundir)) < len(DEVICES):
        assert time.monotonic() < deadline, "the agents never started"
        time.sleep(0.02)
    args = Path(f"/proc/{agents['device-1'].pid}/cmdline").read_bytes().decode().split("\0")
    return float(args[args.index("--start-at-unix-s") + 1])


def _central_status_after(rundir: Path, unix_s: float, timeout_s: float = 10.0) -> dict:
    """central-status.json once central rewrote it after ``unix_s`` (it does every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = json.loads((rundir / "central-status.json").read_text())
        if status["updated_ns"] / 1e9 > unix_s:
            return status
        assert time.monotonic() < deadline, "central-status.json is not being rewritten"
        time.sleep(0.1)


def test_broker_restarts_during_a_replay_lose_no_frame(tmp_path, run_dir, tiny_dataset,
                                                         capsys):
    """SIGKILL the broker as gather 0 is published, SIGTERM it at gather 1, SIGKILL it (CLI)
    at gather 2, the last: every frame an agent published reaches central, once."""
    ProcessRuntime(run_dir).up(_fast_topology(tmp_path), timeout_s=90)
    shots, rd = 3, str(run_dir)
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = replay(run_dir, tiny_dataset, shots, "epic", "realtime",
                                       timeout_s=60)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    start_at = _start_instant(run_dir)
    offset_s = float(os.environ.get("EPIC_TEST_RESTART_OFFSET_S", "0.002"))
    pids = []
    for k in range(shots):  # in real time every agent publishes gather k at T + (k + 1) x 5 s
        time.sleep(max(start_at + 5.0 * (k + 1) + offset_s - time.time(), 0))
        if k == 0:
            pids.append(int(ProcessRuntime(run_dir).restart_broker(hard=True).split()[-1]))
        else:
            hard = ["--hard"] if k == 2 else []
            code, out, err = _epic(capsys, "testbed", "fault", "restart-broker", *hard,
                                   "--dir", rd)
            assert code == 0, err
            assert f"broker restarted ({'hard' if hard else 'soft'}): pid " in out, out
            pids.append(int(out.split("pid")[-1]))
    broker = next(p for p in load_info(run_dir).processes if p.role == "broker")
    assert broker.pid == pids[-1] and len(set(pids)) == shots and is_alive(broker)
    worker.join(90)
    assert not worker.is_alive(), "replay did not finish"
    assert "error" not in outcome, outcome.get("error")
    ended = time.time()

    published = {d: json.loads((run_dir / f"agent-{d}.json").read_text()) for d in DEVICES}
    for stats in published.values():
        assert stats["gathers_published"] == stats["frames_published"] == shots, stats
    records = _records(run_dir, range(shots))
    assert [r["gather"] for r in records] == list(range(shots))  # each decoded once
    missing = [(r["gather"], d) for r in records for d in (*r["absent"], *r["incomplete"])]
    present = sum(len(r["present"]) for r in records)
    assert present + len(missing) == shots * len(DEVICES)
    frames = _central_status_after(run_dir, ended + 1.0)["frames"]
    rejected = frames["rejected"]
    assert set(rejected) <= {"duplicate", "late"}, rejected  # copies replayed after reconnects
    assert frames["accepted"] == present  # every frame central kept is in a decoded gather
    # a frame that came after its gather's deadline is counted late, never silently dropped
    assert rejected.get("late", 0) >= len(missing), (missing, frames)
    assert outcome["result"]["modes"]["epic"]["gathers"] == shots
