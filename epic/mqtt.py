"""MQTT client helpers shared by devices and central (paho-mqtt 2.x, MQTT v5).

Session semantics (docs/wire-format.md): QoS 1, ``clean_start=False`` plus a session expiry so
the broker keeps subscriptions and queued messages across disconnects and broker restarts;
subscriptions are sent again whenever the broker reports no session; a device has a retained
last will "offline" on its status topic and publishes a retained birth "online" on connect.
paho keeps unacknowledged QoS 1 publishes and sends them again (DUP) after a reconnect, as
long as the same ``SessionClient`` object is reused.

Broker SIGKILL: Mosquitto keeps only what it last saved. broker/mosquitto.conf saves after
every change, but Mosquitto sends PUBACK before that save, so a QoS 1 message acknowledged in
the broker's last event-loop pass before a SIGKILL is lost if it was still only queued
(subscriber offline or its in-flight window full). To close that window, ``SessionClient``
keeps the non-retained QoS 1 publishes acknowledged during the last ``replay_window_s``
(default 2 s) and publishes them again after every reconnect; receivers drop the copies by
their (device, gather, chunk) key. A client that is about to exit calls ``flush`` first: it
waits until every tracked publish is acknowledged and then until a marker published after those
acknowledgements is acknowledged on the same connection; Mosquitto saves its database at the
end of the event-loop pass that acknowledged the publishes, before it reads the marker, so
after ``flush`` a SIGKILL loses none of them (counting PUBACKs is not enough: births, resends
and replays are acknowledged too, and a client that exits before its replay window has passed
cannot replay anything).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from epic.wire import STATUS_OFFLINE, STATUS_ONLINE

__all__ = ["MqttConnectError", "MqttSettings", "SessionClient"]

log = logging.getLogger(__name__)

MessageHandler = Callable[[paho.MQTTMessage], None]


class MqttConnectError(ConnectionError):
    """The broker could not be reached, or refused the connection (reason in the message)."""


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker and who we are.

    Attributes:
        host, port: broker address.
        client_id: stable id; the broker keys the persistent session on it.
        username, password: credentials from the runtime dir (None: anonymous).
        keepalive_s: MQTT keepalive; the broker fires the last will after 1.5x this.
        session_expiry_s: MQTT v5 session expiry interval (0: session ends on disconnect).
        ca_file: CA certificate for TLS; None for plain TCP.
        max_inflight: unacknowledged QoS 1 publishes in flight at once.
        reconnect_min_s, reconnect_max_s: bounds of paho's reconnect back-off.
        replay_window_s: acknowledged publishes younger than this are sent again after a
            reconnect (0 disables; see the module docstring).
    """

    host: str
    port: int
    client_id: str
    username: str | None = None
    password: str | None = None
    keepalive_s: int = 10
    session_expiry_s: int = 3600
    ca_file: Path | None = None
    max_inflight: int = 20
    reconnect_min_s: float = 0.25
    reconnect_max_s: float = 2.0
    replay_window_s: float = 2.0


class SessionClient:
    """A paho client with a persistent MQTT v5 session, QoS 1, optional will and birth.

    Args:
        settings: broker address, identity and session parameters.
        subscriptions: topic filters to subscribe at QoS 1 whenever no session is present.
        on_message: called on paho's network thread for every message; the message is
            acknowledged (PUBACK) after it returns, so a crash inside means redelivery.
        status_topic: if given, a retained last will "offline" is set there and a retained
            "online" is published at QoS 1 on every successful connect.
    """

    def __init__(self, settings: MqttSettings, *, subscriptions: Sequence[str] = (),
                 on_message: MessageHandler | None = None,
                 status_topic: str | None = None) -> None:
        self.settings = settings
        self.subscriptions = tuple(subscriptions)
        self.status_topic = status_topic
        self._on_message = on_message
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._refused: str | None = None
        self.connects = 0
        self.session_present: bool | None = None
        self.replayed = 0
        # [info, topic, payload, acked_at_s]: non-retained QoS 1 publishes, oldest first
        self._sent: deque[list] = deque()
        self._sent_lock = threading.Lock()
        self._acked_mids: set[int] = set()  # PUBACKs not yet matched to a tracked publish
        self.acked = 0  # PUBACKs received (all publishes)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=settings.client_id,
                             protocol=paho.MQTTv5)
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.ca_file is not None:
            client.tls_set(ca_certs=str(settings.ca_file))
        if status_topic is not None:
            client.will_set(status_topic, STATUS_OFFLINE, qos=1, retain=True)
        client.max_inflight_messages_set(settings.max_inflight)
        client.max_queued_messages_set(0)  # unlimited local queue while disconnected
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)  # type: ignore[arg-type]
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        self.client = client

    def connect(self, timeout_s: float = 10.0) -> SessionClient:
        """Connect (clean_start=False), start the network thread, wait for CONNACK.

        Raise MqttConnectError if the broker refuses (e.g. not authorised) or does not
        answer within ``timeout_s``.
        """
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry_s
        self.client.connect_async(self.settings.host, self.settings.port,
                                  keepalive=self.settings.keepalive_s, clean_start=False,
                                  properties=props)
        self.client.loop_start()
        if not self._connected.wait(timeout_s) or self._refused:
            self.client.loop_stop()
            reason = self._refused or f"no CONNACK within {timeout_s} s"
            raise MqttConnectError(f"MQTT connect to {self.settings.host}:{self.settings.port} "
                                   f"as {self.settings.username!r} failed: {reason}")
        if self.subscriptions and not self._subscribed.wait(timeout_s):
            raise MqttConnectError(f"no SUBACK for {self.subscriptions} within {timeout_s} s")
        return self

    def publish(self, topic: str, payload: bytes, *, retain: bool = False,
                qos: int = 1) -> paho.MQTTMessageInfo:
        """Queue one publish (QoS 1 by default); paho sends it now or after reconnecting."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 and not retain and self.settings.replay_window_s > 0:
            self._track(info, topic, payload)
        return info

    def _track(self, info: paho.MQTTMessageInfo, topic: str, payload: bytes) -> None:
        """Remember a publish; forget acknowledged ones older than the replay window."""
        now_s = time.monotonic()
        with self._sent_lock:
            self._sent.append([info, topic, payload, None])
            for entry in self._sent:  # stamp acks in order, stop at the first unacked
                if entry[3] is None:
                    if entry[0].mid not in self._acked_mids:
                        break
                    self._acked_mids.discard(entry[0].mid)
                    entry[3] = now_s
            while self._sent and self._sent[0][3] is not None and (
                    now_s - self._sent[0][3] > self.settings.replay_window_s):
                self._sent.popleft()

    def _replay(self, client: paho.Client) -> None:
        """Publish again what the broker acknowledged recently (it may have lost it)."""
        with self._sent_lock:
            done = [e[3] is not None or e[0].mid in self._acked_mids for e in self._sent]
            acked = [entry for entry, ok in zip(self._sent, done, strict=True) if ok]
            self._sent = deque(e for e, ok in zip(self._sent, done, strict=True) if not ok)
            self._acked_mids.clear()
        for _info, topic, payload, _ in acked:
            self._track(client.publish(topic, payload, qos=1), topic, payload)
        self.replayed += len(acked)
        if acked:
            log.info("%s: replayed %d recently acknowledged publishes",
                     self.settings.client_id, len(acked))

    def unacked(self) -> int:
        """Tracked publishes (QoS 1, not retained) the broker has not acknowledged yet.

        Counts only with ``replay_window_s`` > 0 (otherwise nothing is tracked).
        """
        with self._sent_lock:
            return sum(1 for e in self._sent if e[3] is None and e[0].mid not in self._acked_mids)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has saved every tracked publish; False after ``timeout_s``.

        Done once every tracked publish is acknowledged and then a marker (the retained
        "online" on the status topic) is acknowledged with no reconnect in between (see the
        module docstring); after a reconnect it starts over, once the replayed publishes are
        acknowledged. Needs ``status_topic`` and ``replay_window_s`` > 0.
        """
        if self.status_topic is None or self.settings.replay_window_s <= 0:
            raise ValueError("flush needs a status topic and replay_window_s > 0")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            connects = self.connects
            if self.is_connected and self.unacked() == 0:
                marker = self.client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
                while time.monotonic() < deadline and self.connects == connects:
                    try:
                        if marker.is_published():
                            return self.connects == connects and self.unacked() == 0
                    except RuntimeError:  # queued while disconnected: sent after reconnecting
                        break
                    time.sleep(0.005)
            time.sleep(0.02)
        return False

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected (again) within ``timeout_s``."""
        return self._connected.wait(timeout_s)

    @property
    def is_connected(self) -> bool:
        """Whether paho currently has a connection."""
        return self.client.is_connected()

    def close(self, *, send_offline: bool = True) -> None:
        """Publish "offline" (if a status topic is set), DISCONNECT, stop the network thread."""
        if send_offline and self.status_topic is not None and self.client.is_connected():
            self.client.publish(self.status_topic, STATUS_OFFLINE, qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def _handle_connect(self, client: paho.Client, _userdata: object,
                        flags: paho.ConnectFlags, reason_code: object,
                        _properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            self._refused = str(reason_code)
            log.warning("broker refused %s: %s", self.settings.client_id, reason_code)
            client.disconnect()
            self._connected.set()
            return
        self.connects += 1
        self.session_present = bool(flags.session_present)
        log.info("%s connected (session present: %s)", self.settings.client_id,
                 flags.session_present)
        if self.subscriptions and not flags.session_present:
            client.subscribe([(topic, 1) for topic in self.subscriptions])
        else:
            self._subscribed.set()
        if self.status_topic is not None:
            client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        if self.connects > 1:
            self._replay(client)
        self._connected.set()

    def _handle_subscribe(self, _client: paho.Client, _userdata: object, _mid: int,
                          reason_codes: list, _properties: object) -> None:
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            log.error("%s: subscription refused: %s", self.settings.client_id, failed)
        self._subscribed.set()

    def _handle_disconnect(self, _client: paho.Client, _userdata: object, _flags: object,
                           reason_code: object, _properties: object) -> None:
        self._connected.clear()
        log.info("%s disconnected: %s", self.settings.client_id, reason_code)

    def _handle_publish(self, _client: paho.Client, _userdata: object, mid: int,
                        _reason_code: object, _properties: object) -> None:
        with self._sent_lock:  # never held while calling into paho
            self.acked += 1
            if self.settings.replay_window_s > 0:
                self._acked_mids.add(mid)

    def _handle_message(self, _client: paho.Client, _userdata: object,
                        message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)
