"""The real broker (broker/mosquitto.conf on a free port): delivery, ACL, last will, restarts."""

from __future__ import annotations

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

from epic.broker import BrokerProcess, free_port, prepare_runtime
from epic.mqtt import MqttConnectError, MqttSettings, SessionClient
from epic.wire import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Channel,
    Deduplicator,
    Dtype,
    Frame,
    Kind,
    central_filter,
    check_topic,
    result_topic,
    split_array,
    topic_for,
)

pytestmark = [pytest.mark.integration, requires_mosquitto]
REPO = Path(__file__).resolve().parents[2]


class Inbox:
    """Collects (topic, payload, retain) from a client's network thread."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._cond = threading.Condition()

    def __call__(self, message: object) -> None:
        with self._cond:
            self.messages.append((message.topic, bytes(message.payload), message.retain))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, bool]]], bool],
                 timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self.messages), timeout_s)


def latent_frame(device_id: int, gather_id: int, chunk_index: int = 0,
                 chunk_count: int = 1) -> Frame:
    """A small int8 latent frame with a payload that depends on its key."""
    now_ns = time.time_ns()
    payload = np.full(16, (gather_id * 7 + chunk_index) % 127, np.int8).tobytes()
    return Frame(Kind.LATENT, device_id, gather_id, Dtype.INT8, (16 * chunk_count,), payload,
                 chunk_index, chunk_count, 0.02, 0, now_ns, now_ns, now_ns)


def central(settings_for: Callable[..., MqttSettings], inbox: Inbox, **overrides: object
            ) -> SessionClient:
    return SessionClient(settings_for("central", **overrides),
                         subscriptions=[central_filter(TESTBED)], on_message=inbox)


def test_frame_round_trip_through_broker(broker: BrokerProcess, settings_for) -> None:
    inbox = Inbox()
    receiver = central(settings_for, inbox).connect()
    device = SessionClient(settings_for("device-1")).connect()
    try:
        data = latent_frame(1, 5).encode()
        topic = topic_for(TESTBED, 1, Channel.LATENT)
        device.publish(topic, data).wait_for_publish(5)
        assert inbox.wait_for(lambda m: any(t == topic for t, _, _ in m), 5)
        received = [p for t, p, _ in inbox.messages if t == topic]
        assert received == [data]
        check_topic(Frame.decode(received[0]), topic)
    finally:
        device.close()
        receiver.close()


def test_acl_keeps_each_device_in_its_own_lane(broker: BrokerProcess, settings_for) -> None:
    inbox, device_inbox = Inbox(), Inbox()
    receiver = central(settings_for, inbox).connect()
    intruder = SessionClient(settings_for("device-2"), subscriptions=[f"epic/{TESTBED}/#"],
                             on_message=device_inbox).connect()
    try:
        forged = latent_frame(3, 1).encode()
        for topic in (topic_for(TESTBED, 3, Channel.LATENT),
                      topic_for(TESTBED, 3, Channel.STATUS), result_topic(TESTBED)):
            intruder.publish(topic, forged).wait_for_publish(5)
        own_topic = topic_for(TESTBED, 2, Channel.LATENT)
        intruder.publish(own_topic, latent_frame(2, 1).encode()).wait_for_publish(5)
        receiver.publish(result_topic(TESTBED), b"result").wait_for_publish(5)
        # the control message on its own topic arrives; the broker routes one connection's
        # publishes in order, so a forged one let through would have arrived before it
        assert inbox.wait_for(lambda m: any(t == own_topic for t, _, _ in m), 5)
        assert [t for t, _, _ in inbox.messages if "device-3" in t] == []
        assert device_inbox.messages == []  # a device reads nothing, not even results
    finally:
        intruder.close()
        receiver.close()


@pytest.mark.parametrize("who", ["anonymous", "bad password"])
def test_anonymous_and_wrong_password_are_refused(broker: BrokerProcess, settings_for,
                                                  who: str) -> None:
    settings = (settings_for(None) if who == "anonymous"
                else settings_for("device-1", password="wrong"))
    with pytest.raises(MqttConnectError, match="[Nn]ot authori[sz]ed|[Bb]ad user"):
        SessionClient(settings).connect(timeout_s=5)


def test_last_will_offline_after_kill_9(broker: BrokerProcess, settings_for) -> None:
    keepalive_s = 2
    status = topic_for(TESTBED, 1, Channel.STATUS)
    inbox = Inbox()
    receiver = central(settings_for, inbox).connect()
    device_settings = settings_for("device-1")
    env = {**os.environ, "PYTHONPATH": str(REPO),
           "EPIC_MQTT_PASSWORD": device_settings.password}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "integration" / "will_client.py"),
         device_settings.host, str(device_settings.port), "device-1", status,
         str(keepalive_s)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        assert inbox.wait_for(lambda m: (status, STATUS_ONLINE, False) in m, 5)
        killed = time.monotonic()
        os.kill(proc.pid, signal.SIGKILL)
        assert inbox.wait_for(lambda m: (status, STATUS_OFFLINE, False) in m,
                              keepalive_s * 1.5), inbox.messages
        assert time.monotonic() - killed <= keepalive_s * 1.5
    finally:
        proc.kill()
        proc.wait(5)
        receiver.close()
    # the retained status is "offline" for anyone who subscribes later
    late = Inbox()
    watcher = SessionClient(settings_for("observer"),
                            subscriptions=[status], on_message=late).connect()
    try:
        assert late.wait_for(lambda m: (status, STATUS_OFFLINE, True) in m, 5)
    finally:
        watcher.close()


@pytest.mark.parametrize("central_online", [True, False], ids=["central-online",
                                                           "central-offline"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_broker_restart_mid_stream_loses_nothing(broker: BrokerProcess, settings_for,
                                                 sig: int, central_online: bool) -> None:
    """Two broker restarts while 600 frames stream at QoS 1: each arrives once after dedup.

    central-offline: central subscribed, then left, so frames sit queued in its persistent
    session when the broker dies; this is what a SIGKILL loses without the client's replay
    window (Mosquitto acks before it autosaves; see epic.mqtt).
    """
    n_gathers, chunks, restarts = 200, 3, 2
    lock = threading.Lock()
    keys: list[tuple[int, int, int]] = []
    dedup = Deduplicator()
    unique: set[tuple[int, int, int]] = set()

    def on_frame(message: object) -> None:
        frame = Frame.decode(message.payload)
        with lock:
            keys.append(frame.key)
            if dedup.is_new(frame):
                unique.add(frame.key)

    def make_central() -> SessionClient:
        return SessionClient(settings_for("central"), subscriptions=[
            central_filter(TESTBED, Channel.LATENT)], on_message=on_frame)

    receiver = make_central().connect()
    if not central_online:
        receiver.close()
    device = SessionClient(settings_for("device-1")).connect()

    def restart_twice() -> None:
        for _ in range(restarts):
            broker.restart(sig)
            device.wait_connected(10)
            time.sleep(0.05)

    restarter = threading.Thread(target=restart_twice)
    topic = topic_for(TESTBED, 1, Channel.LATENT)
    expected = {(1, g, c) for g in range(n_gathers) for c in range(chunks)}
    try:
        for gather in range(n_gathers):
            if gather == n_gathers // 4:  # while frames are in flight and queued
                restarter.start()
            for chunk in range(chunks):
                device.publish(topic, latent_frame(1, gather, chunk, chunks).encode())
            time.sleep(0.002)
        restarter.join(30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and device.acked < len(expected):
            time.sleep(0.05)
        if not central_online:
            receiver = make_central().connect()
        while time.monotonic() < deadline and len(unique) < len(expected):
            time.sleep(0.05)
        with lock:
            missing = sorted(expected - unique)
            duplicates = len(keys) - len(unique)
        assert missing == [], f"{len(missing)} frames lost after {signal.Signals(sig).name}: " \
            f"{missing[:10]}; broker log:\n{broker.log_tail()}"
        assert unique == expected
        assert device.connects >= 2, "the broker did not restart mid-stream"
        assert device.acked >= len(expected)
        logging.getLogger(__name__).info("%s: %d received, %d duplicates, %d replayed",
                                         signal.Signals(sig).name, len(keys), duplicates,
                                         device.replayed)
    finally:
        device.close()
        receiver.close()


def test_flush_waits_for_every_publish_and_a_saved_marker(broker: BrokerProcess,
                                                         settings_for) -> None:
    """flush (what an agent does before it exits) is False while a frame is unacknowledged,
    even though the PUBACK count (births included) exceeds the frames published."""
    device = SessionClient(settings_for("device-1"), status_topic=topic_for(
        TESTBED, 1, Channel.STATUS)).connect()
    topic = topic_for(TESTBED, 1, Channel.LATENT)
    try:
        for k in range(3):
            device.publish(topic, b"frame %d" % k)
        assert device.flush(10.0) and device.unacked() == 0
        broker.stop(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while device.is_connected:  # paho notices the closed socket
            assert time.monotonic() < deadline
            time.sleep(0.01)
        device.publish(topic, b"published while the broker is down")
        assert device.unacked() == 1 and device.acked > 4  # 3 frames, 1 birth, 1 marker
        assert not device.flush(0.5)
        broker.start()
        assert device.flush(15.0) and device.unacked() == 0
        assert device.connects == 2 and device.replayed == 3  # the recent frames, again
    finally:
        device.close()


@pytest.mark.benchmark
def test_benchmark_codec_rate_and_loopback_latency(broker: BrokerProcess, settings_for) -> None:
    """Frames/s through encode+decode, and publish -> received+decoded latency p50/p99."""
    logger = logging.getLogger(__name__)
    rng = np.random.default_rng(0)
    latent = rng.integers(-128, 128, 1024, dtype=np.int8)
    raw = rng.standard_normal((5, 1000, 14)).astype(np.float32)
    cases = {"latent 1 KiB int8": [Frame(Kind.LATENT, 1, 0, Dtype.INT8, latent.shape,
                                         latent.tobytes(), scale=0.02)],
             "raw gather 5x56 kB": split_array(Kind.RAW_CHUNK, 1, 0, raw)}
    for name, frames in cases.items():
        repeats = 20_000 // len(frames) if "latent" in name else 400
        start = time.perf_counter()
        for _ in range(repeats):
            for frame in frames:
                Frame.decode(frame.encode())
        rate = repeats * len(frames) / (time.perf_counter() - start)
        logger.info("codec %s: %.0f frames/s encode+decode", name, rate)
        assert rate > 100

    rate_hz, n_frames, n_burst = 100, 1000, 1000
    latencies_ns: list[int] = []
    received = threading.Semaphore(0)

    def on_frame(message: object) -> None:
        frame = Frame.decode(message.payload)
        latencies_ns.append(time.time_ns() - frame.publish_ns)
        received.release()

    receiver = SessionClient(settings_for("central"), subscriptions=[
        central_filter(TESTBED, Channel.LATENT)], on_message=on_frame).connect()
    device = SessionClient(settings_for("device-1")).connect()
    topic = topic_for(TESTBED, 1, Channel.LATENT)

    def send(gather: int) -> None:
        now_ns = time.time_ns()
        device.publish(topic, Frame(Kind.LATENT, 1, gather, Dtype.INT8, latent.shape,
                                    latent.tobytes(), scale=0.02, capture_ns=now_ns,
                                    encode_end_ns=now_ns, publish_ns=now_ns).encode())

    try:
        for gather in range(n_frames):
            send(gather)
            time.sleep(1 / rate_hz)
        assert all(received.acquire(timeout=20) for _ in range(n_frames))
        p50, p95, p99 = np.percentile(np.array(latencies_ns) / 1e6, [50, 95, 99])
        logger.info("loopback publish->decoded latency, %d frames at %d Hz: p50 %.3f ms, "
                    "p95 %.3f ms, p99 %.3f ms", n_frames, rate_hz, p50, p95, p99)
        start = time.perf_counter()
        for gather in range(n_frames, n_frames + n_burst):
            send(gather)
        assert all(received.acquire(timeout=60) for _ in range(n_burst))
        logger.info("broker throughput, burst of %d latent frames: %.0f frames/s",
                    n_burst, n_burst / (time.perf_counter() - start))
    finally:
        device.close()
        receiver.close()
    assert p50 < 50


def test_tls_listener_with_self_signed_ca(tmp_path: Path) -> None:
    runtime = prepare_runtime(tmp_path / "tls", testbed=TESTBED, device_ids=[1],
                              port=free_port(), tls=True)
    assert runtime.ca_file is not None and runtime.ca_file.is_file()
    assert (runtime.rundir / "credentials.json").stat().st_mode & 0o777 == 0o600
    inbox = Inbox()
    with BrokerProcess(runtime):
        receiver = SessionClient(MqttSettings(runtime.host, runtime.port, "central", "central",
                                              runtime.password("central"),
                                              ca_file=runtime.ca_file),
                                 subscriptions=[central_filter(TESTBED)], on_message=inbox)
        device = SessionClient(MqttSettings(runtime.host, runtime.port, "device-1", "device-1",
                                            runtime.password("device-1"),
                                            ca_file=runtime.ca_file))
        receiver.connect()
        device.connect()
        try:
            data = latent_frame(1, 3).encode()
            device.publish(topic_for(TESTBED, 1, Channel.LATENT), data).wait_for_publish(5)
            assert inbox.wait_for(lambda m: any(p == data for _, p, _ in m), 5)
        finally:
            device.close()
            receiver.close()
        with pytest.raises(MqttConnectError):  # plain TCP is not accepted on a TLS listener
            SessionClient(MqttSettings(runtime.host, runtime.port, "central", "central",
                                       runtime.password("central"))).connect(timeout_s=1)


def test_save_interval_sets_the_persistence_mode(tmp_path: Path) -> None:
    """Default: the broker saves after every change; ``save_interval_s`` N: every N s (the
    testbed's), recorded in credentials.json for the agents; anything else is refused."""
    from epic.broker import load_runtime
    from epic.errors import InputError

    def conf_lines(run: Path) -> set[str]:
        return set((run / "mosquitto.conf").read_text().splitlines())

    default = prepare_runtime(tmp_path / "a", testbed=TESTBED, device_ids=[1], port=free_port())
    assert {"autosave_on_changes true", "autosave_interval 1"} <= conf_lines(default.rundir)
    assert load_runtime(default.rundir).save_interval_s is None
    periodic = prepare_runtime(tmp_path / "b", testbed=TESTBED, device_ids=[1],
                               port=free_port(), save_interval_s=5)
    assert {"autosave_on_changes false", "autosave_interval 5"} <= conf_lines(periodic.rundir)
    assert load_runtime(periodic.rundir).save_interval_s == 5
    for bad in (0, 1.5, "5"):
        with pytest.raises(InputError, match="save_interval_s must be None or an int >= 1"):
            prepare_runtime(tmp_path / "c", testbed=TESTBED, device_ids=[1], port=free_port(),
                            save_interval_s=bad)
    started = BrokerProcess(periodic).start()  # mosquitto accepts the periodic config
    assert started.running
    started.stop()
