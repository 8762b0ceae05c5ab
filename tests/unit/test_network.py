"""The SimPy link model against closed forms: idle links, retransmissions, contention, LoRa."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulation.energy import lora_airtime_s
from emulation.network import STAGES, Message, NetworkModel, Workload
from epic.errors import InputError
from epic.topology import Topology, parse_topology


def make_topology(n_devices: int = 1, kind: str = "dedicated", *, bandwidth_bps: float = 2e6,
                  delay_s: float = 0.02, jitter_s: float = 0.0, loss: float = 0.0,
                  mtu_bytes: int = 1500, overhead_bytes: int = 40, rto_s: float = 0.2,
                  max_retries: int = 5, broker_s: float = 0.0, central_s: float = 0.0,
                  energy: str = "wifi-80211n", cpu_scale: float = 1.0) -> Topology:
    devices = "\n".join(
        f"  - {{id: device-{i + 1}, receivers: [{14 * i}, {14 * i + 14}], link: l, "
        f"energy: {energy}, cpu_scale: {cpu_scale}}}" for i in range(n_devices))
    return parse_topology(f"""
testbed: test
broker: {{processing_s: {broker_s}}}
central: {{decode_deadline_s: 1.0, processing_s: {central_s}}}
links:
  l: {{kind: {kind}, bandwidth_bps: {bandwidth_bps}, delay_s: {delay_s}, jitter_s: {jitter_s},
      loss: {loss}, mtu_bytes: {mtu_bytes}, overhead_bytes: {overhead_bytes}, rto_s: {rto_s},
      max_retries: {max_retries}}}
devices:
{devices}
""")


@pytest.mark.parametrize("kind", ["dedicated", "shared"])
def test_idle_link_latency_is_bytes_over_bandwidth_plus_delay(kind: str) -> None:
    topo = make_topology(kind=kind, broker_s=0.001, central_s=0.002, cpu_scale=1.5)
    payload = 280_000
    frames = NetworkModel(topo).run(Workload((Message(payload, 0.004),), 3, 10.0)).frames
    packets = math.ceil(payload / 1460)
    expected = 0.004 * 1.5 + (payload + packets * 40) * 8 / 2e6 + 0.02 + 0.001 + 0.002
    np.testing.assert_allclose(frames.latency_s, expected, rtol=1e-12)
    np.testing.assert_allclose(frames.stages_s.sum(axis=1), frames.latency_s, rtol=1e-12)
    transmit = frames.stages_s[:, STAGES.index("transmit")]
    np.testing.assert_allclose(transmit, (payload + packets * 40) * 8 / 2e6, rtol=1e-12)


def test_mean_latency_with_loss_matches_expected_retransmissions() -> None:
    """One-packet frames on an idle link: each is resent R ~ Geometric times, E[R] = p/(1-p),
    Var[R] = p/(1-p)^2, each resend costing rto_s + tx. The mean over N frames must lie
    within 4 standard errors of the closed form."""
    p, rto_s, n = 0.3, 0.05, 4000
    topo = make_topology(loss=p, rto_s=rto_s, max_retries=40)
    frames = NetworkModel(topo, seed=7).run(Workload((Message(1000),), n, 1.0)).frames
    tx_s = 1040 * 8 / 2e6
    mean_r, var_r = p / (1 - p), p / (1 - p) ** 2
    expected = tx_s + 0.02 + mean_r * (rto_s + tx_s)
    standard_error = math.sqrt(var_r) * (rto_s + tx_s) / math.sqrt(n)
    assert not frames.lost.any()
    assert abs(frames.latency_s.mean() - expected) < 4 * standard_error
    retx = frames.stages_s[:, STAGES.index("retransmission")]
    assert abs(retx.mean() - mean_r * (rto_s + tx_s)) < 4 * standard_error


def test_frames_that_exhaust_retries_are_reported_lost() -> None:
    p, n = 0.5, 2000
    topo = make_topology(loss=p, max_retries=1)
    frames = NetworkModel(topo, seed=3).run(Workload((Message(100),), n, 1.0)).frames
    assert frames.lost.size == n  # every frame has a record: none silently dropped
    assert abs(frames.lost.mean() - p**2) < 4 * math.sqrt(p**2 * (1 - p**2) / n)
    assert (frames.stages_s[frames.lost, STAGES.index("broker")] == 0).all()


def test_shared_medium_serialises_five_simultaneous_raw_frames() -> None:
    topo = make_topology(5, "shared", delay_s=0.0)
    frames = NetworkModel(topo).run(Workload((Message(280_000),), 1, 1.0)).frames
    one_s = (280_000 + math.ceil(280_000 / 1460) * 40) * 8 / 2e6
    np.testing.assert_allclose(np.sort(frames.end_s), one_s * np.arange(1, 6), rtol=1e-9)
    queue = frames.stages_s[:, STAGES.index("queue")]
    np.testing.assert_allclose(np.sort(queue), one_s * np.arange(5), atol=1e-9)
    dedicated = NetworkModel(make_topology(5, "dedicated", delay_s=0.0)).run(
        Workload((Message(280_000),), 1, 1.0)).frames
    np.testing.assert_allclose(dedicated.end_s, one_s, rtol=1e-9)


def test_closed_form_equals_event_by_event_path() -> None:
    topo = make_topology(4, loss=0.05, jitter_s=0.003, broker_s=0.001, central_s=0.0005)
    work = Workload((Message(5000, 0.002), Message(700)), 30, 0.05)
    fast = NetworkModel(topo, seed=11).run(work)
    slow = NetworkModel(topo, seed=11, closed_form=False).run(work)
    for name in ("end_s", "stages_s", "lost", "wire_bytes"):
        np.testing.assert_allclose(getattr(fast.frames, name), getattr(slow.frames, name),
                                   rtol=1e-12, atol=1e-15, err_msg=name)
    for a, b in zip(fast.energy, slow.energy, strict=True):
        assert (a.tx_j, a.rx_j, a.idle_j, a.compute_j) == pytest.approx(
            (b.tx_j, b.rx_j, b.idle_j, b.compute_j), rel=1e-12)


def test_seed_reproduces_and_changes_the_run() -> None:
    topo = make_topology(3, "shared", loss=0.1, jitter_s=0.01)
    work = Workload((Message(20_000),), 20, 0.5)
    a, b = (NetworkModel(topo, seed=5).run(work) for _ in range(2))
    c = NetworkModel(topo, seed=6).run(work)
    np.testing.assert_array_equal(a.frames.end_s, b.frames.end_s)
    assert a.energy == b.energy
    assert not np.array_equal(a.frames.end_s, c.frames.end_s)


def test_lora_fragmentation_and_duty_cycle() -> None:
    """600 bytes at SF10: 12 packets of at most 51 payload bytes + 13 bytes of headers; after
    each packet the device must stay silent 99× its airtime (1 % duty cycle)."""
    topo = make_topology(energy="lora-sf10", overhead_bytes=13, mtu_bytes=255, delay_s=0.0)
    frames = NetworkModel(topo).run(Workload((Message(600),), 1, 1.0)).frames
    airtimes = [lora_airtime_s(51 + 13, 10)] * 11 + [lora_airtime_s(600 - 11 * 51 + 13, 10)]
    expected = sum(airtimes) + 99 * sum(airtimes[:-1])
    assert frames.latency_s[0] == pytest.approx(expected, rel=1e-12)
    assert frames.wire_bytes[0] == 600 + 12 * 13


def test_broker_is_a_fifo_single_server() -> None:
    topo = make_topology(3, delay_s=0.0, broker_s=0.1)
    frames = NetworkModel(topo).run(Workload((Message(10),), 1, 1.0)).frames
    tx_s = 50 * 8 / 2e6
    np.testing.assert_allclose(np.sort(frames.end_s), tx_s + 0.1 * np.arange(1, 4), rtol=1e-12)


@pytest.mark.parametrize(("build", "match"), [
    (lambda: Message(-1), "payload_bytes"),
    (lambda: Message(10, -0.1), "compute_s"),
    (lambda: Workload((), 1), "messages"),
    (lambda: Workload((Message(1),), 0), "gathers"),
])
def test_bad_workload_is_an_input_error(build, match: str) -> None:
    with pytest.raises(InputError, match=match):
        build()


@pytest.mark.parametrize("energy", ["wifi-80211n", "lora-sf8"])
def test_closed_form_fifo_medium_equals_simpy_resource(energy: str) -> None:
    topo = make_topology(6, "shared", loss=0.05, jitter_s=0.002, broker_s=0.0003,
                         central_s=0.0002, energy=energy, overhead_bytes=13, mtu_bytes=255)
    work = Workload((Message(3000, 0.001), Message(400)), 8, 0.3)
    fast = NetworkModel(topo, seed=2).run(work)
    slow = NetworkModel(topo, seed=2, closed_form=False).run(work)
    for name in ("end_s", "stages_s", "lost", "wire_bytes"):
        np.testing.assert_allclose(getattr(fast.frames, name), getattr(slow.frames, name),
                                   rtol=1e-12, atol=1e-15, err_msg=name)
    for a, b in zip(fast.energy, slow.energy, strict=True):
        assert (a.tx_j, a.rx_j, a.idle_j) == pytest.approx((b.tx_j, b.rx_j, b.idle_j), rel=1e-12)


def _reference_rounds(full_packets: int, loss: float, max_retries: int, rand):
    """The loss rounds as first written (the model's loop before the link kernel)."""
    rounds, n_full, last_out = [], full_packets, True
    while True:
        if loss > 0.0:
            n_full = sum(1 for _ in range(n_full) if rand() < loss)
            last_out = last_out and rand() < loss
        else:
            n_full, last_out = 0, False
        if not (n_full or last_out):
            return tuple(rounds), False
        if len(rounds) == max_retries:
            return tuple(rounds), True
        rounds.append((n_full, last_out))


@pytest.mark.parametrize(("full_packets", "loss", "max_retries"),
                         [(0, 0.0, 3), (0, 0.3, 2), (4, 0.3, 0), (4, 0.5, 3), (40, 0.1, 6)])
def test_draw_resends_draws_as_the_reference_loop(full_packets: int, loss: float,
                                                  max_retries: int) -> None:
    """The kernel's loss rounds and the order of its draws equal the plain loop's."""
    import random

    from emulation.network import draw_resends, segment

    for seed in range(200):
        a, b = random.Random(seed).random, random.Random(seed).random
        assert draw_resends(full_packets, loss, max_retries, a) == _reference_rounds(
            full_packets, loss, max_retries, b)
        assert a() == b()  # the same number of draws
    assert segment(0, 100) == (0, 0) and segment(100, 100) == (0, 100)
    assert segment(250, 100) == (2, 50)
