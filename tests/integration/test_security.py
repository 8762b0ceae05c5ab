"""What the real broker (broker/mosquitto.conf) enforces against clients that hold valid
credentials: session take-over, retained frames, the observer's rights, the queue bound.

docs/wire-format.md ("Security") lists these rules; each test here failed before its rule.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from conftest import DEVICE_IDS, TESTBED, requires_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from test_broker import Inbox, latent_frame

from epic.broker import (
    DEFAULT_CONF_TEMPLATE,
    OBSERVER_USER,
    BrokerProcess,
    BrokerRuntime,
    central_subscriptions,
    free_port,
    prepare_runtime,
)
from epic.mqtt import MqttSettings, SessionClient
from epic.wire import (
    DEFAULT_CHUNK_PAYLOAD_BYTES,
    HEADER_BYTES,
    MAX_FRAME_BYTES,
    STATUS_ONLINE,
    Channel,
    Frame,
    central_filter,
    result_topic,
    topic_for,
)

pytestmark = [pytest.mark.integration, requires_mosquitto]


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``condition`` every 10 ms; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


def acked(info: paho.MQTTMessageInfo) -> None:
    """Wait (10 s at most) for the PUBACK of one publish."""
    info.wait_for_publish(10)
    assert info.is_published(), f"no PUBACK for message {info.mid}"


class Hijacker(threading.Thread):
    """Connects again and again as ``username`` under someone else's ``client_id``.

    A plain paho client (not SessionClient, which refuses an id that is not its username),
    MQTT v5 with clean_start=False and a session expiry, as a client resuming the session
    of ``client_id`` would. Each round waits for the CONNACK (no fixed sleep), then leaves.
    """

    def __init__(self, runtime: BrokerRuntime, username: str, client_id: str) -> None:
        super().__init__(daemon=True, name=f"hijack-{client_id}")
        self.runtime, self.username, self.client_id = runtime, username, client_id
        self.stop = threading.Event()
        self.accepted = 0  # CONNACKs with success
        self.refused = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self._round()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _round(self) -> None:
        answer: list[bool] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=paho.MQTTv5)
        client.username_pw_set(self.username, self.runtime.password(self.username))
        client.on_connect = lambda _c, _u, _f, code, _p: answer.append(not code.is_failure)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        client.connect(self.runtime.host, self.runtime.port, keepalive=10, clean_start=False,
                       properties=props)
        deadline = time.monotonic() + 5
        while not answer and time.monotonic() < deadline:
            client.loop(0.05)
        if answer:
            self.accepted += answer[0]
            self.refused += not answer[0]
        client.disconnect()
        client.loop(0.05)


def test_device_credentials_cannot_take_over_another_clients_session(
        broker: BrokerProcess, broker_runtime: BrokerRuntime, settings_for) -> None:
    """device-1's password under the client ids "central" and "device-2", reconnecting in a
    loop while device-2 publishes 50 QoS 1 latents: central and device-2 keep their one
    connection, and central receives all 50 (before the fix: 13 of 50, 36 connects)."""
    n_frames = 50
    inbox = Inbox()
    central = SessionClient(settings_for("central"), on_message=inbox,
                            subscriptions=[central_filter(TESTBED, Channel.LATENT)]).connect()
    device = SessionClient(settings_for("device-2")).connect()
    hijackers = [Hijacker(broker_runtime, "device-1", "central"),
                 Hijacker(broker_runtime, "device-1", "device-2")]
    topic = topic_for(TESTBED, 2, Channel.LATENT)
    try:
        for hijacker in hijackers:
            hijacker.start()
        wait_until(lambda: all(h.accepted + h.refused >= 2 for h in hijackers), 20,
                   "two connect attempts by each hijacker")
        for gather in range(n_frames):  # one at a time, so the hijackers interleave
            device.publish(topic, latent_frame(2, gather).encode())
            wait_until(lambda g=gather: device.acked > g, 20, f"the PUBACK of frame {gather}")
        # central's share arrives within a few seconds, or is lost (asserted below)
        deadline = time.monotonic() + 10
        while (len({p for t, p, _ in inbox.messages if t == topic}) < n_frames
               and time.monotonic() < deadline):
            time.sleep(0.01)
    finally:
        for hijacker in hijackers:
            hijacker.stop.set()
        for hijacker in hijackers:
            hijacker.join(10)
        device.close()
        central.close()
    assert all(h.error is None for h in hijackers), [h.error for h in hijackers]
    assert all(h.accepted + h.refused >= 2 for h in hijackers)
    gathers = sorted({Frame.decode(p).gather_id for t, p, _ in inbox.messages if t == topic})
    assert (central.connects, device.connects) == (1, 1), \
        f"central connected {central.connects} times, device-2 {device.connects} times, " \
        f"central received {len(gathers)} of {n_frames} frames"
    assert gathers == list(range(n_frames))
    log_text = broker.log_path.read_text(errors="replace")
    assert not re.search(r" as (central|device-2) \([^)]*u'device-1'\)", log_text), \
        "the broker let device-1 use another client's id"


def test_retained_frame_never_reaches_a_new_central_subscription(
        broker: BrokerProcess, settings_for) -> None:
    """A device may set the retain flag on its own latent and raw topics (the ACL allows the
    write), but central subscribes to frames with retain handling 2: a new subscription gets
    the retained status, never a stored frame; live frames still arrive."""
    status = topic_for(TESTBED, 1, Channel.STATUS)
    latent, raw = topic_for(TESTBED, 1, Channel.LATENT), topic_for(TESTBED, 1, Channel.RAW)
    device = SessionClient(settings_for("device-1"), status_topic=status).connect()
    inbox = Inbox()
    central = SessionClient(settings_for("central"), subscriptions=central_subscriptions(TESTBED),
                            on_message=inbox)
    try:
        stale = latent_frame(1, 7).encode()
        for topic in (latent, raw):
            acked(device.publish(topic, stale, retain=True))
        central.connect()
        # the retained status comes after any retained frame (one SUBSCRIBE, filters in order)
        assert inbox.wait_for(lambda m: (status, STATUS_ONLINE, True) in m, 10), inbox.messages
        live = latent_frame(1, 8).encode()
        acked(device.publish(latent, live))
        assert inbox.wait_for(lambda m: any(p == live for _, p, _ in m), 10)
    finally:
        device.close()
        central.close()
    frames = [(t, p, r) for t, p, r in inbox.messages if t in (latent, raw)]
    assert frames == [(latent, live, False)], "a retained frame reached central's subscription"


def test_observer_watches_beside_central_and_writes_nothing(
        broker: BrokerProcess, settings_for) -> None:
    """The observer user (tools, tests) reads results and status while central stays
    connected (it has a session of its own), reads no frames, and can publish nowhere."""
    inbox, seen = Inbox(), Inbox()
    central = SessionClient(settings_for("central"), subscriptions=central_subscriptions(TESTBED),
                            on_message=inbox).connect()
    observer = SessionClient(settings_for(OBSERVER_USER, session_expiry_s=0),
                             subscriptions=[f"epic/{TESTBED}/#"], on_message=seen).connect()
    status = topic_for(TESTBED, 1, Channel.STATUS)
    device = SessionClient(settings_for("device-1"), status_topic=status).connect()
    forged_topics = [topic_for(TESTBED, 1, Channel.LATENT), result_topic(TESTBED),
                     f"epic/{TESTBED}/{OBSERVER_USER}/latent"]
    try:
        acked(device.publish(topic_for(TESTBED, 1, Channel.LATENT),
                              latent_frame(1, 1).encode()))
        acked(central.publish(result_topic(TESTBED), b"result"))
        forged = latent_frame(1, 99).encode()
        for topic in forged_topics:
            acked(observer.publish(topic, forged))
        # the broker routes a publish before it acknowledges it, so a frame published after
        # those acknowledgements reaches central after anything the forgeries could have
        control = latent_frame(1, 2).encode()
        acked(device.publish(topic_for(TESTBED, 1, Channel.LATENT), control))
        assert inbox.wait_for(lambda m: any(p == control for _, p, _ in m), 10)
        assert seen.wait_for(lambda m: (result_topic(TESTBED), b"result", False) in m
                             and any(t == status for t, _, _ in m), 10), seen.messages
    finally:
        device.close()
        observer.close()
        central.close()
    assert not any(p == forged for _, p, _ in inbox.messages), "the observer could publish"
    assert not any(p == forged for _, p, _ in seen.messages)
    assert not any(t.endswith(("/latent", "/raw")) for t, _, _ in seen.messages), \
        "the observer read frames"
    assert (central.connects, observer.connects) == (1, 1)


def _conf_value(conf: str, key: str) -> int:
    found = re.findall(rf"^{key} (\S+)$", conf, re.M)
    assert len(found) == 1, f"{key} appears {len(found)} times in {DEFAULT_CONF_TEMPLATE}"
    return int(found[0])


def test_broker_limits_admit_every_frame_and_bound_a_flood(broker_runtime: BrokerRuntime
                                                         ) -> None:
    """The shipped limits: a full-size frame (and so a raw chunk) fits one packet, and a
    subscriber's queue is bounded in bytes (0 would let one device fill the broker's memory)
    yet holds a long backlog of raw chunks."""
    conf = broker_runtime.conf_path.read_text()
    raw_chunk_bytes = HEADER_BYTES + DEFAULT_CHUNK_PAYLOAD_BYTES
    assert raw_chunk_bytes <= MAX_FRAME_BYTES < _conf_value(conf, "max_packet_size")
    queued_bytes = _conf_value(conf, "max_queued_bytes")
    assert 0 < queued_bytes <= 1 << 30, f"max_queued_bytes {queued_bytes}"
    assert queued_bytes >= 4000 * raw_chunk_bytes, "less than 800 raw gathers of 5 devices"
    assert 0 < _conf_value(conf, "max_inflight_messages") <= 100


def test_queue_bound_drops_a_flood_for_an_offline_subscriber(tmp_path: Path) -> None:
    """Mosquitto enforces max_queued_bytes as the shipped conf sets it (here lowered to
    256 KiB): 60 frames of 16 KiB for an offline central are not all kept, and central still
    gets what comes after the flood."""
    shipped = DEFAULT_CONF_TEMPLATE.read_text()
    template, count = re.subn(r"^max_queued_bytes \d+$", "max_queued_bytes 262144", shipped,
                              flags=re.M)
    assert count == 1, f"no max_queued_bytes line in {DEFAULT_CONF_TEMPLATE}"
    (tmp_path / "mosquitto.conf").write_text(template)
    runtime = prepare_runtime(tmp_path / "run", testbed=TESTBED, device_ids=DEVICE_IDS,
                              port=free_port(), conf_template=tmp_path / "mosquitto.conf")

    def settings(user: str) -> MqttSettings:
        return MqttSettings(runtime.host, runtime.port, user, user, runtime.password(user))

    topic = topic_for(TESTBED, 1, Channel.LATENT)
    inbox = Inbox()
    n_frames, frame_bytes = 60, 16 * 1024
    with BrokerProcess(runtime):
        central = SessionClient(settings("central"), on_message=inbox,
                                subscriptions=[central_filter(TESTBED)]).connect()
        central.close()  # the session (and its subscription) stays; frames queue for it
        device = SessionClient(settings("device-1")).connect()
        try:
            for k in range(n_frames):
                device.publish(topic, b"%06d" % k + bytes(frame_bytes - 6))
            wait_until(lambda: device.acked >= n_frames, 30, f"{n_frames} PUBACKs")
            central = SessionClient(settings("central"), on_message=inbox,
                                    subscriptions=[central_filter(TESTBED)]).connect()
            assert central.session_present
            acked(device.publish(topic, b"after"))
            assert inbox.wait_for(lambda m: any(p == b"after" for _, p, _ in m), 20)
        finally:
            device.close()
            central.close()
    kept = [p for _, p, _ in inbox.messages if p != b"after"]
    assert 0 < len(kept) < n_frames, f"{len(kept)} of {n_frames} queued frames delivered"
