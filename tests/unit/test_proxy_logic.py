"""The pure logic of live shaping: MQTT framing, and `LinkShaper` stepped in virtual time
against `NetworkModel` (same seed, same link: same arrivals, same energy), hot reload."""

from __future__ import annotations

import heapq
import json
from collections.abc import Generator
from pathlib import Path

import numpy as np
import pytest

from emulation.energy import device_energy, radio_energy
from emulation.network import STAGES, Medium, Message, NetworkModel, Workload
from emulation.proxy import LinkProxy, ProxySettings, main
from emulation.shaper import (
    LinkShaper,
    MqttFramer,
    MqttProtocolError,
    PacketType,
    packet_type,
)
from epic.errors import InputError
from epic.rundir import RunDir
from epic.topology import Topology, parse_topology


def topology_text(n_devices: int = 1, kind: str = "dedicated", *, bandwidth_bps: float = 2e6,
                  delay_s: float = 0.02, jitter_s: float = 0.0, loss: float = 0.0,
                  max_retries: int = 5) -> str:
    devices = "\n".join(
        f"  - {{id: device-{i + 1}, receivers: [{14 * i}, {14 * i + 14}], link: l, "
        f"energy: wifi-80211n}}" for i in range(n_devices))
    return f"""testbed: test
broker: {{processing_s: 0.0}}
central: {{decode_deadline_s: 1.0, processing_s: 0.0}}
links:
  l: {{kind: {kind}, bandwidth_bps: {bandwidth_bps}, delay_s: {delay_s}, jitter_s: {jitter_s},
      loss: {loss}, mtu_bytes: 1500, overhead_bytes: 40, rto_s: 0.05,
      max_retries: {max_retries}}}
devices:
{devices}
"""


def shapers_for(topo: Topology, seed: int) -> list[LinkShaper]:
    media: dict[str, Medium] = {}
    return [LinkShaper(i, d, topo.link_of(d),
                       media.setdefault(d.link, Medium()) if topo.link_of(d).kind == "shared"
                       else None, seed, 0.0) for i, d in enumerate(topo.devices)]


def run_virtual(jobs: list[tuple[float, Generator[float, None, float]]]) -> list[float]:
    """Step shaping generators in virtual time, earliest first (ties in job order), like
    SimPy's event queue; return each job's arrival time."""
    out = [0.0] * len(jobs)
    queue = [(t, k) for k, (t, _) in enumerate(jobs)]
    heapq.heapify(queue)
    while queue:
        _, k = heapq.heappop(queue)
        try:
            heapq.heappush(queue, (next(jobs[k][1]), k))
        except StopIteration as done:
            out[k] = done.value
    return out


def mqtt_packet(kind: PacketType, body: bytes) -> bytes:
    n, length = len(body), bytearray()
    while True:
        byte, n = n % 128, n // 128
        length.append(byte | (0x80 if n else 0))
        if not n:
            return bytes([kind << 4]) + bytes(length) + body


# -- MQTT framing -----------------------------------------------------------------------------
def test_framer_returns_whole_packets_for_any_chunking() -> None:
    packets = [mqtt_packet(PacketType.CONNECT, b"c" * 20), mqtt_packet(PacketType.PINGREQ, b""),
               mqtt_packet(PacketType.PUBLISH, bytes(range(256)) * 800),  # 3-byte length
               mqtt_packet(PacketType.PUBACK, b"\x00\x01")]
    stream = b"".join(packets)
    assert len(packets[2]) == 1 + 3 + 204_800
    for chunk in (1, 2, 3, 7, 1000, len(stream)):
        framer, out = MqttFramer(), []
        for i in range(0, len(stream), chunk):
            out += framer.feed(stream[i:i + chunk])
        assert out == packets, chunk
        assert framer.buffered_bytes == 0
    assert [packet_type(p) for p in packets] == [1, 12, 3, 4]


def test_framer_holds_a_partial_packet_and_rejects_a_five_byte_length() -> None:
    framer = MqttFramer()
    assert framer.feed(b"\x30\x05abc") == [] and framer.buffered_bytes == 5
    assert framer.feed(b"de\xc0") == [b"\x30\x05abcde"] and framer.buffered_bytes == 1
    with pytest.raises(MqttProtocolError, match="longer than 4 bytes"):
        MqttFramer().feed(b"\x30\xff\xff\xff\xff\x01")


# -- the shaper against the model -----------------------------------------------------------
def test_lossy_jittery_link_arrivals_equal_the_model_frame_by_frame() -> None:
    topo = parse_topology(topology_text(loss=0.05, jitter_s=0.004, max_retries=2))
    payload, n, interval_s = 30_000, 200, 0.5
    model = NetworkModel(topo, seed=3).run(Workload((Message(payload),), n, interval_s)).frames
    shaper = shapers_for(topo, 3)[0]
    arrivals = [run_virtual([(g * interval_s, shaper.uplink(g * interval_s, payload))])[0]
                for g in range(n)]
    lost = model.lost
    assert 0 < lost.sum() < n and (model.stages_s[:, STAGES.index("retransmission")] > 0).any()
    expected = np.where(lost, model.end_s + topo.links["l"].delay_s, model.end_s)
    np.testing.assert_allclose(arrivals, expected, rtol=0, atol=1e-9)
    assert shaper.counters.given_up == lost.sum()
    assert shaper.counters.up_wire_bytes == model.wire_bytes.sum()


@pytest.mark.parametrize("loss", [0.0, 0.02])
def test_shared_medium_contention_equals_the_model(loss: float) -> None:
    topo = parse_topology(topology_text(3, "shared", loss=loss, max_retries=8))
    payload = 50_000
    model = NetworkModel(topo, seed=5, closed_form=False).run(
        Workload((Message(payload),), 1)).frames
    shapers = shapers_for(topo, 5)
    arrivals = run_virtual([(0.0, s.uplink(0.0, payload)) for s in shapers])
    np.testing.assert_allclose(arrivals, model.end_s, rtol=0, atol=1e-9)
    one_s = (payload + 35 * 40) * 8 / 2e6
    if loss == 0.0:  # FIFO: the k-th device waits for the k-1 before it
        np.testing.assert_allclose(arrivals, one_s * np.arange(1, 4) + 0.02, atol=1e-9)


def test_energy_booked_equals_the_model_for_the_same_bytes() -> None:
    topo = parse_topology(topology_text())
    payload, horizon_s = 280_108, 3.0
    model = NetworkModel(topo).run(Workload((Message(payload),), 1, horizon_s))
    shaper = shapers_for(topo, 0)[0]
    arrival_s = run_virtual([(0.0, shaper.uplink(0.0, payload, publish=True))])[0]
    shaper.downlink(arrival_s, 4)  # the MQTT v5 PUBACK
    booked, expected = shaper.energy(horizon_s), model.energy[0]
    for field in ("tx_j", "rx_j", "idle_j", "sleep_j"):
        assert getattr(booked, field) == pytest.approx(getattr(expected, field), rel=1e-12)
    status = shaper.status(horizon_s)
    assert status["publishes"] == 1 and status["down_wire_bytes"] == 44
    assert status["energy_j"]["comm"] == pytest.approx(expected.comm_j, rel=1e-12)


def test_relink_applies_to_the_next_packet_and_banks_the_energy() -> None:
    topo = parse_topology(topology_text())
    fast = parse_topology(topology_text(bandwidth_bps=8e6))
    shaper = shapers_for(topo, 0)[0]
    slow_s = run_virtual([(0.0, shaper.uplink(0.0, 10_000))])[0]
    before = shaper.energy(1.0)
    shaper.relink(1.0, fast.devices[0], fast.links["l"], None)
    fast_s = run_virtual([(1.0, shaper.uplink(1.0, 10_000))])[0] - 1.0
    assert slow_s - 0.02 == pytest.approx(4 * (fast_s - 0.02), rel=1e-12)
    radio = radio_energy(topo.devices[0].energy)
    after = shaper.energy(2.0)
    tx_s = (10_000 + 7 * 40) * 8 * (1 / 2e6 + 1 / 8e6)
    assert after.tx_j == pytest.approx(radio.tx_w * tx_s, rel=1e-12)
    assert after.idle_j == pytest.approx(radio.idle_w * (2.0 - tx_s), rel=1e-12)
    assert after.tx_j > before.tx_j
    expected = device_energy("device-1", radio, tx_s=tx_s, tx_bits=0, rx_s=0, rx_bits=0,
                             compute_s=0, compute_w=0, horizon_s=2.0)
    assert after.radio_j == pytest.approx(expected.radio_j, rel=1e-12)


# -- reload and status (no sockets) ---------------------------------------------------------
def make_proxy(tmp_path: Path, text: str) -> LinkProxy:
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return LinkProxy(ProxySettings(path, tmp_path / "run", "127.0.0.1", 1883,
                                   {"device-1": 1, "device-2": 2}))


def test_reload_relinks_changed_devices_and_a_bad_file_keeps_the_old(tmp_path: Path) -> None:
    proxy = make_proxy(tmp_path, topology_text(2, "shared"))
    medium = proxy.shapers["device-1"]._up
    assert proxy.shapers["device-2"]._up is medium  # one medium for both
    path = proxy.settings.topology_path
    assert proxy.check_reload() is False and proxy.reloads == 0  # unchanged
    path.write_text(topology_text(2, "shared", bandwidth_bps=5e6))
    assert proxy.check_reload() is True
    assert {s.link.bandwidth_bps for s in proxy.shapers.values()} == {5e6}
    assert proxy.shapers["device-2"]._up is proxy.shapers["device-1"]._up is medium
    path.write_text(topology_text(2, "shared", loss=1.5))
    assert proxy.check_reload() is False
    assert "links.l.loss: must be <= 1, got 1.5" in proxy.reload_error
    assert proxy.shapers["device-1"].link.bandwidth_bps == 5e6
    proxy.settings.rundir.mkdir()
    proxy.write_status()
    status = json.loads(RunDir(proxy.settings.rundir).proxy_status("device-1").read_text())
    assert status["reload"] == {"count": 1, "last_unix_s": proxy.reloaded_unix_s,
                                "error": proxy.reload_error}
    assert status["link_spec"]["bandwidth_bps"] == 5e6 and status["listen"]["port"] == 1
    path.write_text(topology_text(2, "dedicated", bandwidth_bps=5e6))
    assert proxy.check_reload() is True and proxy.reload_error is None
    assert proxy.shapers["device-1"]._up is not proxy.shapers["device-2"]._up


def test_unknown_device_and_bad_port_count_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(topology_text(1))
    with pytest.raises(InputError, match=r"\['device-7'\] are not in"):
        LinkProxy(ProxySettings(path, tmp_path, "h", 1, {"device-7": 5}))
    with pytest.raises(SystemExit):
        main(["--topology", str(path), "--rundir", str(tmp_path), "--device", "device-1",
              "--listen-port", "5", "--listen-port", "6", "--listen-port", "7"])
