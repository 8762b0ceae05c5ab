"""End-to-end confirmations: which gathers central no longer needs from a device.

QoS 1 gets a frame to the broker, not to central. Central therefore confirms, per device, the
gathers it is done with, and a device keeps every frame the broker acknowledged until central
confirms its gather; after a reconnect the device sends again only what is still unconfirmed
(a sequence resume, as SeedLink does it). Central is *done* with a device's part of a gather
once all of that device's chunks are in, or once the gather is closed (decoded, partially or
fully, or dropped): a later copy would be rejected as ``late`` anyway.

The confirmation is cumulative, so a lost or reordered one costs nothing: central publishes, on
``epic/<testbed>/central/ack/device-<id>`` (QoS 1, retained), the JSON object

    {"v": 1, "latent": [[lo, hi], ...], "raw": [[lo, hi], ...]}

where each list holds sorted, disjoint, non-adjacent inclusive ranges of gather ids (at most
``MAX_RANGES`` of them, the newest kept). A device reads only its own confirmation topic (the
broker's ACL); nothing else is ever read from it.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping

from epic.errors import InputError
from epic.wire.frame import _U32_MAX
from epic.wire.topics import device_name, validate_name

__all__ = ["ACK_MODES", "ACK_VERSION", "MAX_RANGES", "AckError", "RangeSet", "ack_topic",
           "decode_ack", "encode_ack"]

ACK_VERSION = 1
ACK_MODES: tuple[str, ...] = ("latent", "raw")
"""The assembly modes a confirmation covers: the ``latent`` and ``raw`` channels."""
MAX_RANGES = 256
MAX_ACK_BYTES = 64 * 1024  # a confirmation larger than this is refused unparsed


class AckError(InputError):
    """A confirmation payload that is not version-1 JSON of the documented shape."""


def ack_topic(testbed: str, device_id: int) -> str:
    """``epic/<testbed>/central/ack/device-<id>``: where central confirms to that device."""
    return f"epic/{validate_name(testbed)}/central/ack/{device_name(device_id)}"


class RangeSet:
    """A set of gather ids (uint32) kept as sorted, disjoint, non-adjacent inclusive ranges.

    Args:
        max_ranges: the oldest ranges are forgotten beyond this many (memory bound).
    """

    def __init__(self, ranges: Iterable[tuple[int, int]] = (), max_ranges: int = MAX_RANGES
                 ) -> None:
        if max_ranges < 1:
            raise ValueError(f"max_ranges must be >= 1, got {max_ranges}")
        self.max_ranges = max_ranges
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in ranges:
            self.add_range(lo, hi)

    def add(self, gather_id: int) -> bool:
        """Add one id; True if it was not in the set."""
        if gather_id in self:
            return False
        self.add_range(gather_id, gather_id)
        return True

    def add_range(self, lo: int, hi: int) -> None:
        """Add the inclusive range ``lo..hi`` (0 <= lo <= hi < 2**32)."""
        if not (0 <= lo <= hi <= _U32_MAX):
            raise ValueError(f"gather range [{lo}, {hi}] is not within 0..2**32-1 in order")
        i = bisect.bisect_left(self._hi, lo - 1)  # first range that ends at or after lo - 1
        j = bisect.bisect_right(self._lo, hi + 1)  # ranges i..j-1 touch or overlap [lo, hi]
        if i < j:
            lo, hi = min(lo, self._lo[i]), max(hi, self._hi[j - 1])
        self._lo[i:j] = [lo]
        self._hi[i:j] = [hi]
        if len(self._lo) > self.max_ranges:
            del self._lo[0], self._hi[0]

    def __contains__(self, gather_id: object) -> bool:
        if not isinstance(gather_id, int):
            return False
        i = bisect.bisect_right(self._lo, gather_id) - 1
        return i >= 0 and gather_id <= self._hi[i]

    def ranges(self) -> list[tuple[int, int]]:
        """The ranges, oldest first."""
        return list(zip(self._lo, self._hi, strict=True))

    def __len__(self) -> int:
        """How many ids the set holds."""
        return sum(hi - lo + 1 for lo, hi in zip(self._lo, self._hi, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and self.ranges() == other.ranges()

    def __repr__(self) -> str:
        return f"RangeSet({self.ranges()})"


def encode_ack(confirmed: Mapping[str, RangeSet]) -> bytes:
    """The confirmation payload for one device: mode -> its confirmed gathers."""
    unknown = set(confirmed) - set(ACK_MODES)
    if unknown:
        raise ValueError(f"confirmation modes must be among {ACK_MODES}, got {sorted(unknown)}")
    body = {"v": ACK_VERSION, **{m: [list(r) for r in confirmed[m].ranges()]
                                 for m in ACK_MODES if m in confirmed}}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_ack(payload: bytes) -> dict[str, RangeSet]:
    """Parse a confirmation; raise AckError naming what is wrong with it."""
    if len(payload) > MAX_ACK_BYTES:
        raise AckError(f"confirmation of {len(payload)} bytes exceeds {MAX_ACK_BYTES}")
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise AckError(f"confirmation is not JSON: {exc}") from None
    if not isinstance(body, dict) or body.get("v") != ACK_VERSION:
        raise AckError(f"confirmation must be an object with \"v\": {ACK_VERSION}, got "
                       f"{str(body)[:80]}")
    out: dict[str, RangeSet] = {}
    for mode in ACK_MODES:
        ranges = body.get(mode, [])
        if not isinstance(ranges, list) or len(ranges) > MAX_RANGES:
            raise AckError(f"confirmation {mode!r} must be a list of at most {MAX_RANGES} "
                           f"ranges")
        out[mode] = RangeSet()
        for item in ranges:
            if (not isinstance(item, list) or len(item) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in item)):
                raise AckError(f"confirmation {mode!r} range {item!r} is not [lo, hi]")
            try:
                out[mode].add_range(*item)
            except ValueError as exc:
                raise AckError(f"confirmation {mode!r}: {exc}") from None
    return out
