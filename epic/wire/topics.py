"""Topic names of wire format v1, and the status payloads.

Topics: ``epic/<testbed>/device-<id>/{latent,raw,status}`` and
``epic/<testbed>/central/{result,status}``; a status topic carries `STATUS_ONLINE` (retained) or
`STATUS_OFFLINE` (the will).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from epic.errors import InputError
from epic.wire.frame import _U32_MAX, Frame, FrameError, Kind, Reason

__all__ = [
    "STATUS_OFFLINE",
    "STATUS_ONLINE",
    "Channel",
    "Topic",
    "central_filter",
    "central_status_topic",
    "check_topic",
    "device_name",
    "parse_topic",
    "result_topic",
    "topic_for",
    "validate_name",
]

STATUS_ONLINE = b"online"
STATUS_OFFLINE = b"offline"


class Channel(enum.StrEnum):
    """The last level of a topic."""

    LATENT = "latent"
    RAW = "raw"
    STATUS = "status"
    RESULT = "result"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DEVICE = re.compile(r"device-([1-9][0-9]{0,9})")


def validate_name(name: str, what: str = "testbed") -> str:
    """Return ``name`` if it is a safe topic level (1-64 of [A-Za-z0-9_.-], no / + #)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(f"{what} name {name!r} must be 1-64 characters of [A-Za-z0-9_.-]")
    return name


def device_name(device_id: int) -> str:
    """``device-<id>``: the topic level and MQTT username of device ``device_id`` (>= 1)."""
    if isinstance(device_id, bool) or not isinstance(device_id, int) or not (
            1 <= device_id <= _U32_MAX):
        raise InputError(f"device id {device_id!r} must be an integer in 1..2**32-1")
    return f"device-{device_id}"


def topic_for(testbed: str, device_id: int, channel: Channel) -> str:
    """``epic/<testbed>/device-<id>/<channel>`` for LATENT, RAW or STATUS."""
    if Channel(channel) is Channel.RESULT:
        raise InputError("devices do not publish on the result channel; use result_topic()")
    return f"epic/{validate_name(testbed)}/{device_name(device_id)}/{Channel(channel).value}"


def result_topic(testbed: str) -> str:
    """``epic/<testbed>/central/result``."""
    return f"epic/{validate_name(testbed)}/central/result"


def central_status_topic(testbed: str) -> str:
    """``epic/<testbed>/central/status``: central's retained birth and last will."""
    return f"epic/{validate_name(testbed)}/central/status"


def central_filter(testbed: str, channel: Channel | None = None) -> str:
    """Subscription filter for central: ``epic/<testbed>/+/<channel>`` (all if None)."""
    last = "#" if channel is None else Channel(channel).value
    return f"epic/{validate_name(testbed)}/+/{last}"


@dataclass(frozen=True)
class Topic:
    """A parsed topic; ``device_id`` is None for central's topics (result, status)."""

    testbed: str
    device_id: int | None
    channel: Channel


def parse_topic(topic: str) -> Topic:
    """Parse a topic built by topic_for, result_topic or central_status_topic; raise
    FrameError(BAD_TOPIC) otherwise."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 4 or parts[0] != "epic" or not _NAME.fullmatch(parts[1]):
        raise FrameError(Reason.BAD_TOPIC, f"topic {topic!r} is not epic/<testbed>/<who>/<ch>")
    if parts[2] == "central" and parts[3] in (Channel.RESULT, Channel.STATUS):
        return Topic(parts[1], None, Channel(parts[3]))
    match = _DEVICE.fullmatch(parts[2])
    if not match or int(match[1]) > _U32_MAX or parts[3] not in (
            Channel.LATENT, Channel.RAW, Channel.STATUS):
        raise FrameError(Reason.BAD_TOPIC, f"topic {topic!r}: bad device or channel")
    return Topic(parts[1], int(match[1]), Channel(parts[3]))


def check_topic(frame: Frame, topic: str | Topic) -> None:
    """Raise FrameError(WRONG_TOPIC) unless ``frame`` belongs on ``topic`` (device, kind)."""
    parsed = topic if isinstance(topic, Topic) else parse_topic(topic)
    expected = {Kind.LATENT: Channel.LATENT, Kind.RAW_CHUNK: Channel.RAW,
                Kind.RESULT: Channel.RESULT}[frame.kind]
    device = None if frame.kind is Kind.RESULT else frame.device_id
    if parsed.channel is not expected or parsed.device_id != device:
        raise FrameError(Reason.WRONG_TOPIC, f"{frame.kind.name} frame of device "
                         f"{frame.device_id} on {parsed}")
