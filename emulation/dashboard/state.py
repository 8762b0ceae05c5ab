"""What the dashboard shows, folded from the run directory's records.

:class:`DashboardState` owns a :class:`~emulation.dashboard.source.RunDirSource`. Each
:meth:`~DashboardState.refresh` (the server calls it every ``refresh_s``) stats the files,
and only when one changed re-reads it and rebuilds the *view*: one JSON-ready dict with the
topology graph, per-device counters and rates, per-stage latency percentiles, central's
counters, the SimPy prediction and the recent events. New decoded maps are kept apart (a
ring of the last :data:`MAP_HISTORY`) because they are pushed once, not with every view.

The same folded numbers feed ``/metrics`` (:mod:`emulation.dashboard.metrics`): running
totals, and the stage latency histograms (cumulative bucket counts over every record read).
"""

from __future__ import annotations

import base64
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emulation.dashboard.source import Cursor, RunDirSource
from epic.rundir import CentralStatus, ProxyStatus, Result, TestbedInfo

__all__ = [
    "LATENCY_BUCKETS_S",
    "MAP_HISTORY",
    "MODES",
    "STAGES",
    "DashboardState",
    "MapEntry",
    "StageHistogram",
]

log = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("encode", "link_broker", "assembly", "decode", "capture_to_decode")
MODES: dict[str, str] = {"latent": "epic", "raw": "raw"}  # central's mode -> the page's name
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                        0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MAP_HISTORY = 8
_SAMPLES_KEPT = 4096  # per (mode, stage), for the percentiles on the page
_RATE_WINDOW_S = 5.0  # rates are differences over about this long
_RECENT_S = 10.0  # a resend or reload this recent colours the link
_CENTRAL_STALE_S = 5.0  # central rewrites its status every second
_EVENTS_KEPT = 30
VELOCITY_RANGE_MPS: tuple[float, float] = (1500.0, 4500.0)


@dataclass
class StageHistogram:
    """Cumulative counts of one stage's latencies in :data:`LATENCY_BUCKETS_S` (seconds)."""

    counts: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS_S))
    count: int = 0
    sum_s: float = 0.0

    def observe(self, value_s: float) -> None:
        """Add one latency, seconds."""
        self.count += 1
        self.sum_s += value_s
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if value_s <= bound:
                self.counts[i] += 1


@dataclass(frozen=True)
class MapEntry:
    """One decoded gather for the map panel: ``seq`` orders them (pushed once each)."""

    seq: int
    payload: dict


def _encode_map(array: np.ndarray | None) -> str | None:
    """(70, 70) m/s -> base64 of little-endian uint16 m/s, row-major (depth, x)."""
    if array is None:
        return None
    clipped = np.clip(np.nan_to_num(array, nan=0.0), 0, 65535)
    return base64.b64encode(np.rint(clipped).astype("<u2").tobytes()).decode("ascii")


def _percentiles(values) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "n": 0}
    p50, p95, p99 = np.percentile(np.fromiter(values, float), [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "n": len(values)}


class DashboardState:
    """The folded view of one run directory (see the module docstring).

    Args:
        rundir: the run directory to watch (read only).
        predict: whether to run the SimPy model for the topology when the last replay has
            no prediction (about 0.1 s, once per topology change).
        truth: the true maps' directory where the run dir does not name one, or None.
    """

    def __init__(self, rundir: Path, predict: bool = True, truth: Path | None = None) -> None:
        self.source = RunDirSource(rundir, truth=truth)
        self.predict = predict
        self.version = 0
        self.view: dict = {}
        self.maps: deque[MapEntry] = deque(maxlen=MAP_HISTORY)
        self._map_seq = 0
        self._last_key: tuple | None = None
        self._results_cursor = Cursor()
        self._dropped_cursor = Cursor()
        self._reset_records()
        self._history: dict[str, deque[tuple[float, float, float, float]]] = {}
        self._last_resent: dict[str, tuple[int, float]] = {}
        self._last_reload: dict[str, tuple[int, float]] = {}
        self._broker: tuple[int | None, float | None] = (None, None)
        self._broker_restarts = 0
        self._connects: int | None = None
        self._dead_seen: set[str] = set()
        self._events: deque[dict] = deque(maxlen=_EVENTS_KEPT)
        self._prediction: tuple[tuple, dict | None] | None = None

    def _reset_records(self) -> None:
        self.samples: dict[tuple[str, str], deque[float]] = {}
        self.histograms: dict[tuple[str, str], StageHistogram] = {}
        self.gathers: dict[str, int] = {}
        self.partial: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self.frames: dict[str, int] = {}  # frames central assembled, per device
        self.wire_bytes: dict[str, int] = {}  # central's wire bytes, per device
        self.compute_s: dict[str, float] = {}  # encode time, per device
        self.fidelity: dict[str, list[dict]] = {}
        self.latest: dict | None = None

    # -- refresh ----------------------------------------------------------------------------
    def devices(self) -> tuple[str, ...]:
        """Device ids in topology order (topology.yaml, else testbed.json)."""
        topology = self.source.topology()
        if topology is not None:
            return tuple(d.id for d in topology.devices)
        info = self.source.testbed()
        return info.devices if info is not None else ()

    def refresh(self, now_s: float | None = None) -> bool:
        """Re-read what changed; rebuild the view. True if the view (or the maps) changed."""
        now_s = time.time() if now_s is None else now_s
        devices = self.devices()
        key = self.source.changed_key(devices)
        if key == self._last_key and self.view:
            return False
        self._last_key = key
        new_maps = self._read_records()
        view = self._build_view(devices, now_s)
        changed = new_maps or _strip_clock(view) != _strip_clock(self.view)
        self.view = view
        if changed:
            self.version += 1
        return changed

    def _event(self, at_s: float, kind: str, text: str) -> None:
        self._events.appendleft({"t": at_s, "kind": kind, "text": text})

    def _read_records(self) -> bool:
        records, self._results_cursor, restarted = self.source.read_results(
            self._results_cursor)
        if restarted:  # a new central (testbed up again): counters start over
            self._reset_records()
            self._event(time.time(), "testbed", "results.jsonl restarted (new central)")
        dropped, self._dropped_cursor, _ = self.source.read_dropped(self._dropped_cursor)
        for rec in dropped:
            mode = MODES.get(rec.mode, rec.mode)
            self.dropped[mode] = self.dropped.get(mode, 0) + 1
            self._event(rec.dropped_ns / 1e9, "dropped",
                        f"{mode} gather {rec.gather} dropped: {rec.reason}")
        new_maps = False
        for rec in records:
            try:
                new_maps |= self._fold(rec)
            except (OSError, ValueError) as exc:
                log.warning("skipping result of gather %s (%s)", rec.gather, exc)
        return new_maps

    def _observe(self, mode: str, stage: str, value_s: float) -> None:
        self.samples.setdefault((mode, stage), deque(maxlen=_SAMPLES_KEPT)).append(value_s)
        self.histograms.setdefault((mode, stage), StageHistogram()).observe(value_s)

    def _fold(self, rec: Result) -> bool:
        """Fold one decoded gather in; True if it brought a map."""
        mode = MODES.get(rec.mode, rec.mode)
        end_s, start_s = rec.decode_end_ns / 1e9, rec.decode_start_ns / 1e9
        for device, r in rec.devices.items():
            encode_s = (r.encode_end_ns - r.capture_ns) / 1e9
            self._observe(mode, "encode", encode_s)
            self._observe(mode, "link_broker", (r.receive_ns - r.encode_end_ns) / 1e9)
            self._observe(mode, "assembly", start_s - r.receive_ns / 1e9)
            self._observe(mode, "capture_to_decode", end_s - r.capture_ns / 1e9)
            self.frames[device] = self.frames.get(device, 0) + r.frames
            self.wire_bytes[device] = self.wire_bytes.get(device, 0) + r.wire_bytes
            self.compute_s[device] = self.compute_s.get(device, 0.0) + encode_s
        self._observe(mode, "decode", end_s - start_s)
        self.gathers[mode] = self.gathers.get(mode, 0) + 1
        absent = sorted({*rec.absent, *rec.incomplete})
        partial = rec.partial or bool(absent)
        if partial:
            self.partial[mode] = self.partial.get(mode, 0) + 1
        metrics = dict(rec.metrics) if rec.metrics else None
        if metrics:
            self.fidelity.setdefault(mode, []).append(metrics)
        self.latest = {"gather": rec.gather, "mode": mode, "partial": partial,
                       "absent": absent, "metrics": metrics,
                       "decode_end_ns": rec.decode_end_ns}
        if not rec.map:
            return False
        array = self.source.load_map(rec.map)
        if array is None:
            return False
        self._map_seq += 1
        truth = self.source.truth_map(rec.gather)
        self.maps.append(MapEntry(self._map_seq, {
            "seq": self._map_seq, "gather": rec.gather, "mode": mode, "partial": partial,
            "present": list(rec.present), "absent": absent, "metrics": metrics,
            "shape": list(array.shape), "range_mps": list(VELOCITY_RANGE_MPS),
            "map_u16": _encode_map(array), "truth_u16": _encode_map(truth),
        }))
        return True

    # -- the view ---------------------------------------------------------------------------
    def _build_view(self, devices: tuple[str, ...], now_s: float) -> dict:
        src = self.source
        topology = src.topology()
        testbed = src.testbed()
        docker = src.docker()
        central = src.central_status()
        dead = src.faults()
        for device in sorted(set(dead) - self._dead_seen):
            self._event(dead[device], "dead", f"{device} killed (kill-device)")
        for device in sorted(self._dead_seen - set(dead)):
            self._event(now_s, "restored", f"{device} restored")
        self._dead_seen = set(dead)
        roles = self._roles(testbed, docker, central, now_s)
        spec_by_id = {d.id: d for d in topology.devices} if topology is not None else {}
        device_views = [self._device(d, spec_by_id.get(d), dead, central, now_s)
                        for d in devices]
        links = {}
        if topology is not None:
            for name, link in topology.links.items():
                links[name] = {"kind": link.kind, "bandwidth_bps": link.bandwidth_bps,
                               "delay_s": link.delay_s, "loss": getattr(link, "loss", 0.0),
                               "devices": [d.id for d in topology.devices if d.link == name]}
        runtime = ("process" if testbed is not None else "docker" if docker is not None
                   else "compose" if central is not None else "none")
        stages = {}
        for (mode, stage), values in sorted(self.samples.items()):
            stages.setdefault(mode, {})[stage] = _percentiles(values)
        fidelity = {mode: {k: float(np.mean([m[k] for m in ms if k in m]))
                           for k in ("mae", "rmse", "ssim") if any(k in m for m in ms)}
                    for mode, ms in self.fidelity.items() if ms}
        name = (topology.testbed if topology is not None else testbed.testbed
                if testbed is not None else central.testbed if central is not None else None)
        return {
            "testbed": name, "rundir": str(src.rundir), "runtime": runtime,
            "now_unix_s": now_s, "roles": roles, "links": links, "devices": device_views,
            "central": _central_view(central), "gathers": dict(self.gathers),
            "partial": dict(self.partial), "dropped": dict(self.dropped), "stages": stages,
            "fidelity": fidelity, "latest": self.latest,
            "prediction": self._predicted(topology), "last_replay": self._last_replay(),
            "events": list(self._events),
        }

    def _roles(self, testbed: TestbedInfo | None, docker: dict | None,
               central: CentralStatus | None, now_s: float) -> dict:
        from emulation.runtime.processes import is_alive

        roles: dict[str, dict] = {}
        for proc in testbed.processes if testbed is not None else ():
            roles[proc.role] = {"alive": is_alive(proc), "pid": proc.pid}
        if docker and not roles:
            for container in docker.get("containers") or ():
                if isinstance(container, str):
                    roles.setdefault(container.rsplit("-", 1)[-1], {"alive": None, "pid": None})
        broker_pid = (roles.get("broker") or {}).get("pid")
        last_pid, _ = self._broker
        if last_pid is not None and broker_pid is not None and broker_pid != last_pid:
            self._broker_restarts += 1
            self._broker = (broker_pid, now_s)
            self._event(now_s, "broker", f"broker restarted (pid {last_pid} -> {broker_pid})")
        elif last_pid is None:
            self._broker = (broker_pid, None)
        connects = central.connects if central is not None else None
        if connects is not None:
            if self._connects is not None and connects > self._connects:
                self._event(now_s, "broker", f"central reconnected to the broker "
                                             f"(connection {connects})")
            self._connects = connects
        stale = central is None or now_s - central.updated_ns / 1e9 > _CENTRAL_STALE_S
        connected = central is not None and central.connected and not stale
        broker = roles.setdefault("broker", {"alive": None, "pid": None})
        broker.update(restarts=self._broker_restarts, restarted_unix_s=self._broker[1],
                      reachable=connected)
        roles.setdefault("central", {"alive": None, "pid": None}).update(
            connected=connected, stale=stale, connects=connects)
        roles.setdefault("proxies", {"alive": None, "pid": None})
        return roles

    def _device(self, device: str, spec, dead: dict[str, float],
                central: CentralStatus | None, now_s: float) -> dict:
        proxy: ProxyStatus | None = self.source.proxy_status(device)
        agent = self.source.agent_status(device)
        updated = proxy.updated_unix_s if proxy is not None else now_s
        publishes = proxy.publishes if proxy is not None else 0
        up_bytes = proxy.up_wire_bytes if proxy is not None else 0
        radio_j = proxy.energy_j.radio if proxy is not None else 0.0
        history = self._history.setdefault(device, deque(maxlen=64))
        if not history or history[-1][0] != updated:
            if history and publishes < history[-1][1]:  # a new proxy: counters restarted
                history.clear()
            history.append((updated, publishes, up_bytes, radio_j))
        while len(history) > 2 and updated - history[1][0] >= _RATE_WINDOW_S:
            history.popleft()
        t0, p0, b0, e0 = history[0]
        span = updated - t0
        rates = ({"frames_per_s": (publishes - p0) / span, "up_bytes_per_s": (up_bytes - b0)
                  / span, "radio_w": (radio_j - e0) / span} if span > 0 else
                 {"frames_per_s": 0.0, "up_bytes_per_s": 0.0, "radio_w": None})
        resent = proxy.resent_rounds if proxy is not None else 0
        last_resent = self._last_resent.get(device)
        if last_resent is None or resent != last_resent[0]:
            self._last_resent[device] = (resent, now_s if last_resent else 0.0)
        count = proxy.reload.count if proxy is not None else 0
        last_reload = self._last_reload.get(device)
        if last_reload is None or count != last_reload[0]:
            self._last_reload[device] = (count, now_s if last_reload else 0.0)
            if last_reload is not None and count > last_reload[0] and proxy is not None:
                self._event(now_s, "reload", f"{device}: link reloaded "
                            f"({_link_text(proxy.link_spec)})")
        # compute energy from the device's hardware class: active_w while encoding, idle_w
        # for the rest of its proxy's uptime (the radio's horizon); without a class, the
        # older compute_w × encode time
        topology = self.source.topology() if spec is not None else None
        hardware = topology.hardware_of(spec) if topology is not None else None
        compute_w = hardware.active_w if hardware is not None else getattr(spec, "compute_w",
                                                                          None)
        busy_s = self.compute_s.get(device, 0.0)
        if hardware is not None:
            compute_j = hardware.compute_energy_j(
                busy_s, max(proxy.uptime_s if proxy is not None else 0.0, busy_s))
        else:
            compute_j = compute_w * busy_s if compute_w is not None else None
        status = central.device_status.get(device) if central is not None else None
        if device in dead:
            link_state = "dead"
        elif proxy is None or proxy.state != "running":
            link_state = "down"
        elif now_s - self._last_resent[device][1] < _RECENT_S:
            link_state = "resending"
        elif rates["up_bytes_per_s"] > 0:
            link_state = "active"
        else:
            link_state = "idle"
        energy = proxy.energy_j if proxy is not None else None
        queue = proxy.link_spec.get("queue") if proxy is not None else None  # future field
        return {
            "id": device, "link": proxy.link if proxy is not None else getattr(spec, "link",
                                                                                None),
            "receivers": list(spec.receivers) if spec is not None else None,
            "dead": device in dead, "dead_since_unix_s": dead.get(device),
            "mqtt_status": status, "link_state": link_state,
            "proxy_state": proxy.state if proxy is not None else None,
            "link_spec": _link_summary(proxy.link_spec) if proxy is not None else None,
            "publishes": publishes, "frames_decoded": self.frames.get(device, 0),
            "frames_published": agent.frames_published if agent is not None else None,
            "up_wire_bytes": up_bytes,
            "down_wire_bytes": proxy.down_wire_bytes if proxy is not None else 0,
            "central_wire_bytes": self.wire_bytes.get(device, 0),
            "resent_rounds": resent, "given_up": proxy.given_up if proxy is not None else 0,
            "queue": queue if isinstance(queue, int | float) else None,
            "connections_open": proxy.connections_open if proxy is not None else None,
            "reloads": count, "reload_error": proxy.reload.error if proxy is not None else None,
            "reloaded_recently": now_s - self._last_reload[device][1] < _RECENT_S,
            "energy_j": {k: getattr(energy, k) if energy is not None else 0.0
                         for k in ("tx", "rx", "idle", "sleep", "radio", "comm")},
            "compute_j": compute_j, "compute_w": compute_w,
            "hardware": getattr(spec, "hardware", None),
            "idle_w": hardware.idle_w if hardware is not None else None, **rates,
        }

    def _last_replay(self) -> dict | None:
        summary = self.source.replay_summary()
        if not summary:
            return None
        modes = {}
        for name, s in (summary.get("modes") or {}).items():
            if isinstance(s, dict):
                modes[name] = {k: s.get(k) for k in ("gathers", "partial", "capture_to_decode_s",
                                                     "stages_s", "bytes_per_gather",
                                                     "comm_j", "fidelity")}
        return {"rate": summary.get("rate"), "shots": summary.get("shots"), "modes": modes,
                "ratios": summary.get("ratios"), "dead_devices": summary.get("dead_devices")}

    def _predicted(self, topology) -> dict | None:
        summary = self.source.replay_summary() or {}
        prediction = summary.get("prediction")
        if isinstance(prediction, dict) and isinstance(prediction.get("modes"), dict):
            shots = summary.get("shots") if isinstance(summary.get("shots"), int) else None
            modes = {m: {**p, "comm_j_per_gather": p["comm_j"] / shots
                         if shots and isinstance(p.get("comm_j"), int | float) else None}
                     for m, p in prediction["modes"].items() if isinstance(p, dict)}
            return {**prediction, "modes": modes,
                    "source": f"SimPy model of the last replay ({shots} gathers, replay.json)"}
        if topology is None or not self.predict:
            return None
        key = (topology.model_dump_json(),)
        if self._prediction is None or self._prediction[0] != key:
            self._prediction = (key, _simulate(topology))
        return self._prediction[1]


def _simulate(topology, interval_s: float = 5.0, shots: int = 20) -> dict | None:
    """The SimPy model of ``topology`` for both modes, one gather per ``interval_s``."""
    from emulation.simulate import simulate, wire_frame_sizes
    from epic.errors import InputError

    try:
        sim = simulate(topology, "both", shots=shots, seed=0, interval_s=interval_s,
                       frame_sizes=wire_frame_sizes(topology.testbed))
    except (InputError, ValueError, KeyError) as exc:
        log.warning("no prediction for this topology: %s", exc)
        return None
    modes = {m.mode: {"gather_latency_s": {"p50": m.gather_latency_s.p50,
                                           "p95": m.gather_latency_s.p95,
                                           "p99": m.gather_latency_s.p99},
                      "comm_j": m.comm_j, "comm_j_per_gather": m.comm_j / shots,
                      "uplink_bytes_per_gather": m.uplink_bytes / shots}
             for m in sim.modes}
    return {"source": f"SimPy model, {shots} gathers every {interval_s:g} s (real time)",
            "interval_s": interval_s, "modes": modes}


def _link_summary(spec: dict) -> dict:
    keys = ("kind", "bandwidth_bps", "delay_s", "jitter_s", "loss", "mtu_bytes")
    return {k: spec.get(k) for k in keys if k in spec}


def _link_text(spec: dict) -> str:
    parts = []
    if isinstance(spec.get("bandwidth_bps"), int | float):
        parts.append(f"{spec['bandwidth_bps'] / 1e6:g} Mbit/s")
    if isinstance(spec.get("delay_s"), int | float):
        parts.append(f"{spec['delay_s'] * 1e3:g} ms")
    if isinstance(spec.get("loss"), int | float):
        parts.append(f"loss {spec['loss']:g}")
    return ", ".join(parts) or "?"


def _central_view(central: CentralStatus | None) -> dict:
    if central is None:
        return {"connected": False, "frames_received": 0, "frames_accepted": 0,
                "frames_rejected": {}, "decoded": {}, "partial": 0, "dropped": 0, "pending": 0,
                "decode_errors": 0}
    g = central.gathers
    return {"connected": central.connected, "frames_received": central.frames.received,
            "frames_accepted": central.frames.accepted,
            "frames_rejected": dict(central.frames.rejected),
            "decoded": {MODES.get(k, k): v for k, v in g.decoded.items()},
            "partial": g.partial, "dropped": g.dropped, "pending": g.pending,
            "decode_errors": g.decode_errors}


def _strip_clock(view: dict) -> dict:
    return {k: v for k, v in view.items() if k != "now_unix_s"}
