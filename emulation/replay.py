"""Replay OpenFWI-layout shot-gathers over a running testbed and measure both modes.

``replay(rundir, data, shots, mode)`` starts one ``python -m devices.agent`` per device (each
connects through its link proxy), waits for them, then polls RUNDIR/results.jsonl until central
decoded every gather of the run; ``both`` runs EPIC, then raw, over the same links. It returns
(and writes to ``json_out`` and RUNDIR/replay.json) per mode:

- latency per device and gather, seconds, p50/p95/p99: ``capture_to_decode_s`` (capture of
  the gather's last sample to the end of its decode) and ``publish_to_decode_s`` (encode end,
  i.e. the first publish, to decode end), broken down into ``encode`` (capture to encode end),
  ``link_broker`` (encode end to central's receipt of the device's last frame), ``assembly``
  (to the decode start: waiting for the other devices) and ``decode``;
- bytes per gather (central's wire bytes; the proxies' link bytes with headers and resends);
- energy per device, joules, from the deltas of the proxies' status files;
- fidelity (mean MAE/RMSE/SSIM when central had ``--truth``), and ratios raw over EPIC;
- the SimPy model's prediction for the same topology and gather count.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from emulation.simulate import simulate, wire_frame_sizes
from emulation.testbed import REPO, TestbedInfo, is_alive, load_info
from epic.data.openfwi import OpenFWIDataset
from epic.errors import InputError
from epic.topology import load_topology

__all__ = ["DEFAULT_ENCODERS", "REPLAY_FILE", "STAGES", "replay", "summarize_mode"]

log = logging.getLogger(__name__)

DEFAULT_ENCODERS = REPO / "artifacts" / "encoders" / "epic-flatvel-a" / "manifest.json"
REPLAY_FILE = "replay.json"
STAGES: tuple[str, ...] = ("encode", "link_broker", "assembly", "decode")
_CENTRAL_MODE = {"epic": "latent", "raw": "raw"}
_STATUS_PERIOD_S = 1.0  # the proxies rewrite their status files this often


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(np.mean(values))}


def _results(rundir: Path) -> list[dict]:
    path = rundir / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _proxy_snapshot(rundir: Path, devices: tuple[str, ...]) -> dict[str, dict]:
    return {d: json.loads((rundir / f"proxy-{d}.json").read_text()) for d in devices}


def _fresh_snapshot(rundir: Path, devices: tuple[str, ...], after_unix_s: float,
                    timeout_s: float = 10.0) -> dict[str, dict]:
    """Proxy status files all written after ``after_unix_s`` (they refresh every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = _proxy_snapshot(rundir, devices)
        if all(s["updated_unix_s"] > after_unix_s for s in snap.values()):
            return snap
        if time.monotonic() > deadline:
            raise InputError(f"link proxy status files in {rundir} are not being updated")
        time.sleep(0.2)


def summarize_mode(mode: str, records: list[dict], before: dict[str, dict],
                   after: dict[str, dict]) -> dict:
    """One mode's measurements from its results.jsonl records and proxy status snapshots."""
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    capture, publish = [], []
    for rec in records:
        for stamps in rec["devices"].values():
            s = {k: v / 1e9 for k, v in stamps.items() if k.endswith("_ns")}
            end_s, start_s = rec["decode_end_ns"] / 1e9, rec["decode_start_ns"] / 1e9
            capture.append(end_s - s["capture_ns"])
            publish.append(end_s - s["encode_end_ns"])
            stages["encode"].append(s["encode_end_ns"] - s["capture_ns"])
            stages["link_broker"].append(s["receive_ns"] - s["encode_end_ns"])
            stages["assembly"].append(start_s - s["receive_ns"])
            stages["decode"].append(end_s - start_s)
    energy = {}
    for device, now in after.items():
        old = before[device]
        energy[device] = {k: now["energy_j"][k] - old["energy_j"][k] for k in now["energy_j"]}
        energy[device]["up_wire_bytes"] = now["up_wire_bytes"] - old["up_wire_bytes"]
        energy[device]["resent_rounds"] = now["resent_rounds"] - old["resent_rounds"]
    metrics = [r["metrics"] for r in records if r.get("metrics")]
    fidelity = ({k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
                if metrics else None)
    n = max(len(records), 1)
    first = sorted(next(iter(r["devices"].values()))["capture_ns"] for r in records)
    return {
        "capture_interval_s": float(np.median(np.diff(first))) / 1e9 if len(first) > 1
        else None,
        "mode": mode, "gathers": len(records),
        "partial": sum(1 for r in records if r["absent"] or r["incomplete"]),
        "maps": sum(1 for r in records if r.get("map")),
        "capture_to_decode_s": _percentiles(capture),
        "publish_to_decode_s": _percentiles(publish),
        "stages_s": {k: _percentiles(v) for k, v in stages.items()},
        "bytes_per_gather": sum(r["wire_bytes"] for r in records) / n,
        "link_bytes_per_gather": sum(e["up_wire_bytes"] for e in energy.values()) / n,
        "energy_j": energy,
        "comm_j": float(sum(e["comm"] for e in energy.values())),
        "fidelity": fidelity,
    }


def _run_agents(info: TestbedInfo, mode: str, data: Path, shots: int, start: int, rate: str,
                encoders: Path, timeout_s: float) -> None:
    rundir = Path(info.rundir)
    procs = []
    for number, device in enumerate(info.devices):
        log_path = rundir / "logs" / f"agent-{device}-{mode}.log"
        args = [sys.executable, "-m", "devices.agent",
                "--device-id", device.rsplit("-", 1)[1], "--topology", info.topology,
                "--rundir", info.rundir, "--encoders", str(encoders), "--data", str(data),
                "--mode", mode, "--gathers", str(shots), "--start", str(start), "--rate", rate,
                "--broker-host", info.broker_host,
                "--broker-port", str(info.proxy_base_port + number)]
        with open(log_path, "ab") as handle:
            procs.append((device, log_path, subprocess.Popen(
                args, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO)))
    deadline = time.monotonic() + timeout_s
    failed = []
    for device, log_path, proc in procs:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.returncode != 0:
            failed.append(f"{device} exit {proc.returncode} (see {log_path})")
    if failed:
        raise InputError(f"{mode} agents failed: {'; '.join(failed)}")


def _wait_decoded(rundir: Path, mode: str, gather_ids: set[int], skip: int,
                  timeout_s: float) -> list[dict]:
    want = _CENTRAL_MODE[mode]
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in _results(rundir)[skip:]
                   if r["mode"] == want and r["gather"] in gather_ids]
        if {r["gather"] for r in records} >= gather_ids:
            return records
        if time.monotonic() > deadline:
            missing = sorted(gather_ids - {r["gather"] for r in records})
            raise InputError(f"central decoded no {mode} result for gathers {missing} within "
                             f"{timeout_s:.0f} s (see {rundir}/logs/central.log)")
        time.sleep(0.2)


def replay(rundir: Path, data: Path, shots: int, mode: str = "both", rate: str = "max",
           json_out: Path | None = None, start: int = 0, encoders: Path = DEFAULT_ENCODERS,
           timeout_s: float = 300.0, seed: int = 0) -> dict:
    """Replay gathers ``start .. start + shots`` of ``data`` in ``mode`` ("epic", "raw", "both").

    Raises InputError for a bad argument, a stopped testbed, gathers this testbed already
    decoded (central refuses them as late: use another ``start`` or restart the testbed), a
    failing agent, or results that do not come within ``timeout_s`` (seconds, per mode).
    """
    rundir = Path(rundir).resolve()
    if mode not in ("epic", "raw", "both"):
        raise InputError(f"--mode must be epic, raw or both, got {mode!r}")
    if rate not in ("realtime", "max"):
        raise InputError(f"--rate must be realtime or max, got {rate!r}")
    if shots < 1:
        raise InputError(f"--shots must be >= 1, got {shots}")
    info = load_info(rundir)
    if info is None or not all(is_alive(p) for p in info.processes):
        raise InputError(f"no running testbed in {rundir}; run `epic testbed up` first")
    available = len(OpenFWIDataset(data, require_models=False))
    if start + shots > available:
        raise InputError(f"{data} holds {available} gathers, asked for {start}..{start + shots}")
    modes = ("epic", "raw") if mode == "both" else (mode,)
    gather_ids = set(range(start, start + shots))
    done = {(r["mode"], r["gather"]) for r in _results(rundir)}
    seen = sorted({g for m in modes for g in gather_ids if (_CENTRAL_MODE[m], g) in done})
    if seen:
        raise InputError(f"this testbed already decoded gathers {seen}; replay others "
                         f"(--start) or restart the testbed")
    summaries = {}
    for m in modes:
        skip = len(_results(rundir))
        before = _fresh_snapshot(rundir, info.devices, time.time() - _STATUS_PERIOD_S * 3)
        started = time.time()
        _run_agents(info, m, Path(data).resolve(), shots, start, rate, encoders, timeout_s)
        records = _wait_decoded(rundir, m, gather_ids, skip, timeout_s)
        after = _fresh_snapshot(rundir, info.devices, time.time() + 0.05)
        summaries[m] = summarize_mode(m, records, before, after)
        summaries[m]["wall_s"] = time.time() - started
        log.info("%s: %d gathers in %.1f s", m, len(records), summaries[m]["wall_s"])
    result = {"testbed": info.testbed, "topology": info.topology, "data": str(Path(data).resolve()),
              "shots": shots, "start": start, "rate": rate, "modes": summaries,
              "raw_decoded": info.raw_checkpoint is not None, "truth": info.truth,
              "ratios": _ratios(summaries),
              "prediction": _predict(info.topology, modes, shots, summaries, seed)}
    text = json.dumps(result, indent=2) + "\n"
    (rundir / REPLAY_FILE).write_text(text)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text)
    return result


def _ratios(summaries: dict[str, dict]) -> dict | None:
    if set(summaries) != {"epic", "raw"}:
        return None
    e, r = summaries["epic"], summaries["raw"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = {f"latency_{p}": ratio(r["capture_to_decode_s"][p], e["capture_to_decode_s"][p])
           for p in ("p50", "p95", "p99")}
    out["link_latency_p50"] = ratio(r["stages_s"]["link_broker"]["p50"],
                                    e["stages_s"]["link_broker"]["p50"])
    out["energy_comm"] = ratio(r["comm_j"], e["comm_j"])
    out["bytes"] = ratio(r["bytes_per_gather"], e["bytes_per_gather"])
    return out


def _predict(topology_path: str, modes: tuple[str, ...], shots: int,
             summaries: dict[str, dict], seed: int) -> dict:
    """The SimPy model's run of the same topology, gather count and measured gather interval.

    The model makes every device's gather available at the same instant; live agents start a
    little apart, so live devices contend less for a shared medium than modelled.
    """
    topology = load_topology(topology_path)
    measured = summaries[modes[0]]["capture_interval_s"]  # 5 s in real time (5 shots x 1 s)
    interval_s = max(measured, 1e-3) if measured else 1.0
    sim = simulate(topology, "both" if len(modes) == 2 else modes[0], shots=shots, seed=seed,
                   frame_sizes=wire_frame_sizes(topology.testbed), interval_s=interval_s)
    out = {"interval_s": interval_s, "modes": {}, "ratios": None}
    for m in sim.modes:
        out["modes"][m.mode] = {
            "gather_latency_s": {"p50": m.gather_latency_s.p50, "p95": m.gather_latency_s.p95,
                                 "p99": m.gather_latency_s.p99},
            "comm_j": m.comm_j, "uplink_bytes_per_gather": m.uplink_bytes / shots}
    if sim.ratios is not None:
        out["ratios"] = {"latency_p50": sim.ratios.latency_p50,
                         "energy_comm": sim.ratios.energy_comm, "bytes": sim.ratios.bytes}
    return out
