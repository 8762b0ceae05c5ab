"""End-to-end delivery (docs/wire-format.md, "Delivery"): central confirms what it assembled,
devices keep and send again only what is unconfirmed, and a broker restart in the middle of a
raw replay loses no gather.

Real Mosquitto, link proxies, central and device agents; the testbed's links are the default
topology's shared 20 Mbit/s Wi-Fi, so raw frames are still in flight when the broker dies.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from emulation.replay import replay
from emulation.runtime import ProcessRuntime
from epic.mqtt import SessionClient
from epic.wire import Channel, RangeSet, topic_for
from tests.integration.conftest import TESTBED, requires_mosquitto
from tests.integration.test_faults import DEVICES, _central_status_after, _start_instant

pytestmark = [pytest.mark.integration, requires_mosquitto]

REPO = Path(__file__).resolve().parents[2]


def _wait(predicate, what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_only_unconfirmed_frames_are_sent_again_and_before_newer_ones(broker, settings_for
                                                                      ) -> None:
    received: list[bytes] = []
    receiver = SessionClient(settings_for("central"), subscriptions=[
        f"epic/{TESTBED}/+/latent"], on_message=lambda m: received.append(bytes(m.payload))
    ).connect()
    device = SessionClient(settings_for("device-1", keep_until_confirmed=True),
                           status_topic=topic_for(TESTBED, 1, Channel.STATUS)).connect()
    topic = topic_for(TESTBED, 1, Channel.LATENT)
    try:
        for gather in range(6):
            device.publish(topic, b"gather %d" % gather, key=("latent", gather))
        _wait(lambda: device.unacked() == 0 and len(received) >= 6, "6 frames delivered")
        assert device.unconfirmed() == 6  # acknowledged by the broker is not confirmed
        assert device.confirm({"latent": RangeSet([(0, 3)])}) == 4
        assert device.confirm({"raw": RangeSet([(0, 9)])}) == 0  # other mode: kept
        assert device.unconfirmed() == 2
        broker.stop(signal.SIGKILL)
        _wait(lambda: not device.is_connected, "the device to notice the broker died")
        device.publish(topic, b"gather 6", key=("latent", 6))  # waits in the outbox
        assert device.unacked() == 1 and device.unconfirmed() == 3
        before = len(received)
        broker.start()
        _wait(lambda: device.unacked() == 0 and b"gather 6" in received[before:],
              "the reconnect and the outbox frame")
        assert device.replayed == 2  # gathers 4 and 5, not the 4 that central confirmed
        after = received[before:]
        last_copy = max(i for i, p in enumerate(after) if p in (b"gather 4", b"gather 5"))
        assert last_copy < after.index(b"gather 6"), after  # resends first, then the new one
        assert not {b"gather 0", b"gather 1", b"gather 2", b"gather 3"} & set(
            after[:after.index(b"gather 6")]) - set(received[:before]), after
    finally:
        device.close()
        receiver.close()


def _shared_wifi_topology(tmp_path: Path) -> Path:
    text = (REPO / "topology.yaml").read_text().replace("testbed: epic-5", "testbed: tdeliv")
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


@pytest.fixture
def run_dir(tmp_path: Path):
    path = tmp_path / "run"
    yield path
    ProcessRuntime(path).down(timeout_s=5)


@pytest.mark.slow
def test_broker_sigkill_during_a_raw_replay_drops_no_gather(tmp_path, run_dir, tiny_dataset):
    """8 raw gathers as fast as the 20 Mbit/s shared medium takes them (11 MB, ~5 s); the
    broker is SIGKILLed 1.5 s after the shared start, with chunks queued in every layer."""
    ProcessRuntime(run_dir).up(_shared_wifi_topology(tmp_path), timeout_s=90)
    shots = 8
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = replay(run_dir, tiny_dataset, shots, "raw", "max",
                                       timeout_s=120)
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    worker = threading.Thread(target=run)
    worker.start()
    start_at = _start_instant(run_dir)
    time.sleep(max(start_at + 1.5 - time.time(), 0))  # the fault's instant, not a wait
    ProcessRuntime(run_dir).restart_broker(hard=True)
    worker.join(180)
    assert not worker.is_alive(), "replay did not finish"
    assert "error" not in outcome, outcome.get("error")
    raw = outcome["result"]["modes"]["raw"]
    assert raw["dropped"] == [] and raw["partial"] == 0, raw
    assert raw["gathers"] == shots
    status = _central_status_after(run_dir, time.time() + 1.0)
    assert status["connects"] >= 2, status  # the broker restart did reach central
    assert set(status["frames"]["rejected"]) <= {"duplicate"}, status["frames"]  # none late
    agents = [json.loads((run_dir / f"agent-{d}.json").read_text()) for d in DEVICES]
    assert all(a["unconfirmed_at_exit"] == 0 for a in agents), agents  # confirmed end to end


def _slow_links_topology(tmp_path: Path) -> Path:
    """Dedicated 4 Mbit/s links and a 0.3 s deadline: a device's 280 kB of raw chunks takes
    0.56 s, so every raw gather closes with no device complete and is dropped."""
    text = (REPO / "topology.yaml").read_text().replace("testbed: epic-5", "testbed: tdrop")
    start, end = text.index("links:"), text.index("devices:")
    slow = ("links:\n  slow:\n    kind: dedicated\n    bandwidth_bps: 4.0e+6\n"
            "    delay_s: 0.001\n    mtu_bytes: 1500\n    overhead_bytes: 40\n\n")
    text = (text[:start] + slow + text[end:]).replace("link: wifi", "link: slow")
    text = text.replace("decode_deadline_s: 2.0", "decode_deadline_s: 0.3")
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


def test_replay_reports_a_gather_central_dropped_at_once(tmp_path, run_dir, tiny_dataset,
                                                         capsys) -> None:
    from epic_cli import main

    ProcessRuntime(run_dir).up(_slow_links_topology(tmp_path), timeout_s=90)
    code = main(["replay", "--data", str(tiny_dataset), "--shots", "1", "--mode", "raw",
                 "--dir", str(run_dir), "--timeout-s", "120", "--start-lead-s", "2"])
    err = capsys.readouterr().err
    assert code == 1, err  # a run-time failure, not bad input (2), and not the timeout
    assert err.count("\n") == 1 and "central dropped 1 gathers (raw gather 0: no device " \
        "complete within the 0.3 s deadline" in err, err
    summary = json.loads((run_dir / "replay.json").read_text())["modes"]["raw"]
    assert summary["gathers"] == 0 and [d["gather"] for d in summary["dropped"]] == [0]
    assert summary["dropped"][0]["incomplete"] == DEVICES
