"""MQTT client helpers shared by devices and central (paho-mqtt 2.x, MQTT v5).

Session semantics (docs/wire-format.md): QoS 1, ``clean_start=False`` plus a session expiry so
the broker keeps subscriptions and queued messages across disconnects and broker restarts;
subscriptions are sent again whenever the broker reports no session; a device has a retained
last will "offline" on its status topic and publishes a retained birth "online" on connect.
paho keeps unacknowledged QoS 1 publishes and sends them again (DUP) after a reconnect, as
long as the same ``SessionClient`` object is reused.

Delivery, end to end (docs/wire-format.md, "Delivery"): a PUBACK means the broker has the
message, not that central has it. A device's client runs with ``keep_until_confirmed``: it keeps
every frame the broker acknowledged until central confirms that frame's gather
(:mod:`epic.wire.ack`; the agent passes central's confirmations to ``confirm``). After every
reconnect it publishes again what is acknowledged but unconfirmed, oldest gather first, before
anything published while it was disconnected (that waits in an outbox, in order); paho itself
sends again what was still unacknowledged (DUP). Central drops the copies by their (device,
gather, chunk) key. Memory is bounded by ``max_unconfirmed_bytes``: beyond it the oldest
acknowledged frames are forgotten (counted in ``evicted``).

Without confirmations (``keep_until_confirmed`` False) the client keeps the publishes
acknowledged during the last ``replay_window_s`` and publishes them again after a reconnect:
Mosquitto sends PUBACK before it saves, so a SIGKILL can lose what it acknowledged in its last
event-loop pass. A client that is about to exit calls ``flush`` first: it waits until every
tracked publish is acknowledged and then until a marker published after those
acknowledgements is acknowledged on the same connection; Mosquitto saves its database at the
end of the event-loop pass that acknowledged the publishes, before it reads the marker, so
after ``flush`` a SIGKILL loses none of them (counting PUBACKs is not enough: births, resends
and replays are acknowledged too).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from epic.wire import STATUS_OFFLINE, STATUS_ONLINE, RangeSet

__all__ = ["MqttConnectError", "MqttSettings", "SessionClient"]

log = logging.getLogger(__name__)

_EARLY_ACK_TTL_S = 1.0  # an unmatched PUBACK older than this belongs to an untracked publish
MessageHandler = Callable[[paho.MQTTMessage], None]


class MqttConnectError(ConnectionError):
    """The broker could not be reached, or refused the connection (reason in the message)."""


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker and who we are.

    Attributes:
        host, port: broker address.
        client_id: stable id; the broker keys the persistent session on it. Must equal
            ``username``: broker/mosquitto.conf has ``use_username_as_clientid``, so the
            broker replaces any other id by the username (anonymous clients are refused).
        username, password: credentials from the runtime dir (None: anonymous).
        keepalive_s: MQTT keepalive; the broker fires the last will after 1.5x this.
        session_expiry_s: MQTT v5 session expiry interval (0: session ends on disconnect).
        ca_file: CA certificate for TLS; None for plain TCP.
        max_inflight: unacknowledged QoS 1 publishes in flight at once.
        reconnect_min_s, reconnect_max_s: bounds of paho's reconnect back-off.
        replay_window_s: without ``keep_until_confirmed``, acknowledged publishes younger
            than this are sent again after a reconnect (0 disables; see the module docstring).
        keep_until_confirmed: keep acknowledged publishes that carry a key until ``confirm``
            covers them, and send those again after a reconnect (end-to-end delivery).
        max_unconfirmed_bytes: payload bytes kept for confirmation at most; the oldest
            acknowledged ones are forgotten beyond it.
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
    keep_until_confirmed: bool = False
    max_unconfirmed_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.username is not None and self.client_id != self.username:
            raise ValueError(f"MQTT client id {self.client_id!r} is not the username "
                             f"{self.username!r} (MqttSettings): the broker uses the username "
                             f"as the client id (use_username_as_clientid)")


DeliveryKey = tuple[str, int]
"""What central confirms a publish by: (mode "latent" or "raw", gather id)."""


class _Sent:
    """One tracked QoS 1 publish: paho's handle, what was sent, and when the broker acked it."""

    __slots__ = ("acked_at_s", "info", "key", "payload", "topic")

    def __init__(self, info: paho.MQTTMessageInfo, topic: str, payload: bytes,
                 key: DeliveryKey | None) -> None:
        self.info, self.topic, self.payload, self.key = info, topic, payload, key
        self.acked_at_s: float | None = None  # monotonic time of the PUBACK; None: in flight


class SessionClient:
    """A paho client with a persistent MQTT v5 session, QoS 1, optional will and birth.

    Args:
        settings: broker address, identity and session parameters.
        subscriptions: topic filters to subscribe at QoS 1 whenever no session is present,
            or ``(filter, paho SubscribeOptions)`` pairs (e.g. retain handling).
        on_message: called on paho's network thread for every message; the message is
            acknowledged (PUBACK) after it returns, so a crash inside means redelivery.
        status_topic: if given, a retained last will "offline" is set there and a retained
            "online" is published at QoS 1 on every successful connect.
    """

    def __init__(self, settings: MqttSettings, *,
                 subscriptions: Sequence[str | tuple[str, SubscribeOptions]] = (),
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
        self.replayed = 0  # publishes sent again after reconnects (resends)
        self.evicted = 0  # acknowledged, unconfirmed publishes forgotten (memory bound)
        self.confirmed = 0  # tracked publishes released by ``confirm``
        self._sent: deque[_Sent] = deque()  # tracked publishes, oldest first
        self._sent_lock = threading.Lock()  # never held while calling into paho
        self._in_flight: dict[int, _Sent] = {}  # mid -> tracked publish awaiting PUBACK
        # PUBACKs not matched to a tracked publish: mid -> monotonic time. Its publish may not be
        # tracked yet (paho returned, _track not run); untracked ones (births) age out.
        self._early_acks: dict[int, float] = {}
        self._kept_bytes = 0  # payload bytes of acknowledged tracked publishes
        self._outbox: list[tuple[str, bytes, bool, int, DeliveryKey | None]] = []
        self._outbox_lock = threading.Lock()  # orders publish() against the reconnect
        self._holding = False  # disconnected: publishes wait in the outbox
        self._closing = False
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

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1,
                key: DeliveryKey | None = None) -> paho.MQTTMessageInfo | None:
        """Queue one publish (QoS 1 by default); paho sends it now or after reconnecting.

        ``key``: (mode, gather id) that central confirms it by (``keep_until_confirmed``).
        While disconnected the publish waits in the outbox (returns None) and is handed to paho
        after the reconnect's resends, so the stream stays in order.
        """
        with self._outbox_lock:
            if self._holding:
                self._outbox.append((topic, payload, retain, qos, key))
                return None
            return self._publish_now(self.client, topic, payload, retain, qos, key)

    def _publish_now(self, client: paho.Client, topic: str, payload: bytes, retain: bool,
                     qos: int, key: DeliveryKey | None) -> paho.MQTTMessageInfo:
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if qos > 0 and not retain and (self.settings.keep_until_confirmed
                                       or self.settings.replay_window_s > 0):
            self._track(_Sent(info, topic, payload, key))
        return info

    def _track(self, entry: _Sent) -> None:
        """Remember a publish; forget what no longer needs keeping."""
        now_s = time.monotonic()
        with self._sent_lock:
            self._sent.append(entry)
            if self._early_acks.pop(entry.info.mid, None) is not None:
                self._mark_acked(entry, now_s)
            else:
                self._in_flight[entry.info.mid] = entry
            if self._early_acks:  # mids of untracked publishes (births) age out: paho reuses mids
                self._early_acks = {m: t for m, t in self._early_acks.items()
                                    if now_s - t < _EARLY_ACK_TTL_S}
            if self.settings.keep_until_confirmed:
                self._evict_over_budget()
            else:
                while self._sent and self._sent[0].acked_at_s is not None and (
                        now_s - self._sent[0].acked_at_s > self.settings.replay_window_s):
                    self._sent.popleft()

    def _mark_acked(self, entry: _Sent, now_s: float) -> None:  # holds _sent_lock
        entry.acked_at_s = now_s
        self._kept_bytes += len(entry.payload)

    def _evict_over_budget(self) -> None:  # holds _sent_lock
        """Forget the oldest acknowledged publishes beyond ``max_unconfirmed_bytes``."""
        if self._kept_bytes <= self.settings.max_unconfirmed_bytes:
            return
        kept: deque[_Sent] = deque()
        for entry in self._sent:
            if (entry.acked_at_s is not None
                    and self._kept_bytes > self.settings.max_unconfirmed_bytes):
                self._kept_bytes -= len(entry.payload)
                self.evicted += 1
            else:
                kept.append(entry)
        self._sent = kept
        log.warning("%s: %d unconfirmed publishes forgotten so far (over %d bytes kept)",
                    self.settings.client_id, self.evicted, self.settings.max_unconfirmed_bytes)

    def confirm(self, confirmed: Mapping[str, RangeSet]) -> int:
        """Release tracked publishes whose key's gather central confirmed; return how many.

        ``confirmed``: mode -> gathers central is done with (epic.wire.decode_ack).
        """
        with self._sent_lock:
            kept: deque[_Sent] = deque()
            released = 0
            for entry in self._sent:
                if entry.key is not None and entry.key[1] in confirmed.get(entry.key[0], ()):
                    released += 1
                    if entry.acked_at_s is None:
                        self._in_flight.pop(entry.info.mid, None)
                    else:
                        self._kept_bytes -= len(entry.payload)
                else:
                    kept.append(entry)
            self._sent = kept
            self.confirmed += released
        return released

    def _resend(self, client: paho.Client) -> None:
        """After a reconnect: publish again what the broker acknowledged but central (or, with
        no confirmations, the broker's last save) may lack; oldest first."""
        now_s = time.monotonic()
        with self._sent_lock:
            window = (math.inf if self.settings.keep_until_confirmed
                      else self.settings.replay_window_s)
            again = [e for e in self._sent
                     if e.acked_at_s is not None and now_s - e.acked_at_s <= window]
            self._sent = deque(e for e in self._sent if e.acked_at_s is None)
            self._kept_bytes = 0
        for entry in again:
            self._track(_Sent(client.publish(entry.topic, entry.payload, qos=1), entry.topic,
                              entry.payload, entry.key))
        self.replayed += len(again)
        if again:
            log.info("%s: sent %d acknowledged but unconfirmed publishes again",
                     self.settings.client_id, len(again))

    def unacked(self) -> int:
        """Tracked publishes the broker has not acknowledged yet, plus the outbox.

        Counts only what is tracked (``keep_until_confirmed`` or ``replay_window_s`` > 0).
        """
        with self._sent_lock:
            in_flight = sum(1 for e in self._sent if e.acked_at_s is None)
        return in_flight + len(self._outbox)

    def unconfirmed(self) -> int:
        """Tracked publishes with a key that central has not confirmed (acked or not), plus
        the keyed publishes in the outbox."""
        with self._sent_lock:
            tracked = sum(1 for e in self._sent if e.key is not None)
        return tracked + sum(1 for item in list(self._outbox) if item[4] is not None)

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker has saved every tracked publish; False after ``timeout_s``.

        Done once every tracked publish is acknowledged and then a marker (the retained
        "online" on the status topic) is acknowledged with no reconnect in between (see the
        module docstring); after a reconnect it starts over, once the replayed publishes are
        acknowledged. "Saved" holds for a broker that saves after every change (the
        ``epic.broker.prepare_runtime`` default); one that saves periodically has them on disk
        only after its next save (``devices.agent.DeviceAgent.wait_acked`` waits for it).
        Needs ``status_topic``, and ``keep_until_confirmed`` or ``replay_window_s`` > 0.
        """
        if self.status_topic is None or not (self.settings.keep_until_confirmed
                                             or self.settings.replay_window_s > 0):
            raise ValueError("flush needs a status topic, and keep_until_confirmed or "
                             "replay_window_s > 0")
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
        self._closing = True
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
            client.subscribe([s if isinstance(s, tuple) else (s, 1)
                              for s in self.subscriptions])
        else:
            self._subscribed.set()
        if self.status_topic is not None:
            client.publish(self.status_topic, STATUS_ONLINE, qos=1, retain=True)
        with self._outbox_lock:  # resends first, then what waited in the outbox, in order
            if self.connects > 1:
                self._resend(client)
            for topic, payload, retain, qos, key in self._outbox:
                self._publish_now(client, topic, payload, retain, qos, key)
            self._outbox.clear()
            self._holding = False
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
        with self._outbox_lock:
            self._holding = self.connects > 0 and not self._closing
        log.info("%s disconnected: %s", self.settings.client_id, reason_code)

    def _handle_publish(self, _client: paho.Client, _userdata: object, mid: int,
                        _reason_code: object, _properties: object) -> None:
        with self._sent_lock:
            self.acked += 1
            entry = self._in_flight.pop(mid, None)
            if entry is not None:
                self._mark_acked(entry, time.monotonic())
            elif self.settings.keep_until_confirmed or self.settings.replay_window_s > 0:
                self._early_acks[mid] = time.monotonic()  # tracked once publish returns

    def _handle_message(self, _client: paho.Client, _userdata: object,
                        message: paho.MQTTMessage) -> None:
        if self._on_message is not None:
            self._on_message(message)
