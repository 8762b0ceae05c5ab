"""Benchmark: the project's messaging against plain Mosquitto + plain paho, in the same run.

    .venv/bin/python bench/bench_messaging.py --rounds 5 [--json OUT]

Three brokers run side by side on free ports, each with one publisher and one subscriber in
this process, 972-byte payloads (a latent frame's size), QoS 1:

- ``plain``: ``mosquitto`` with only a listener and anonymous access (its defaults: no
  persistence), plain ``paho.mqtt.client.Client`` (MQTT v5, clean start) on both sides;
- ``save_on_change``: the project's broker config (``epic.broker.prepare_runtime`` default:
  password file, ACL, persistence saved after every change) and its clients
  (``epic.mqtt.SessionClient``: a device with ``keep_until_confirmed``, central's
  subscriptions);
- ``periodic_save``: the same with ``save_interval_s`` =
  ``emulation.testbed.BROKER_SAVE_INTERVAL_S``, what the testbed runs.

Per round, for each broker in turn (interleaved, so all three see the same machine load):

- latency: ``--paced`` messages at ``--rate-hz``; publish call to the subscriber's callback,
  p50 and p99 (ms);
- burst: ``--burst`` messages published as fast as possible; messages per second from the
  first publish to the last delivery.

Prints the medians over rounds and the ratios to ``plain``, and the load average. Brokers and
their files live in a temporary directory (outside the repository), removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from emulation.testbed import BROKER_SAVE_INTERVAL_S  # noqa: E402
from epic import wire  # noqa: E402
from epic.broker import (  # noqa: E402
    CENTRAL_USER,
    BrokerProcess,
    central_subscriptions,
    free_port,
    prepare_runtime,
)
from epic.mqtt import MqttSettings, SessionClient  # noqa: E402

PAYLOAD_BYTES = 972
TESTBED = "bench"


class _Receiver:
    """Counts deliveries and records publish-to-delivery latency (ns stamp in the payload)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency_s: list[float] = []
        self.count = 0
        self.last_ns = 0
        self.done = threading.Event()
        self.expect = 0

    def reset(self, expect: int) -> None:
        with self.lock:
            self.latency_s, self.count, self.expect = [], 0, expect
            self.done.clear()

    def on_message(self, message: paho.MQTTMessage) -> None:
        now = time.perf_counter_ns()
        payload = bytes(message.payload)
        if len(payload) != PAYLOAD_BYTES:
            return  # births and wills on the status topic
        with self.lock:
            self.latency_s.append((now - int.from_bytes(payload[:8], "little")) / 1e9)
            self.count += 1
            self.last_ns = now
            if self.count >= self.expect:
                self.done.set()


def _payload(i: int) -> bytes:
    return time.perf_counter_ns().to_bytes(8, "little") + i.to_bytes(4, "little") + bytes(
        PAYLOAD_BYTES - 12)


class _Setup:
    """One broker with a publisher and a subscriber; ``publish(i)`` sends message i."""

    def __init__(self, name: str, work: Path) -> None:
        self.name, self.receiver = name, _Receiver()
        port = free_port()
        if name == "plain":
            conf = work / name / "mosquitto.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.broker = None
            self.topic = "bench/device-1/latent"
            self.sub = self._plain_client("sub", port)
            self.sub.on_message = lambda _c, _u, m: self.receiver.on_message(m)
            self.sub.subscribe(self.topic, qos=1)
            self.pub = self._plain_client("pub", port)
            return
        save = None if name == "save_on_change" else BROKER_SAVE_INTERVAL_S
        runtime = prepare_runtime(work / name, testbed=TESTBED, device_ids=[1], port=port,
                                  save_interval_s=save)
        self.proc, self.broker = None, BrokerProcess(runtime).start()
        self.topic = wire.topic_for(TESTBED, 1, wire.Channel.LATENT)
        self.sub = SessionClient(
            MqttSettings(host=runtime.host, port=port, client_id=CENTRAL_USER,
                         username=CENTRAL_USER, password=runtime.password(CENTRAL_USER)),
            subscriptions=central_subscriptions(TESTBED),
            on_message=self.receiver.on_message).connect()
        self.device = SessionClient(
            MqttSettings(host=runtime.host, port=port, client_id="device-1",
                         username="device-1", password=runtime.password("device-1"),
                         keep_until_confirmed=True),
            status_topic=wire.topic_for(TESTBED, 1, wire.Channel.STATUS)).connect()

    @staticmethod
    def _plain_client(name: str, port: int) -> paho.Client:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"plain-{name}",
                             protocol=paho.MQTTv5)
        connected = threading.Event()
        client.on_connect = lambda *_: connected.set()
        deadline = time.monotonic() + 10
        while True:  # the broker may not listen yet
            try:
                client.connect("127.0.0.1", port)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.loop_start()
        if not connected.wait(10):
            raise RuntimeError(f"plain {name}: no CONNACK")
        return client

    def publish(self, i: int) -> None:
        if self.broker is None:
            self.pub.publish(self.topic, _payload(i), qos=1)
        else:
            self.device.publish(self.topic, _payload(i), key=("latent", i))

    def close(self) -> None:
        if self.broker is None:
            for c in (self.pub, self.sub):
                c.disconnect()
                c.loop_stop()
            self.proc.terminate()
            self.proc.wait(10)
        else:
            self.device.close()
            self.sub.close()
            self.broker.stop()


def latency_ms(setup: _Setup, n: int, rate_hz: float) -> tuple[float, float]:
    setup.receiver.reset(n)
    period_s, start = 1.0 / rate_hz, time.perf_counter()
    for i in range(n):
        if (wait := start + i * period_s - time.perf_counter()) > 0:
            time.sleep(wait)
        setup.publish(i)
    if not setup.receiver.done.wait(30):
        raise RuntimeError(f"{setup.name}: {setup.receiver.count} of {n} delivered")
    ms = np.asarray(setup.receiver.latency_s) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def burst_per_s(setup: _Setup, n: int) -> float:
    setup.receiver.reset(n)
    start = time.perf_counter_ns()
    for i in range(n):
        setup.publish(i)
    if not setup.receiver.done.wait(120):
        raise RuntimeError(f"{setup.name}: {setup.receiver.count} of {n} delivered")
    return n / ((setup.receiver.last_ns - start) / 1e9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--paced", type=int, default=300, help="messages per latency run")
    ap.add_argument("--rate-hz", type=float, default=100.0)
    ap.add_argument("--burst", type=int, default=800,
                    help="messages per burst (plain Mosquitto queues at most 1000)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    names = ("plain", "save_on_change", "periodic_save")
    runs: dict[str, dict[str, list[float]]] = {
        n: {"p50_ms": [], "p99_ms": [], "burst_per_s": []} for n in names}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="bench-messaging-") as tmp:
        setups = [_Setup(n, Path(tmp)) for n in names]
        try:
            for _ in range(args.rounds):
                for s in setups:
                    p50, p99 = latency_ms(s, args.paced, args.rate_hz)
                    runs[s.name]["p50_ms"].append(p50)
                    runs[s.name]["p99_ms"].append(p99)
                for s in setups:
                    runs[s.name]["burst_per_s"].append(burst_per_s(s, args.burst))
                load.append(os.getloadavg()[0])
        finally:
            for s in setups:
                s.close()
    med = {n: {k: statistics.median(v) for k, v in r.items()} for n, r in runs.items()}
    ratios = {n: {"p50": med[n]["p50_ms"] / med["plain"]["p50_ms"],
                  "p99": med[n]["p99_ms"] / med["plain"]["p99_ms"],
                  "burst": med[n]["burst_per_s"] / med["plain"]["burst_per_s"]}
              for n in names[1:]}
    result = {"rounds": args.rounds, "payload_bytes": PAYLOAD_BYTES, "paced": args.paced,
              "rate_hz": args.rate_hz, "burst": args.burst, "median": med,
              "ratio_to_plain": ratios, "runs": runs,
              "load_avg_1min": {"min": min(load), "max": max(load)}, "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
