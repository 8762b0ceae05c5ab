"""epic.wire.ack: central's cumulative end-to-end confirmations (ranges of gather ids)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from epic.wire import AckError, RangeSet, ack_topic, decode_ack, encode_ack


def test_ranges_merge_when_they_touch_or_overlap() -> None:
    ids = RangeSet()
    for gather in (5, 3, 4, 10, 1):
        ids.add(gather)
    assert ids.ranges() == [(1, 1), (3, 5), (10, 10)]
    assert not ids.add(4)  # already there
    ids.add_range(6, 9)
    assert ids.ranges() == [(1, 1), (3, 10)] and len(ids) == 9
    assert 7 in ids and 2 not in ids and 11 not in ids and "7" not in ids


@given(st.lists(st.integers(0, 300), max_size=200))
def test_a_range_set_holds_exactly_what_was_added(gathers: list[int]) -> None:
    ids = RangeSet()
    for gather in gathers:
        ids.add(gather)
    assert {g for g in range(302) if g in ids} == set(gathers)
    ranges = ids.ranges()
    assert all(hi + 1 < lo for (_, hi), (lo, _) in itertools.pairwise(ranges))


def test_only_the_newest_ranges_are_kept() -> None:
    ids = RangeSet(max_ranges=3)
    for gather in range(0, 20, 2):  # 10 disjoint ranges
        ids.add(gather)
    assert ids.ranges() == [(14, 14), (16, 16), (18, 18)]


def test_payload_round_trip_and_topic() -> None:
    confirmed = {"latent": RangeSet([(0, 7)]), "raw": RangeSet([(2, 2), (4, 9)])}
    payload = encode_ack(confirmed)
    assert json.loads(payload) == {"v": 1, "latent": [[0, 7]], "raw": [[2, 2], [4, 9]]}
    assert decode_ack(payload) == confirmed
    assert decode_ack(b'{"v": 1}') == {"latent": RangeSet(), "raw": RangeSet()}
    assert ack_topic("epic-5", 3) == "epic/epic-5/central/ack/device-3"


@pytest.mark.parametrize(("payload", "message"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", '"v": 1'),
    (b'{"v": 2, "raw": []}', '"v": 1'),
    (b'{"v": 1, "raw": {"a": 1}}', "list of at most"),
    (b'{"v": 1, "raw": [[1]]}', "is not [lo, hi]"),
    (b'{"v": 1, "raw": [[1, true]]}', "is not [lo, hi]"),
    (b'{"v": 1, "raw": [[5, 2]]}', "within 0..2**32-1 in order"),
    (b'{"v": 1, "latent": [[0, 4294967296]]}', "within 0..2**32-1"),
    (b"{" + b" " * 70000 + b"}", "exceeds"),
])
def test_malformed_confirmations_are_refused_with_the_reason(payload: bytes,
                                                             message: str) -> None:
    with pytest.raises(AckError, match=message[:20].replace("*", r"\*").replace(".", r"\.")
                       .replace("[", r"\[").replace("]", r"\]")):
        decode_ack(payload)
