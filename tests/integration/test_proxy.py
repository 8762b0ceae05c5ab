"""Live shaping against the model: real broker, real `python -m emulation.proxy`, real clients.

Every latency is publish() -> the subscriber's callback, through the proxy and Mosquitto;
the prediction is `NetworkModel` (emulation/network/) for the same link and the same MQTT
PUBLISH size. Tolerance: 10 % of the prediction (the machine is shared and busy; the
proxy's own error is a few ms of event-loop lateness on a ~0.2-1.2 s frame).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTBED, requires_mosquitto

from emulation.energy import radio_energy
from emulation.network import Message, NetworkModel, Workload
from epic.broker import BrokerProcess, BrokerRuntime, free_port
from epic.mqtt import MqttSettings, SessionClient
from epic.topology import Topology, load_topology
from epic.wire import Channel, Dtype, Frame, Kind, central_filter, topic_for

pytestmark = [pytest.mark.integration, requires_mosquitto]
REPO = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)
RTOL = 0.10


def topology_text(*, kind: str = "dedicated", bandwidth_bps: float = 2e6, delay_s: float = 0.02,
                  n_devices: int = 2, port: int = 1883) -> str:
    devices = "\n".join(
        f"  - {{id: device-{i + 1}, receivers: [{14 * i}, {14 * i + 14}], link: radio, "
        f"energy: wifi-80211n}}" for i in range(n_devices))
    return f"""testbed: {TESTBED}
broker: {{host: 127.0.0.1, port: {port}, processing_s: 0.0002}}
central: {{decode_deadline_s: 2.0, processing_s: 0.0}}
links:
  radio: {{kind: {kind}, bandwidth_bps: {bandwidth_bps}, delay_s: {delay_s}, jitter_s: 0.0,
          loss: 0.0, mtu_bytes: 1500, overhead_bytes: 40, rto_s: 0.2, max_retries: 5}}
devices:
{devices}
"""


def publish_packet_bytes(topic: str, payload_bytes: int) -> int:
    """Size of the MQTT v5 QoS 1 PUBLISH paho sends: header, topic, packet id, no properties."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload_bytes
    length_bytes = 1 + (remaining >= 128) + (remaining >= 16384) + (remaining >= 2097152)
    return 1 + length_bytes + remaining


def frame_bytes(device: int, gather: int, n_values: int) -> bytes:
    """A raw float32 frame carrying ``n_values`` values (280 KB = one device's gather)."""
    data = np.random.default_rng(gather).standard_normal(n_values).astype(np.float32)
    return Frame(Kind.RAW_CHUNK, device, gather, Dtype.FLOAT32, (n_values,),
                 data.tobytes()).encode()


def predict_s(topology: Topology, topic: str, payload_bytes: int) -> np.ndarray:
    """The model's latency (s) of one PUBLISH per device, all ready at t = 0."""
    message = Message(publish_packet_bytes(topic, payload_bytes))
    return NetworkModel(topology).run(Workload((message,), 1)).frames.latency_s


class ProxyProcess:
    """``python -m emulation.proxy`` on free ports for the devices of a topology file."""

    def __init__(self, topology_path: Path, rundir: Path, runtime: BrokerRuntime,
                 devices: list[str], follow: Path | None = None) -> None:
        self.rundir, self.devices = rundir, devices
        self.ports = {d: free_port() for d in devices}
        args = [sys.executable, "-m", "emulation.proxy", "--topology", str(topology_path),
                "--rundir", str(rundir), "--broker-host", runtime.host, "--broker-port",
                str(runtime.port), "--poll-s", "0.2"]
        if follow is not None:
            args += ["--follow", str(follow)]
        for device, port in self.ports.items():
            args += ["--device", device, "--listen-port", str(port)]
        self.log_path = rundir / "proxy.log"
        rundir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + 30
        while not all(self.status_file(d).exists() for d in devices):
            assert self.proc.poll() is None, self.log_tail()
            assert time.monotonic() < deadline, f"proxy did not start: {self.log_tail()}"
            time.sleep(0.05)

    def status_file(self, device: str) -> Path:
        return self.rundir / f"proxy-{device}.json"

    def status(self, device: str) -> dict:
        return json.loads(self.status_file(device).read_text())

    def wait_status(self, device: str, predicate: Callable[[dict], bool],
                    timeout_s: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(device)
            if predicate(status):
                return status
            assert time.monotonic() < deadline, f"status never matched: {status}"
            time.sleep(0.05)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Arrivals:
    """monotonic() arrival time of each payload at the subscriber."""

    def __init__(self) -> None:
        self.at_s: dict[bytes, float] = {}
        self._cond = threading.Condition()

    def __call__(self, message: object) -> None:
        with self._cond:
            self.at_s[bytes(message.payload)] = time.monotonic()
            self._cond.notify_all()

    def wait(self, payloads: list[bytes], timeout_s: float = 20.0) -> list[float]:
        with self._cond:
            assert self._cond.wait_for(lambda: all(p in self.at_s for p in payloads), timeout_s)
            return [self.at_s[p] for p in payloads]


@pytest.fixture
def live(broker: BrokerProcess, broker_runtime: BrokerRuntime, settings_for, tmp_path: Path):
    """Factory: (topology text, devices) -> (proxy, {device: client via proxy}, arrivals)."""
    proxies: list[ProxyProcess] = []
    clients: list[SessionClient] = []
    arrivals = Arrivals()
    receiver = SessionClient(settings_for("central"), subscriptions=[
        central_filter(TESTBED, Channel.RAW)], on_message=arrivals).connect()
    clients.append(receiver)

    def start(text: str, devices: list[str]) -> tuple[ProxyProcess, dict[str, SessionClient],
                                                     Arrivals, Path]:
        path = tmp_path / "topology.yaml"
        path.write_text(text)
        proxy = ProxyProcess(path, tmp_path / "proxy-run", broker_runtime, devices)
        proxies.append(proxy)
        via = {}
        for device in devices:
            settings: MqttSettings = settings_for(device, port=proxy.ports[device])
            via[device] = SessionClient(settings).connect(timeout_s=10)
            clients.append(via[device])
        return proxy, via, arrivals, path

    yield start
    for client in clients:
        client.close()
    for proxy in proxies:
        proxy.stop()


def timed_publish(client: SessionClient, device: int, payload: bytes,
                  arrivals: Arrivals) -> float:
    t0 = time.monotonic()
    client.publish(topic_for(TESTBED, device, Channel.RAW), payload).wait_for_publish(20)
    return arrivals.wait([payload])[0] - t0


def test_280kb_frame_lands_within_10_percent_of_the_model(live) -> None:
    proxy, via, arrivals, path = live(topology_text(), ["device-1"])
    payload = frame_bytes(1, 0, 5 * 1000 * 14)
    assert len(payload) > 280_000
    predicted_s = predict_s(load_topology(path), topic_for(TESTBED, 1, Channel.RAW),
                            len(payload))[0]
    before = proxy.wait_status("device-1", lambda s: s["down_packets"] >= 1)["up_mqtt_bytes"]
    measured_s = timed_publish(via["device-1"], 1, payload, arrivals)
    log.info("280 KB over 2 Mbit/s + 20 ms: measured %.4f s, model %.4f s (%+.1f %%)",
             measured_s, predicted_s, 100 * (measured_s / predicted_s - 1))
    assert measured_s == pytest.approx(predicted_s, rel=RTOL)
    # the proxy shaped exactly the PUBLISH the prediction assumed
    status = proxy.wait_status("device-1", lambda s: s["publishes"] >= 1)
    assert status["up_mqtt_bytes"] - before == publish_packet_bytes(
        topic_for(TESTBED, 1, Channel.RAW), len(payload))


def test_hot_reload_changes_the_next_frame_and_a_bad_file_keeps_the_link(live) -> None:
    proxy, via, arrivals, path = live(topology_text(bandwidth_bps=2e6), ["device-1"])
    topic = topic_for(TESTBED, 1, Channel.RAW)
    frames = [frame_bytes(1, g, 25_000) for g in (1, 2, 3)]  # 100 kB each
    slow_s = timed_publish(via["device-1"], 1, frames[0], arrivals)
    predicted_slow_s = predict_s(load_topology(path), topic, len(frames[0]))[0]

    path.write_text(topology_text(bandwidth_bps=4e6))
    proxy.wait_status("device-1", lambda s: s["link_spec"]["bandwidth_bps"] == 4e6)
    fast_s = timed_publish(via["device-1"], 1, frames[1], arrivals)
    predicted_fast_s = predict_s(load_topology(path), topic, len(frames[1]))[0]

    path.write_text(topology_text(bandwidth_bps=-5.0))
    status = proxy.wait_status("device-1", lambda s: s["reload"]["error"] is not None)
    assert "bandwidth_bps: must be > 0, got -5" in status["reload"]["error"]
    assert status["link_spec"]["bandwidth_bps"] == 4e6 and status["reload"]["count"] == 1
    kept_s = timed_publish(via["device-1"], 1, frames[2], arrivals)
    assert proxy.proc.poll() is None
    log.info("hot reload, 100 kB: 2 Mbit/s %.4f s (model %.4f), 4 Mbit/s %.4f s (model %.4f), "
             "after a bad file %.4f s", slow_s, predicted_slow_s, fast_s, predicted_fast_s,
             kept_s)
    assert slow_s == pytest.approx(predicted_slow_s, rel=RTOL)
    assert fast_s == pytest.approx(predicted_fast_s, rel=RTOL)
    assert kept_s == pytest.approx(predicted_fast_s, rel=RTOL)
    assert slow_s > 1.6 * fast_s


def test_shared_medium_two_devices_take_twice_as_long_as_one(live) -> None:
    _proxy, via, arrivals, path = live(topology_text(kind="shared", delay_s=0.005),
                                       ["device-1", "device-2"])
    n_values = 40_000  # 160 kB: 0.66 s alone on 2 Mbit/s
    alone_s = timed_publish(via["device-1"], 1, frame_bytes(1, 10, n_values), arrivals)
    payloads = [frame_bytes(1, 11, n_values), frame_bytes(2, 11, n_values)]
    t0 = time.monotonic()
    infos = [via[f"device-{k}"].publish(topic_for(TESTBED, k, Channel.RAW), p)
             for k, p in ((1, payloads[0]), (2, payloads[1]))]
    both_s = max(arrivals.wait(payloads)) - t0
    for info in infos:
        info.wait_for_publish(20)
    topology = load_topology(path)
    predicted = predict_s(topology, topic_for(TESTBED, 1, Channel.RAW), len(payloads[0]))
    log.info("shared medium, 160 kB each: one device %.4f s, two at once %.4f s (x%.2f); "
             "model %.4f s and %.4f s", alone_s, both_s, both_s / alone_s, *predicted)
    assert both_s == pytest.approx(predicted.max(), rel=RTOL)
    assert both_s / alone_s == pytest.approx(2.0, rel=RTOL)


def test_booked_energy_equals_the_model_and_sigterm_is_clean(live) -> None:
    proxy, via, arrivals, path = live(topology_text(), ["device-1"])
    before = proxy.wait_status("device-1", lambda s: s["down_packets"] >= 1)  # CONNACK in
    payload = frame_bytes(1, 20, 12_500)
    timed_publish(via["device-1"], 1, payload, arrivals)
    after = proxy.wait_status("device-1", lambda s: s["down_packets"] > before["down_packets"])
    topology = load_topology(path)
    message = Message(publish_packet_bytes(topic_for(TESTBED, 1, Channel.RAW), len(payload)))
    model = NetworkModel(topology).run(Workload((message,), 1))
    energy = model.energy[0]
    booked = {k: after["energy_j"][k] - before["energy_j"][k] for k in ("tx", "rx")}
    log.info("energy of one %d B PUBLISH and its PUBACK: proxy tx %.6g J rx %.6g J, model tx "
             "%.6g J rx %.6g J", message.payload_bytes, booked["tx"], booked["rx"],
             energy.tx_j, energy.rx_j)
    assert booked["tx"] == pytest.approx(energy.tx_j, rel=1e-9)
    assert booked["rx"] == pytest.approx(energy.rx_j, rel=1e-9)
    assert after["up_wire_bytes"] - before["up_wire_bytes"] == model.frames.wire_bytes[0]
    radio = radio_energy(topology.devices[0].energy)
    idle_s = after["uptime_s"] - after["tx_s"] - after["rx_s"]
    assert after["energy_j"]["idle"] == pytest.approx(radio.idle_w * idle_s, rel=1e-9)
    assert after["energy_j"]["tx"] == pytest.approx(radio.tx_w * after["tx_s"], rel=1e-9)

    assert proxy.status("device-1")["connections_open"] == 1
    assert proxy.stop() == 0, proxy.log_tail()  # SIGTERM with the device still connected
    final = proxy.status("device-1")
    assert final["state"] == "stopped" and final["connections_open"] == 0
    assert final["publishes"] == 1 and final["up_mqtt_bytes"] >= after["up_mqtt_bytes"]


def test_follow_copies_the_users_topology_over_the_watched_copy(broker, broker_runtime,
                                                                 tmp_path: Path) -> None:
    """The compose testbed: the proxies watch the run volume's copy and follow the user's
    file; an edit of the user's file re-links the device, a bad one keeps the link."""
    users, copy = tmp_path / "user" / "topology.yaml", tmp_path / "volume" / "topology.yaml"
    users.parent.mkdir()
    copy.parent.mkdir()
    users.write_text(topology_text(bandwidth_bps=2e6))
    copy.write_text(topology_text(bandwidth_bps=2e6))
    proxy = ProxyProcess(copy, copy.parent, broker_runtime, ["device-1"], follow=users)
    try:
        users.write_text(topology_text(bandwidth_bps=4e6))
        status = proxy.wait_status("device-1", lambda s: s["link_spec"]["bandwidth_bps"] == 4e6)
        assert status["reload"]["count"] == 1 and copy.read_text() == users.read_text()
        users.write_text(topology_text(bandwidth_bps=-5.0))
        status = proxy.wait_status("device-1", lambda s: s["reload"]["error"] is not None)
        assert "bandwidth_bps: must be > 0, got -5" in status["reload"]["error"]
        assert status["link_spec"]["bandwidth_bps"] == 4e6
    finally:
        assert proxy.stop() == 0, proxy.log_tail()
