"""Replay OpenFWI-layout shot-gathers over a running testbed and measure both modes.

``replay(rundir, data, shots, mode)`` runs one device agent per live device through the run
directory's runtime (:func:`emulation.runtime.runtime_for`: processes or containers; through
its link proxy, all with one shared start instant; a device killed by ``epic testbed fault
kill-device`` is not started), waits for them, then polls
RUNDIR/results.jsonl until central decoded every gather of the run, partially (at its
deadline, without the dead devices) or not; ``both`` runs EPIC, then raw, over the same links.
It returns (and writes to ``json_out`` and RUNDIR/replay.json) per mode:

- latency per device and gather, seconds, p50/p95/p99: ``capture_to_decode_s`` (capture of
  the gather's last sample to the end of its decode) and ``publish_to_decode_s`` (encode end,
  i.e. the first publish, to decode end), broken down into ``encode`` (capture to encode end),
  ``link_broker`` (encode end to central's receipt of the device's last frame), ``assembly``
  (to the decode start: waiting for the other devices) and ``decode``;
- bytes per gather (central's wire bytes; the proxies' link bytes with headers and resends);
- energy per device, joules: radio from the deltas of the proxies' status files; compute from
  the device's hardware class (``active_w`` × its encode time, the capture-to-encode-end of
  each of its gathers in central's records, + ``idle_w`` × the rest of its proxy's uptime
  over the mode; without a class, ``compute_w`` × encode time), and their sum;
- fidelity (mean MAE/RMSE/SSIM when central had ``--truth``), and ratios raw over EPIC;
- gathers central dropped (no device complete at its deadline: ``dropped``, each with the
  reason, seen as soon as central records it, not at the timeout);
- partial decodes: how many, which devices were present (``partial_sets``), and their
  fidelity cost (``fidelity_cost``): mean MAE/RMSE/SSIM of the partial decodes against full
  decodes, ``fidelity_cost.baseline`` saying which: ``same gathers, earlier replay`` (full
  decodes of the same gathers, data and truth by an earlier replay in this run directory, e.g.
  before a ``testbed down``/``up``; from RUNDIR/replay-history.jsonl), else ``this replay``
  (its full decodes of other gathers), else ``earlier on this testbed`` (other gathers);
- the agents: shared start instant, devices skipped as dead or killed during the run;
- the SimPy model's prediction for the same topology and gather count.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from emulation.runtime import DEFAULT_LEAD_S, dead_devices, runtime_for
from emulation.simulate import simulate, wire_frame_sizes
from epic.broker import REPO
from epic.data.openfwi import OpenFWIDataset
from epic.errors import InputError, RunError
from epic.rundir import (
    DroppedGather,
    ProxyStatus,
    Result,
    RunDir,
    append_record,
    read_record,
    read_records,
    write_json,
)
from epic.topology import load_topology

__all__ = ["DEFAULT_ENCODERS", "REPLAY_FILE", "STAGES", "fidelity_cost", "replay",
           "summarize_mode"]

log = logging.getLogger(__name__)

DEFAULT_ENCODERS = REPO / "artifacts" / "encoders" / "epic-flatvel-a" / "manifest.json"
REPLAY_FILE = RunDir.REPLAY
HISTORY_FILE = RunDir.REPLAY_HISTORY  # one line per replayed mode, kept across testbed ups
STAGES: tuple[str, ...] = ("encode", "link_broker", "assembly", "decode")
_CENTRAL_MODE = {"epic": "latent", "raw": "raw"}
_STATUS_PERIOD_S = 1.0  # the proxies rewrite their status files this often


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(np.mean(values))}


def _results(rundir: Path) -> list[Result]:
    """Central's decoded gathers so far (a line being written is held back until whole)."""
    return read_records(RunDir(rundir).results, Result)


def _dropped(rundir: Path) -> list[DroppedGather]:
    """Central's dropped gathers (no device complete at the deadline)."""
    return read_records(RunDir(rundir).dropped, DroppedGather)


def _proxy_snapshot(rundir: Path, devices: tuple[str, ...]) -> dict[str, ProxyStatus | None]:
    files = RunDir(rundir)
    return {d: read_record(files.proxy_status(d), ProxyStatus) for d in devices}


def _fresh_snapshot(rundir: Path, devices: tuple[str, ...], after_unix_s: float,
                    timeout_s: float = 10.0) -> dict[str, ProxyStatus]:
    """Proxy status files all written after ``after_unix_s`` (they refresh every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snap = _proxy_snapshot(rundir, devices)
        if all(s is not None and s.updated_unix_s > after_unix_s for s in snap.values()):
            return snap
        if time.monotonic() > deadline:
            raise RunError(f"link proxy status files in {rundir} are not being updated")
        time.sleep(0.2)


def _is_partial(record: Result) -> bool:
    """Whether central decoded this gather without some device (absent or incomplete)."""
    return record.missing_any


def fidelity_cost(records: list[Result], earlier: list[Result],
                  paired: dict[int, dict] | None = None) -> dict | None:
    """Mean fidelity of partial decodes against full ones; None if no partial has metrics.

    Args:
        records: one mode's results.jsonl records of this replay.
        earlier: that mode's records decoded earlier on this testbed.
        paired: gather -> metrics of full decodes of the same gathers (same data and truth)
            by earlier replays; the preferred baseline, for the partial gathers it covers.

    Returns ``{"partial": {"n", "gathers", "mae", "rmse", "ssim"}, "full": same or None,
    "baseline": "same gathers, earlier replay" | "this replay" | "earlier on this testbed" |
    None, "delta": partial - full per metric or None}`` (MAE/RMSE on the normalised [-1, 1]
    scale, SSIM in [0, 1]).
    """
    def mean(rs: list[tuple[int, dict]]) -> dict:
        keys = rs[0][1]
        return {"n": len(rs), "gathers": sorted(g for g, _ in rs),
                **{k: float(np.mean([m[k] for _, m in rs])) for k in keys}}

    def full_of(rs: list[Result]) -> list[tuple[int, dict]]:
        return [(r.gather, r.metrics) for r in rs if not _is_partial(r) and r.metrics]

    partial = [(r.gather, r.metrics) for r in records if _is_partial(r) and r.metrics]
    if not partial:
        return None
    same = [(g, paired[g]) for g, _ in partial if g in (paired or {})]
    if same:
        partial = [(g, m) for g, m in partial if g in paired]
        baseline, full = "same gathers, earlier replay", same
    else:
        baseline, full = "this replay", full_of(records)
    if not full:
        baseline, full = "earlier on this testbed", full_of(earlier)
    out = {"partial": mean(partial), "full": mean(full) if full else None,
           "baseline": baseline if full else None, "delta": None}
    if full:
        out["delta"] = {k: out["partial"][k] - out["full"][k]
                        for k in out["partial"] if k not in ("n", "gathers")}
    return out


def summarize_mode(mode: str, records: list[Result],
                   before: Mapping[str, ProxyStatus | None],
                   after: Mapping[str, ProxyStatus | None],
                   compute_w: Mapping[str, tuple[float, float]] | None = None) -> dict:
    """One mode's measurements from its results.jsonl records and proxy status snapshots.

    ``before``/``after``: each device's proxy status at the start and end of the mode; None
    means zero (a proxy that started with the run, or wrote no status). ``compute_w``: each
    device's (active, idle) compute power, watts (`Topology.compute_of`); None books no
    compute energy.
    """
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    capture, publish = [], []
    busy_s: dict[str, float] = {}  # encode seconds per device
    for rec in records:
        end_s, start_s = rec.decode_end_ns / 1e9, rec.decode_start_ns / 1e9
        for device, receipt in rec.devices.items():
            busy_s[device] = busy_s.get(device, 0.0) + (receipt.encode_end_ns
                                                        - receipt.capture_ns) / 1e9
            capture_s, encode_end_s = receipt.capture_ns / 1e9, receipt.encode_end_ns / 1e9
            receive_s = receipt.receive_ns / 1e9
            capture.append(end_s - capture_s)
            publish.append(end_s - encode_end_s)
            stages["encode"].append(encode_end_s - capture_s)
            stages["link_broker"].append(receive_s - encode_end_s)
            stages["assembly"].append(start_s - receive_s)
            stages["decode"].append(end_s - start_s)
    energy = {}
    for device, now in after.items():
        old = before[device]
        energy[device] = now.energy_j.minus(old and old.energy_j) if now else {}
        energy[device]["up_wire_bytes"] = ((now.up_wire_bytes if now else 0)
                                           - (old.up_wire_bytes if old else 0))
        energy[device]["resent_rounds"] = ((now.resent_rounds if now else 0)
                                           - (old.resent_rounds if old else 0))
        if compute_w is not None and device in compute_w:
            active_w, idle_w = compute_w[device]
            busy = busy_s.get(device, 0.0)
            span_s = max((now.uptime_s if now else 0.0) - (old.uptime_s if old else 0.0), busy)
            compute = active_w * busy + idle_w * (span_s - busy)
            energy[device].update(compute=compute, encode_s=busy, span_s=span_s,
                                  total=energy[device].get("radio", 0.0) + compute)
    metrics = [r.metrics for r in records if r.metrics]
    fidelity = ({k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
                if metrics else None)
    n = max(len(records), 1)
    first = sorted(next(iter(r.devices.values())).capture_ns for r in records)
    partial_sets: dict[tuple[str, ...], dict] = {}
    for rec in sorted(filter(_is_partial, records), key=lambda r: r.gather):
        group = partial_sets.setdefault(rec.present, {
            "present": list(rec.present), "absent": sorted({*rec.absent, *rec.incomplete}),
            "gathers": []})
        group["gathers"].append(rec.gather)
    return {
        "capture_interval_s": float(np.median(np.diff(first))) / 1e9 if len(first) > 1
        else None,
        "mode": mode, "gathers": len(records),
        "partial": sum(map(_is_partial, records)),
        "partial_sets": list(partial_sets.values()),
        "maps": sum(1 for r in records if r.map),
        "capture_to_decode_s": _percentiles(capture),
        "publish_to_decode_s": _percentiles(publish),
        "stages_s": {k: _percentiles(v) for k, v in stages.items()},
        "bytes_per_gather": sum(r.wire_bytes for r in records) / n,
        "link_bytes_per_gather": sum(e["up_wire_bytes"] for e in energy.values()) / n,
        "energy_j": energy,
        "comm_j": float(sum(e.get("comm", 0.0) for e in energy.values())),
        "radio_j": float(sum(e.get("radio", 0.0) for e in energy.values())),
        "compute_j": (float(sum(e.get("compute", 0.0) for e in energy.values()))
                      if compute_w is not None else None),
        "fidelity": fidelity,
    }


def _wait_decoded(rundir: Path, mode: str, gather_ids: set[int], skip: int, skip_dropped: int,
                  timeout_s: float) -> tuple[list[Result], list[DroppedGather]]:
    """Central's records of ``gather_ids`` in ``mode``: (decoded, dropped), once every gather
    is one or the other. Raises RunError after ``timeout_s`` naming the gathers missing."""
    want = _CENTRAL_MODE[mode]
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in _results(rundir)[skip:]
                   if r.mode == want and r.gather in gather_ids]
        dropped = [r for r in _dropped(rundir)[skip_dropped:]
                   if r.mode == want and r.gather in gather_ids]
        if {r.gather for r in (*records, *dropped)} >= gather_ids:
            return records, dropped
        if time.monotonic() > deadline:
            missing = sorted(gather_ids - {r.gather for r in (*records, *dropped)})
            raise RunError(f"central decoded no {mode} result for gathers {missing} within "
                           f"{timeout_s:.0f} s (see {RunDir(rundir).log('central')})")
        time.sleep(0.05)


def replay(rundir: Path, data: Path, shots: int, mode: str = "both", rate: str = "max",
           json_out: Path | None = None, start: int = 0, encoders: Path = DEFAULT_ENCODERS,
           timeout_s: float = 300.0, seed: int = 0, lead_s: float = DEFAULT_LEAD_S) -> dict:
    """Replay gathers ``start .. start + shots`` of ``data`` in ``mode`` ("epic", "raw", "both").

    ``lead_s``: seconds from launching the agents to their shared start instant (they load
    the encoder and connect in that time). Dead devices (kill-device) are not started; their
    gathers are decoded partially by central at its deadline.

    Raises InputError for a bad argument, a stopped testbed, or gathers this testbed already
    decoded or dropped (central refuses them as late: use another ``start`` or restart the
    testbed); RunError for a failing agent, or results that do not come within ``timeout_s``
    (seconds, per mode).
    """
    rundir = Path(rundir).resolve()
    if mode not in ("epic", "raw", "both"):
        raise InputError(f"--mode must be epic, raw or both, got {mode!r}")
    if rate not in ("realtime", "max"):
        raise InputError(f"--rate must be realtime or max, got {rate!r}")
    if shots < 1:
        raise InputError(f"--shots must be >= 1, got {shots}")
    if not lead_s >= 0:
        raise InputError(f"--start-lead-s must be >= 0, got {lead_s}")
    runtime = runtime_for(rundir)
    info = runtime.status() if runtime.recorded() else None
    if info is None or not info.running:
        raise InputError(f"no running testbed in {rundir}; run `epic testbed up` first")
    available = len(OpenFWIDataset(data, require_models=False))
    if start + shots > available:
        raise InputError(f"{data} holds {available} gathers, asked for {start}..{start + shots}")
    modes = ("epic", "raw") if mode == "both" else (mode,)
    gather_ids = set(range(start, start + shots))
    done = {(r.mode, r.gather) for r in (*_results(rundir), *_dropped(rundir))}
    seen = sorted({g for m in modes for g in gather_ids if (_CENTRAL_MODE[m], g) in done})
    if seen:
        raise InputError(f"this testbed already decoded gathers {seen}; replay others "
                         f"(--start) or restart the testbed")
    summaries = {}
    for m in modes:
        skip, skip_dropped = len(_results(rundir)), len(_dropped(rundir))
        before = _fresh_snapshot(rundir, info.devices, time.time() - _STATUS_PERIOD_S * 3)
        started = time.time()
        agents = runtime.run_devices(m, Path(data).resolve(), shots=shots, start=start,
                                     rate=rate, encoders=encoders, timeout_s=timeout_s,
                                     lead_s=lead_s)
        records, dropped = _wait_decoded(rundir, m, gather_ids, skip, skip_dropped, timeout_s)
        wall_s = time.time() - started  # not counting the wait for fresh proxy status files
        after = _fresh_snapshot(rundir, info.devices, time.time() + 0.05)
        topology = load_topology(info.topology)
        summaries[m] = summarize_mode(m, records, before, after,
                                      {d.id: topology.compute_of(d)[1:] for d in topology.devices})
        summaries[m]["dropped"] = [{"gather": r.gather, "reason": r.reason,
                                    "incomplete": list(r.incomplete)}
                                   for r in sorted(dropped, key=lambda r: r.gather)]
        summaries[m]["wall_s"] = wall_s
        summaries[m]["agents"] = asdict(agents)
        earlier = [r for r in _results(rundir)[:skip] if r.mode == _CENTRAL_MODE[m]]
        key = {"data": str(Path(data).resolve()), "truth": info.truth, "mode": m}
        summaries[m]["fidelity_cost"] = fidelity_cost(records, earlier,
                                                      _paired_full(rundir, key))
        _append_history(rundir, key, records)
        log.info("%s: %d gathers (%d partial, %d dropped) in %.1f s", m, len(records),
                 summaries[m]["partial"], len(dropped), summaries[m]["wall_s"])
    result = {"testbed": info.testbed, "topology": info.topology, "data": str(Path(data).resolve()),
              "shots": shots, "start": start, "rate": rate, "modes": summaries,
              "dead_devices": sorted(dead_devices(rundir)),
              "raw_decoded": info.raw_checkpoint is not None, "truth": info.truth,
              "ratios": _ratios(summaries),
              "prediction": _predict(info.topology, modes, shots, summaries, seed)}
    write_json(RunDir(rundir).replay, result)
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(json_out), result)
    return result


def _append_history(rundir: Path, key: dict, records: list[Result]) -> None:
    """One line in RUNDIR/replay-history.jsonl: this mode's gathers, partial or not, metrics."""
    line = {**key, "unix_s": time.time(), "gathers": {
        str(r.gather): {"partial": _is_partial(r), "present": list(r.present),
                        "metrics": r.metrics} for r in records}}
    append_record(RunDir(rundir).replay_history, line)


def _paired_full(rundir: Path, key: dict) -> dict[int, dict]:
    """gather -> metrics of the latest earlier full decode with the same data, truth, mode."""
    out: dict[int, dict] = {}
    if key["truth"] is None:
        return out
    for entry in read_records(RunDir(rundir).replay_history):  # crash-cut lines are skipped
        if isinstance(entry, dict) and all(entry.get(k) == v for k, v in key.items()):
            out.update({int(g): r["metrics"] for g, r in entry["gathers"].items()
                        if not r["partial"] and r["metrics"]})
    return out


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

    The model makes every device's gather available at the same instant, as the live agents'
    shared start does (in real time; as fast as possible their encode times still differ).
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
            "comm_j": m.comm_j, "uplink_bytes_per_gather": m.uplink_bytes / shots,
            "energy_j": {e.device_id: {"compute": e.compute_j, "radio": e.radio_j,
                                       "total": e.total_j} for e in m.energy},
            "encode_s": m.stage_mean_s["compute"]}
    if sim.ratios is not None:
        out["ratios"] = {"latency_p50": sim.ratios.latency_p50,
                         "energy_comm": sim.ratios.energy_comm, "bytes": sim.ratios.bytes}
    return out
