"""Test helper: publish frames as a device (its own credentials), and make realistic latents.

``DevicePublisher`` is a connected ``SessionClient`` for ``device-<id>``; ``publish_all`` sends
many payloads at QoS 1 as fast as paho's in-flight window allows and waits for every PUBACK.
``encode_latents`` runs a (seeded) distributed model's encoder on a normalised gather and
quantises each device's ``(14, 64)`` tokens to int8 with its own scale, as a device does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable

import numpy as np
import torch

from epic.broker import BrokerRuntime
from epic.mqtt import MqttSettings, SessionClient
from epic.wire import Channel, Dtype, Frame, Kind, split_array, topic_for

__all__ = ["DevicePublisher", "encode_latents", "quantize_int8", "raw_frames"]


def quantize_int8(tokens: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Symmetric int8: ``(q int8 same shape, scale, zero_point=0)`` with |q| <= 127."""
    scale = float(np.abs(tokens).max()) / 127.0 or 1.0
    q = np.clip(np.round(tokens / scale), -127, 127).astype(np.int8)
    return q, scale, 0


def encode_latents(model: torch.nn.Module, gather: np.ndarray, gather_id: int,
                   device_ids: Iterable[int] = (1, 2, 3, 4, 5)) -> dict[int, Frame]:
    """``gather`` (5, 1000, 70) normalised -> {device id: int8 LATENT frame (14, 64)}.

    Device ``i`` (1-based, in ``device_ids`` order) owns model slot ``i - 1``.
    """
    with torch.inference_mode():
        tokens = model.encode(torch.from_numpy(gather[None]).float())[0].numpy()  # (5, 14, 64)
    frames = {}
    for slot, device_id in enumerate(device_ids):
        q, scale, zero_point = quantize_int8(tokens[slot])
        now_ns = time.time_ns()
        frames[device_id] = Frame(Kind.LATENT, device_id, gather_id, Dtype.INT8, q.shape,
                                  q.tobytes(), scale=scale, zero_point=zero_point,
                                  capture_ns=now_ns, encode_end_ns=now_ns, publish_ns=now_ns)
    return frames


def raw_frames(raw: np.ndarray, gather_id: int, device_id: int) -> list[Frame]:
    """One device's ``(5, 1000, 14)`` float32 raw traces as RAW_CHUNK frames (5 chunks)."""
    now_ns = time.time_ns()
    return split_array(Kind.RAW_CHUNK, device_id, gather_id, raw.astype(np.float32),
                       capture_ns=now_ns, encode_end_ns=now_ns, publish_ns=now_ns)


class DevicePublisher:
    """A connected device client (``device-<id>``, the device's own password)."""

    def __init__(self, runtime: BrokerRuntime, device_id: int, max_inflight: int = 100,
                 **settings: object) -> None:
        name = f"device-{device_id}"
        self.runtime = runtime
        self.device_id = device_id
        self.client = SessionClient(MqttSettings(
            runtime.host, runtime.port, name, name, runtime.password(name),
            ca_file=runtime.ca_file, max_inflight=max_inflight, **settings)).connect()

    def topic(self, channel: Channel = Channel.LATENT) -> str:
        """This device's topic on ``channel``."""
        return topic_for(self.runtime.testbed, self.device_id, channel)

    def send(self, frame: Frame, channel: Channel | None = None, restamp: bool = True) -> None:
        """Publish one frame on its channel (or ``channel``), publish_ns set to now."""
        if restamp:
            now_ns = time.time_ns()
            frame = dataclasses.replace(frame, publish_ns=max(now_ns, frame.encode_end_ns))
        channel = channel or (Channel.LATENT if frame.kind is Kind.LATENT else Channel.RAW)
        self.client.publish(self.topic(channel), frame.encode())

    def publish_all(self, items: Iterable[tuple[str, bytes, int]],
                    timeout_s: float = 60.0) -> int:
        """Publish every (topic, payload, qos); wait until each is acknowledged (QoS 1) or
        written to the socket (QoS 0); return the count."""
        start_acked = self.client.acked
        count = 0
        for topic, payload, qos in items:
            self.client.publish(topic, payload, qos=qos)
            count += 1
        deadline = time.monotonic() + timeout_s
        while self.client.acked - start_acked < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.client.acked - start_acked} of {count} publishes "
                                   f"acknowledged in {timeout_s} s")
            time.sleep(0.01)
        return count

    def flush(self, timeout_s: float = 30.0) -> None:
        """Wait until every frame given to ``send`` is acknowledged by the broker."""
        deadline = time.monotonic() + timeout_s
        # the client tracks every QoS 1 publish, also those waiting while disconnected
        while self.client.unacked():
            if time.monotonic() > deadline:
                raise TimeoutError(f"device-{self.device_id}: {self.client.unacked()} "
                                   f"publishes unacknowledged after {timeout_s} s")
            time.sleep(0.01)

    def close(self) -> None:
        """Flush what ``send`` queued, then disconnect (status "offline")."""
        self.flush()
        self.client.close()
