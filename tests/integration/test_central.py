"""The central node as a real subprocess against OUR Mosquitto, fed by real device clients.

One broker and one central process serve the whole module (central takes seconds to import
torch); each test uses its own gather ids and looks at counter deltas. Models are small and
seeded, saved into tmp: nothing depends on the shipped artifacts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as paho
import pytest
import torch
from conftest import requires_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from publisher import DevicePublisher, encode_latents, raw_frames

from epic.broker import BrokerProcess, BrokerRuntime, free_port, prepare_runtime
from epic.data.transforms import denormalize_velocity, normalize_data, normalize_velocity
from epic.metrics import per_sample_fidelity
from epic.models import EPICModel, InversionNet
from epic.models.checkpoint import load_checkpoint, save_checkpoint
from epic.mqtt import MqttSettings, SessionClient
from epic.wire import (
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Channel,
    Dtype,
    Frame,
    Kind,
    RangeSet,
    ack_topic,
    decode_ack,
    result_topic,
    topic_for,
)

pytestmark = [pytest.mark.integration, requires_mosquitto]
REPO = Path(__file__).resolve().parents[2]
TESTBED = "ctest"
DEVICES = (1, 2, 3, 4, 5)
STRANGER = 6  # has broker credentials, but is not in the topology
DEADLINE_S = 3.0
INV_DIMS = [4, 4, 8, 8, 8]
FLATVEL_A = (-26.95, 52.77)  # data_min, data_max


def write_topology(path: Path) -> Path:
    lines = (REPO / "topology.yaml").read_text().splitlines()
    text = "\n".join(
        f"testbed: {TESTBED}" if line.startswith("testbed:") else
        f"  decode_deadline_s: {DEADLINE_S}" if "decode_deadline_s" in line else line
        for line in lines)
    path.write_text(text + "\n")
    return path


class Central:
    """``python -m central.service`` as a subprocess, with helpers to read its outputs."""

    def __init__(self, root: Path, runtime: BrokerRuntime, args: list[str]) -> None:
        self.rundir = runtime.rundir
        self.log_path = root / "central.log"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        with open(self.log_path, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "central.service", "--rundir", str(self.rundir), *args],
                cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        try:
            return json.loads((self.rundir / "central-status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait(self, predicate: Callable[[dict], bool], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"central exited: {self.log_tail()}"
            status = self.status()
            if status and predicate(status):
                return status
            time.sleep(0.1)
        raise AssertionError(f"timed out; status {self.status()}\n{self.log_tail()}")

    def results(self) -> dict[tuple[str, int], dict]:
        path = self.rundir / "results.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return {(r["mode"], r["gather"]): r for r in map(json.loads, lines)}

    def wait_results(self, keys: list[tuple[str, int]], timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            results = self.results()
            if all(k in results for k in keys):
                return results
            assert self.proc.poll() is None, f"central exited: {self.log_tail()}"
            time.sleep(0.05)
        missing = sorted(set(keys) - set(self.results()))
        raise AssertionError(f"no result for {missing[:10]}; status {self.status()}\n"
                             f"{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Env:
    root: Path
    runtime: BrokerRuntime
    broker: BrokerProcess
    central: Central
    epic_path: Path
    inv_path: Path
    truth: np.ndarray  # (4, 1, 70, 70) m/s

    def device(self, device_id: int) -> DevicePublisher:
        return DevicePublisher(self.runtime, device_id)

    def counters(self, timeout_s: float = 20.0) -> tuple[int, dict[str, int]]:
        """(accepted, rejected by reason) once two successive status files agree."""
        deadline = time.monotonic() + timeout_s
        previous = self.central.status()
        while time.monotonic() < deadline:
            time.sleep(0.2)
            status = self.central.status()
            if status.get("updated_ns") != previous.get("updated_ns"):
                if status["frames"] == previous["frames"] and not status["gathers"]["pending"]:
                    return status["frames"]["accepted"], status["frames"]["rejected"]
                previous = status
        raise AssertionError(f"central counters do not settle: {self.central.status()}")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("central")
    runtime = prepare_runtime(root / "run", testbed=TESTBED, device_ids=[*DEVICES, STRANGER],
                              port=free_port())
    broker = BrokerProcess(runtime).start()
    torch.manual_seed(0)
    epic_path = save_checkpoint(root / "epic.pt", EPICModel().eval(), "epic", {}, "flatvel-a")
    inv_path = save_checkpoint(root / "inv.pt", InversionNet(tuple(INV_DIMS)).eval(),
                               "inversionnet", {"dims": INV_DIMS}, "flatvel-a")
    truth_dir = root / "truth"
    truth_dir.mkdir()
    rng = np.random.default_rng(1)
    truth = rng.uniform(1500, 4500, (4, 1, 70, 70)).astype(np.float32)
    np.save(truth_dir / "data1.npy", np.zeros((4, 5, 1000, 70), np.float32))
    np.save(truth_dir / "model1.npy", truth)
    central = Central(root, runtime, [
        "--topology", str(write_topology(root / "topology.yaml")), "--checkpoint",
        str(epic_path), "--raw-checkpoint", str(inv_path), "--truth", str(truth_dir)])
    try:
        central.wait(lambda s: s.get("connected"), timeout_s=60)
        yield Env(root, runtime, broker, central, epic_path, inv_path, truth)
    finally:
        if central.proc.poll() is None:
            central.proc.send_signal(signal.SIGTERM)
            try:
                central.proc.wait(15)
            except subprocess.TimeoutExpired:
                central.proc.kill()
        broker.stop(timeout_s=5)


def normalised_gather(seed: int) -> np.ndarray:
    """A synthetic normalised gather, (5, 1000, 70) float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(0, 0.3, (5, 1000, 70)), -1, 1).astype(np.float32)


def send_latents(env: Env, frames: dict[int, Frame]) -> None:
    for device_id, frame in frames.items():
        publisher = env.device(device_id)
        try:
            publisher.send(frame)
        finally:
            publisher.close()


def reference_map(env: Env, frames: dict[int, Frame]) -> np.ndarray:
    """The map decoded in-process from the same frames: (70, 70) m/s."""
    model, _ = load_checkpoint(env.epic_path)
    tokens = torch.zeros(1, 5, 14, 64)
    present = torch.zeros(1, 5, dtype=torch.bool)
    for device_id, frame in frames.items():
        tokens[0, device_id - 1] = torch.from_numpy(frame.dequantized())
        present[0, device_id - 1] = True
    with torch.inference_mode():
        return denormalize_velocity(model.decode(tokens, present).numpy()[0, 0])


def test_full_latent_gather_is_decoded_like_in_process(env: Env) -> None:
    model, _ = load_checkpoint(env.epic_path)
    frames = encode_latents(model, normalised_gather(0), gather_id=0)
    inbox: list[bytes] = []
    watcher = SessionClient(MqttSettings(
        env.runtime.host, env.runtime.port, "observer", "observer",
        env.runtime.password("observer"), session_expiry_s=0),
        subscriptions=[result_topic(TESTBED)],
        on_message=lambda m: inbox.append(bytes(m.payload))).connect()
    try:
        send_latents(env, frames)
        record = env.central.wait_results([("latent", 0)], timeout_s=20)[("latent", 0)]
        deadline = time.monotonic() + 5
        while not inbox and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.close()
    assert record["present"] == [f"device-{d}" for d in DEVICES] and record["absent"] == []
    assert record["partial"] is False
    assert record["at_deadline"] is False and record["wait_s"] < DEADLINE_S
    assert record["decode_start_ns"] <= record["decode_end_ns"]
    for name, device in record["devices"].items():
        assert device["wire_bytes"] == 76 + 14 * 64, name
        assert (device["capture_ns"] <= device["encode_end_ns"] <= device["publish_ns"]
                <= device["receive_ns"] <= record["decode_start_ns"]), name
    assert record["wire_bytes"] == 5 * (76 + 14 * 64)
    predicted = np.load(env.central.rundir / record["map"])
    assert predicted.shape == (70, 70) and predicted.dtype == np.float32
    expected = reference_map(env, frames)
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=0.05)  # m/s, float32 noise
    true = normalize_velocity(env.truth[0])[None]
    fidelity = per_sample_fidelity(normalize_velocity(expected)[None, None], true)
    for key in ("mae", "rmse", "ssim"):
        assert record["metrics"][key] == pytest.approx(float(fidelity[key][0]), abs=1e-4)
    short = [json.loads(p) for p in inbox]
    assert any(s["gather"] == 0 and s["mode"] == "latent" and s["map"] == record["map"]
               for s in short), short


def test_partial_gather_is_decoded_at_the_deadline(env: Env) -> None:
    model, _ = load_checkpoint(env.epic_path)
    frames = encode_latents(model, normalised_gather(1), gather_id=1)
    del frames[3]  # device 3 never sends
    sent_s = time.monotonic()
    send_latents(env, frames)
    record = env.central.wait_results([("latent", 1)], timeout_s=DEADLINE_S + 10)[("latent", 1)]
    assert time.monotonic() - sent_s >= DEADLINE_S - 0.5
    assert record["absent"] == ["device-3"] and "device-3" not in record["devices"]
    assert record["partial"] is True and "device-3" not in record["present"]
    assert record["at_deadline"] is True and record["wait_s"] >= DEADLINE_S
    predicted = np.load(env.central.rundir / record["map"])
    np.testing.assert_allclose(predicted, reference_map(env, frames), rtol=0, atol=0.05)


def test_raw_mode_reassembles_chunks_and_runs_inversionnet(env: Env) -> None:
    rng = np.random.default_rng(2)
    raw = (rng.standard_normal((5, 1000, 70)) * 5).astype(np.float32)
    for device_id in DEVICES:
        publisher = env.device(device_id)
        try:
            for frame in raw_frames(raw[:, :, 14 * (device_id - 1):14 * device_id], 2,
                                    device_id):
                publisher.send(frame)
        finally:
            publisher.close()
    record = env.central.wait_results([("raw", 2)], timeout_s=30)[("raw", 2)]
    assert record["present"] == [f"device-{d}" for d in DEVICES]
    assert all(d["frames"] == 5 and d["wire_bytes"] == 5 * 76 + 5 * 1000 * 14 * 4
               for d in record["devices"].values())
    model, _ = load_checkpoint(env.inv_path, expected_model="inversionnet")
    with torch.inference_mode():
        y = model(torch.from_numpy(normalize_data(raw, *FLATVEL_A)[None])).numpy()
    predicted = np.load(env.central.rundir / record["map"])
    np.testing.assert_allclose(predicted, denormalize_velocity(y[0, 0]), rtol=0, atol=0.05)
    assert set(record["metrics"]) == {"mae", "rmse", "ssim"}


def test_foreign_frames_never_reach_the_decoder(env: Env) -> None:
    model, _ = load_checkpoint(env.epic_path)
    frames = encode_latents(model, normalised_gather(3), gather_id=3,
                            device_ids=(2, STRANGER, 1, 4, 5))
    accepted_before, rejected_before = env.counters()
    one, stranger = env.device(1), env.device(STRANGER)
    try:
        one.send(frames[2])  # device 2's frame on device 1's topic
        stranger.send(frames[STRANGER])  # a device that is not in the topology
    finally:
        one.close()
        stranger.close()

    def counted(status: dict) -> bool:
        rejected = status["frames"]["rejected"]
        return all(rejected.get(r, 0) == rejected_before.get(r, 0) + 1
                   for r in ("wrong_topic", "unknown_device"))

    # the snapshot that counts both rejections: had either frame been assembled instead, it
    # would be accepted and its gather open (pending) until the deadline
    status = env.central.wait(counted, timeout_s=10)
    assert status["frames"]["accepted"] == accepted_before, status["frames"]
    assert status["gathers"]["pending"] == 0, status["gathers"]
    assert ("latent", 3) not in env.central.results()


def test_broker_restart_mid_stream_loses_nothing(env: Env) -> None:
    model, _ = load_checkpoint(env.epic_path)
    gathers = range(100, 140)
    template = encode_latents(model, normalised_gather(4), gather_id=0)
    publishers = {d: env.device(d) for d in DEVICES}
    connects_before = env.central.status()["connects"]
    restarted = threading.Event()

    def restart() -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            env.broker.restart(sig)
            time.sleep(0.3)
        restarted.set()

    try:
        for index, gather in enumerate(gathers):
            if index == 10:
                threading.Thread(target=restart, daemon=True).start()
            for device_id, publisher in publishers.items():
                frame = template[device_id]
                publisher.send(dataclasses.replace(frame, gather_id=gather))
            time.sleep(0.03)
        assert restarted.wait(30)
        keys = [("latent", g) for g in gathers]
        results = env.central.wait_results(keys, timeout_s=40)
    finally:
        for publisher in publishers.values():
            publisher.close()
    partial = {g: results[("latent", g)]["absent"] for g in gathers
               if results[("latent", g)]["absent"]}
    assert partial == {}, f"frames lost or late: {partial}; {env.central.status()}"
    # central rewrites its status file periodically: wait for it to show both reconnects
    env.central.wait(lambda status: status["connects"] >= connects_before + 2, timeout_s=10)


def fuzz_payloads(n: int, seed: int) -> list[tuple[Channel, bytes]]:
    """``n`` device-1 messages: bit-flipped, re-checksummed (header fields rewritten, so the
    checks after the CRC run), truncated, extended, random, duplicate, late and valid frames."""
    rng = np.random.default_rng(seed)
    now_ns = time.time_ns()
    base = [Frame(Kind.LATENT, 1, 9000 + g, Dtype.INT8, (14, 64),
                  rng.integers(-128, 128, 896, dtype=np.int8).tobytes(), scale=0.05,
                  capture_ns=now_ns, encode_end_ns=now_ns, publish_ns=now_ns).encode()
            for g in range(20)]
    out: list[tuple[Channel, bytes]] = []
    for _ in range(n):
        pick = rng.integers(10)
        data = bytearray(base[rng.integers(len(base))])
        if pick < 3:  # flip 1-8 random bits anywhere
            for pos in rng.integers(0, len(data) * 8, rng.integers(1, 9)):
                data[pos // 8] ^= 1 << (pos % 8)
        elif pick < 6:  # rewrite random header bytes [4, 72), then fix the CRC
            for pos in rng.integers(4, 72, rng.integers(1, 4)):
                data[pos] = rng.integers(256)
            crc = zlib.crc32(bytes(data[76:]), zlib.crc32(bytes(data[:72])))
            data[72:76] = crc.to_bytes(4, "little")
        elif pick == 6:  # truncate or extend
            data = data[:rng.integers(0, len(data))] if rng.random() < 0.5 else (
                data + bytes(rng.integers(1, 64)))
        elif pick == 7:  # random bytes
            data = bytearray(rng.integers(0, 256, rng.integers(0, 200), dtype=np.uint8))
        # pick 8, 9: a valid frame (the first copy is accepted, the rest are duplicates/late)
        channel = Channel.RAW if rng.random() < 0.1 else Channel.LATENT
        out.append((channel, bytes(data)))
    return out


def test_fuzz_every_frame_is_accounted_for(env: Env) -> None:
    n = 10_000
    accepted_before, rejected_before = env.counters()
    publisher = env.device(1)
    try:
        payloads = fuzz_payloads(n, seed=11)
        start = time.monotonic()
        # QoS 1 for the first 500, then QoS 0: the broker saves its database on every QoS 1
        # change (~130 frames/s here), and the accounting is what is under test
        sent = publisher.publish_all(((publisher.topic(c), p, 1 if i < 500 else 0)
                                      for i, (c, p) in enumerate(payloads)), timeout_s=120)
        publish_s = time.monotonic() - start
        # a last valid frame on the same connection: the broker routes one connection's
        # publishes in order, so once central counts it, every fuzz frame was counted first
        now_ns = time.time_ns()
        marker = Frame(Kind.LATENT, 1, 99_999, Dtype.INT8, (14, 64), bytes(14 * 64),
                       scale=0.05, capture_ns=now_ns, encode_end_ns=now_ns, publish_ns=now_ns)
        publisher.publish_all([(publisher.topic(), marker.encode(), 1)])
    finally:
        publisher.close()

    def total(status: dict) -> int:
        frames = status["frames"]
        return frames["accepted"] + sum(frames["rejected"].values())

    before = accepted_before + sum(rejected_before.values())
    status = env.central.wait(lambda s: total(s) - before >= n + 1, timeout_s=60)
    assert env.central.proc.poll() is None
    assert total(status) - before == sent + 1 == n + 1  # the fuzz, then the marker
    reasons = {r for r, c in status["frames"]["rejected"].items()
               if c > rejected_before.get(r, 0)}
    assert status["frames"]["accepted"] > accepted_before
    assert {"bad_crc", "bad_magic", "truncated", "duplicate", "wrong_topic"} <= reasons, reasons
    logging.getLogger(__name__).info("fuzz: %d frames published in %.1f s; reasons %s", n,
                                     publish_s, sorted(reasons))


def test_a_device_back_online_is_confirmed_again(env: Env) -> None:
    """A broker that saves periodically (the testbed's) can lose the retained confirmation in
    a SIGKILL, and central never confirms a copy anew: so it confirms again when the device
    announces itself online, and the device stops waiting for what central already has.
    (It runs before the SIGTERM test, which stops central.)"""
    model, _ = load_checkpoint(env.epic_path)
    gather = 424_242  # no other test of the module sends it
    send_latents(env, {1: encode_latents(model, normalised_gather(7), gather_id=gather)[1]})
    got: list[RangeSet] = []  # latent gathers confirmed, per confirmation received
    subscribed = threading.Event()
    # a clean session of its own (the publishers' device-1 session has no subscription)
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="device-1",
                         protocol=paho.MQTTv5)
    client.username_pw_set("device-1", env.runtime.password("device-1"))
    client.on_message = lambda _c, _u, m: got.append(decode_ack(bytes(m.payload))["latent"])
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_connect = lambda c, *_: c.subscribe(ack_topic(TESTBED, 1), qos=1)
    client.connect(env.runtime.host, env.runtime.port, clean_start=True)
    client.loop_start()

    def wait_for(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 15
        while not predicate():
            assert time.monotonic() < deadline, (f"timed out waiting for {what}: {got}; "
                                                 f"{env.central.status().get('delivery')}")
            time.sleep(0.02)

    try:
        wait_for(subscribed.is_set, "the SUBACK")
        wait_for(lambda: any(gather in r for r in got), f"gather {gather}'s confirmation")
        seen = len(got)
        client.publish(topic_for(TESTBED, 1, Channel.STATUS), STATUS_ONLINE, qos=1,
                       retain=True)
        wait_for(lambda: len(got) > seen, "a confirmation after the device's online")
        assert gather in got[-1]
    finally:
        client.disconnect()
        client.loop_stop()


def test_sigterm_flushes_and_goes_offline(env: Env) -> None:
    model, _ = load_checkpoint(env.epic_path)
    frames = encode_latents(model, normalised_gather(5), gather_id=500)
    send_latents(env, {1: frames[1]})
    env.central.wait(lambda s: s["gathers"]["pending"] >= 1, timeout_s=10)
    env.central.proc.send_signal(signal.SIGTERM)
    assert env.central.proc.wait(20) == 0, env.central.log_tail()
    record = env.central.results()[("latent", 500)]  # flushed with what had arrived
    assert record["present"] == ["device-1"]
    inbox: list[tuple[bytes, bool]] = []
    watcher = SessionClient(MqttSettings(
        env.runtime.host, env.runtime.port, "observer", "observer",
        env.runtime.password("observer"), session_expiry_s=0),
        subscriptions=[f"epic/{TESTBED}/central/status"],
        on_message=lambda m: inbox.append((bytes(m.payload), m.retain))).connect()
    try:
        deadline = time.monotonic() + 5
        while not inbox and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        watcher.close()
    assert inbox == [(STATUS_OFFLINE, True)]
    log_text = env.central.log_path.read_text()
    assert "Traceback" not in log_text, log_text[-3000:]
