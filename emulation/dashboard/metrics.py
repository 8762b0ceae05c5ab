"""``/metrics``: the dashboard's numbers in the Prometheus text format.

A custom collector reads the folded :class:`~emulation.dashboard.state.DashboardState` at
each scrape (the run dir's own counters are the source of truth, so there is nothing to
increment here). Names follow Prometheus conventions: base units (seconds, bytes, joules),
``_total`` on counters, labels for the dimensions. The families:

==========================================  =========  ===================================
name                                        type       labels
==========================================  =========  ===================================
epic_frames_total                           counter    (central accepted these frames)
epic_frames_rejected_total                  counter    reason
epic_device_publishes_total                 counter    device (MQTT PUBLISH via the link)
epic_device_frames_decoded_total            counter    device (in decoded gathers)
epic_link_bytes_total                       counter    device, direction (up, down)
epic_link_resent_rounds_total               counter    device
epic_link_reloads_total                     counter    device
epic_link_bandwidth_bps                     gauge      device
epic_link_loss_ratio                        gauge      device
epic_radio_energy_joules_total              counter    device, state (tx, rx, idle, sleep)
epic_compute_energy_joules_total            counter    device (active_w x encode + idle_w x rest)
epic_device_up                              gauge      device (0 once kill-device marks it)
epic_gathers_decoded_total                  counter    mode (epic, raw)
epic_gathers_partial_total                  counter    mode
epic_gathers_dropped_total                  counter    mode
epic_stage_latency_seconds                  histogram  stage, mode
epic_reconstruction_mae / _rmse / _ssim     gauge      mode (mean over the decodes read)
epic_predicted_gather_latency_seconds       gauge      mode, quantile (the SimPy model)
epic_central_connected                      gauge
epic_broker_restarts_total                  counter
==========================================  =========  ===================================
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from emulation.dashboard.state import LATENCY_BUCKETS_S, DashboardState

__all__ = ["CONTENT_TYPE", "StateCollector", "render"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StateCollector:
    """A prometheus_client collector over one :class:`DashboardState` (read at scrape)."""

    def __init__(self, state: DashboardState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []  # families depend on the run dir: collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        state, view = self.state, self.state.view
        central = view.get("central") or {}
        devices = view.get("devices") or []
        frames = CounterMetricFamily("epic_frames", "Frames central accepted (all devices).")
        frames.add_metric([], central.get("frames_accepted", 0))
        yield frames
        rejected = CounterMetricFamily("epic_frames_rejected", "Frames central rejected.",
                                       labels=["reason"])
        for reason, n in sorted((central.get("frames_rejected") or {}).items()):
            rejected.add_metric([reason], n)
        yield rejected

        def per_device(name: str, doc: str, key: str, kind=CounterMetricFamily) -> Metric:
            family = kind(name, doc, labels=["device"])
            for d in devices:
                if isinstance(d.get(key), int | float):
                    family.add_metric([d["id"]], d[key])
            return family

        yield per_device("epic_device_publishes", "MQTT PUBLISH packets a device sent "
                         "through its link proxy.", "publishes")
        yield per_device("epic_device_frames_decoded", "Frames of a device in gathers "
                         "central decoded.", "frames_decoded")
        link_bytes = CounterMetricFamily("epic_link_bytes", "Bytes on a device's emulated "
                                         "link, with headers and resends.",
                                         labels=["device", "direction"])
        for d in devices:
            link_bytes.add_metric([d["id"], "up"], d.get("up_wire_bytes", 0))
            link_bytes.add_metric([d["id"], "down"], d.get("down_wire_bytes", 0))
        yield link_bytes
        yield per_device("epic_link_resent_rounds", "Retransmission rounds on a device's "
                         "link.", "resent_rounds")
        yield per_device("epic_link_reloads", "Live reloads of a device's link shaping.",
                         "reloads")
        bandwidth = GaugeMetricFamily("epic_link_bandwidth_bps", "A device's link bit rate "
                                      "now, bit/s.", labels=["device"])
        loss = GaugeMetricFamily("epic_link_loss_ratio", "A device's link loss probability "
                                 "per packet now.", labels=["device"])
        for d in devices:
            spec = d.get("link_spec") or {}
            if isinstance(spec.get("bandwidth_bps"), int | float):
                bandwidth.add_metric([d["id"]], spec["bandwidth_bps"])
            if isinstance(spec.get("loss"), int | float):
                loss.add_metric([d["id"]], spec["loss"])
        yield bandwidth
        yield loss
        energy = CounterMetricFamily("epic_radio_energy_joules", "A device's radio energy, "
                                     "joules, by radio state.", labels=["device", "state"])
        for d in devices:
            for radio_state in ("tx", "rx", "idle", "sleep"):
                energy.add_metric([d["id"], radio_state],
                                  (d.get("energy_j") or {}).get(radio_state, 0.0))
        yield energy
        yield per_device("epic_compute_energy_joules", "A device's compute energy, joules "
                         "(its hardware class's active_w times its encode time plus idle_w "
                         "times the rest of its uptime).", "compute_j")
        up = GaugeMetricFamily("epic_device_up", "1 unless kill-device marked the device "
                               "dead.", labels=["device"])
        for d in devices:
            up.add_metric([d["id"]], 0 if d.get("dead") else 1)
        yield up
        for name, doc, counts in (
                ("epic_gathers_decoded", "Gathers central decoded.", state.gathers),
                ("epic_gathers_partial", "Gathers decoded without some devices.",
                 state.partial),
                ("epic_gathers_dropped", "Gathers central gave up on.", state.dropped)):
            family = CounterMetricFamily(name, doc, labels=["mode"])
            for mode in sorted({*state.gathers, *state.partial, *state.dropped}):
                family.add_metric([mode], counts.get(mode, 0))
            yield family
        latency = HistogramMetricFamily("epic_stage_latency_seconds", "Latency of one stage "
                                        "per device and gather, seconds.",
                                        labels=["stage", "mode"])
        for (mode, stage), hist in sorted(state.histograms.items()):
            buckets = [(f"{b:g}", c) for b, c in zip(LATENCY_BUCKETS_S, hist.counts,
                                                      strict=True)]
            buckets.append(("+Inf", hist.count))
            latency.add_metric([stage, mode], buckets, sum_value=hist.sum_s)
        yield latency
        for metric in ("mae", "rmse", "ssim"):
            family = GaugeMetricFamily(f"epic_reconstruction_{metric}", f"Mean {metric.upper()}"
                                       " of the decoded maps against the truth.",
                                       labels=["mode"])
            for mode, values in sorted((view.get("fidelity") or {}).items()):
                if metric in values:
                    family.add_metric([mode], values[metric])
            yield family
        predicted = GaugeMetricFamily("epic_predicted_gather_latency_seconds", "The SimPy "
                                      "model's gather latency for this topology, seconds.",
                                      labels=["mode", "quantile"])
        for mode, p in sorted(((view.get("prediction") or {}).get("modes") or {}).items()):
            for q, key in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
                value = (p.get("gather_latency_s") or {}).get(key)
                if isinstance(value, int | float):
                    predicted.add_metric([mode, q], value)
        yield predicted
        connected = GaugeMetricFamily("epic_central_connected", "1 while central is "
                                      "connected to the broker.")
        connected.add_metric([], 1 if central.get("connected") else 0)
        yield connected
        restarts = CounterMetricFamily("epic_broker_restarts", "Broker restarts seen by the "
                                       "dashboard (a new broker PID).")
        restarts.add_metric([], ((view.get("roles") or {}).get("broker") or {}).get(
            "restarts", 0))
        yield restarts


def render(state: DashboardState) -> bytes:
    """The exposition text of ``state`` (one scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return generate_latest(registry)
