"""The device agent against the real broker and the real LiteRT encoders."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from epic import wire
from epic.data.openfwi import OpenFWIDataset
from epic.mqtt import SessionClient
from tests.conftest import REPO
from tests.integration.conftest import TESTBED, requires_mosquitto

ENCODERS = REPO / "artifacts" / "encoders" / "epic-flatvel-a" / "manifest.json"

pytestmark = [pytest.mark.integration, requires_mosquitto]


@pytest.fixture
def topology_file(tmp_path: Path) -> Path:
    text = (REPO / "topology.yaml").read_text().replace("testbed: epic-5", f"testbed: {TESTBED}")
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return path


class _Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, message) -> None:
        with self.lock:
            self.frames.append((message.topic, bytes(message.payload)))

    def wait(self, n: int, timeout_s: float = 30.0) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.frames) < n:
            time.sleep(0.05)
        return list(self.frames)


def _central(settings_for, collector: _Collector) -> SessionClient:
    return SessionClient(settings_for("central"),
                         subscriptions=[f"epic/{TESTBED}/+/latent", f"epic/{TESTBED}/+/raw"],
                         on_message=collector).connect()


def _agent(*args: str, rundir: Path, topology: Path, data: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "devices.agent", "--device-id", "2", "--topology", str(topology),
         "--rundir", str(rundir), "--data", str(data),
         "--confirm-timeout-s", "0",  # no central here to confirm: the broker's save suffices
         *args],
        capture_output=True, text=True, timeout=120, cwd=REPO)


def test_epic_mode_publishes_the_litert_latent(broker, broker_runtime, settings_for,
                                               topology_file, tiny_dataset):
    from devices.runtime import EncoderRuntime

    collector = _Collector()
    central = _central(settings_for, collector)
    try:
        result = _agent("--mode", "epic", "--encoders", str(ENCODERS), "--gathers", "2",
                        rundir=broker_runtime.rundir, topology=topology_file, data=tiny_dataset)
        assert result.returncode == 0, result.stderr[-2000:]
        frames = collector.wait(2)
    finally:
        central.close()
    assert [t for t, _ in frames] == [f"epic/{TESTBED}/device-2/latent"] * 2
    runtime = EncoderRuntime.from_manifest(ENCODERS, 2)
    ds = OpenFWIDataset(tiny_dataset)
    for gather_id, (_, payload) in enumerate(frames):
        frame = wire.Frame.decode(payload)
        assert (frame.device_id, frame.gather_id, frame.dtype) == (2, gather_id, wire.Dtype.INT8)
        expected = runtime.encode(ds[gather_id][0][:, :, 14:28])
        assert np.array_equal(frame.array(), expected.values)
        assert (frame.scale, frame.zero_point) == pytest.approx(
            (expected.scale, expected.zero_point))
        assert 0 < frame.capture_ns <= frame.encode_end_ns <= frame.publish_ns
    stats = json.loads((broker_runtime.rundir / "agent-device-2.json").read_text())
    assert stats["gathers_published"] == 2 and stats["encode_s"]["n"] == 2
    assert stats["backend"] == "ai-edge-litert" and stats["peak_rss_bytes"] > 0


def test_raw_mode_sends_float32_chunks_that_reassemble(broker, broker_runtime, settings_for,
                                                       topology_file, tiny_dataset):
    collector = _Collector()
    central = _central(settings_for, collector)
    try:
        result = _agent("--mode", "raw", "--gathers", "1", "--start", "3",
                        rundir=broker_runtime.rundir, topology=topology_file, data=tiny_dataset)
        assert result.returncode == 0, result.stderr[-2000:]
        frames = collector.wait(5)
    finally:
        central.close()
    reassembler = wire.Reassembler()
    done = [out for _, p in frames if (out := reassembler.add(wire.Frame.decode(p))) is not None]
    assert len(done) == 1
    expected = OpenFWIDataset(tiny_dataset)[3][0][:, :, 14:28]
    assert done[0].dtype == np.float32 and np.array_equal(done[0], expected)


def test_nan_gather_is_counted_not_published(broker, broker_runtime, settings_for,
                                             topology_file):
    from devices.agent import DeviceAgent

    collector = _Collector()
    central = _central(settings_for, collector)
    agent = DeviceAgent(2, topology_file, broker_runtime.rundir, "epic", ENCODERS)
    try:
        agent.start()
        gather = np.zeros((5, 1000, 14), np.float32)
        gather[2, 10, 3] = np.nan
        agent.publish_gather(0, gather, time.time_ns())
        agent.publish_gather(1, np.zeros((5, 1000, 14), np.float32), time.time_ns())
        frames = collector.wait(1, timeout_s=10)
    finally:
        agent.close()
        central.close()
    assert [wire.Frame.decode(p).gather_id for _, p in frames] == [1]
    assert agent.stats.rejections == {"non_finite": 1}


def test_bad_configuration_is_one_line_and_exit_2(broker_runtime, topology_file, tiny_dataset):
    result = _agent("--mode", "epic", "--encoders", str(broker_runtime.rundir / "none.json"),
                    rundir=broker_runtime.rundir, topology=topology_file, data=tiny_dataset)
    assert result.returncode == 2
    assert "no such manifest" in result.stderr and "Traceback" not in result.stderr


def test_device_agent_imports_no_torch():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is forbidden on the device')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import devices.agent, devices.runtime\n"
            "assert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
