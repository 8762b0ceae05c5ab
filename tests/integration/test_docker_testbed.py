"""The docker runtime end to end: build the images, up, `epic replay` through device
containers, every fault verb, down.

Needs a Docker engine (and mosquitto_passwd on the host for the credentials); where none is
reachable, the test is SKIPPED and says so. Images are built on the registry bases, or on
the local ones of docker/build-local-base.sh where the engine cannot pull.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from emulation.replay import replay
from emulation.runtime import DockerRuntime, runtime_for
from emulation.runtime.docker import connect, engine_problem
from epic.errors import InputError
from tests.conftest import REPO
from tests.integration.conftest import requires_mosquitto
from tests.integration.test_compose_engine import _bases

NO_ENGINE = engine_problem()

pytestmark = [
    pytest.mark.integration,
    requires_mosquitto,
    pytest.mark.skipif(NO_ENGINE is not None,
                       reason=f"docker runtime not run, no Docker engine here: {NO_ENGINE}"),
    pytest.mark.timeout(3600),
]


@pytest.fixture(autouse=True)
def _base_images(monkeypatch):
    """Build on the registry bases where the engine has them, else on the local stand-ins."""
    bases, why = _bases()
    if bases is None:
        pytest.skip(f"docker runtime not run: {why}")
    for name, image in bases.items():
        monkeypatch.setenv(name, image)


def _fast_topology(tmp_path: Path) -> Path:
    text = (REPO / "topology.yaml").read_text()
    fast = ("links:\n  fast:\n    kind: dedicated\n    bandwidth_bps: 50.0e+6\n"
            "    delay_s: 0.001\n    mtu_bytes: 1500\n    overhead_bytes: 40\n\n")
    text = text[:text.index("links:")] + fast + text[text.index("devices:"):]
    path = tmp_path / "topology.yaml"
    path.write_text(text.replace("testbed: epic-5", "testbed: dtest")
                    .replace("link: wifi", "link: fast"))
    return path


def _proxy_link(rundir: Path, device: str, want: str, timeout_s: float = 30.0) -> None:
    """Poll the link proxy's status until it reports link ``want`` (it hot-reloads)."""
    deadline = time.monotonic() + timeout_s
    while json.loads((rundir / f"proxy-{device}.json").read_text())["link"] != want:
        assert time.monotonic() < deadline, f"the proxy never reloaded {want}"
        time.sleep(0.1)


def _frames_on_dashboard(url: str, at_least: int, timeout_s: float = 30.0) -> float:
    """Poll the dashboard's /metrics until central's accepted frames reach ``at_least``."""
    from urllib.request import urlopen

    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout_s
    while True:
        text = urlopen(url.rstrip("/") + "/metrics", timeout=10).read().decode()
        frames = sum(s.value for f in text_string_to_metric_families(text)
                     if f.name == "epic_frames" for s in f.samples
                     if s.name == "epic_frames_total")
        if frames >= at_least:
            return frames
        assert time.monotonic() < deadline, text[-1500:]
        time.sleep(0.25)


def test_docker_testbed_up_replay_faults_down(tmp_path, tiny_dataset):
    rundir = tmp_path / "run"
    client = connect()
    runtime = DockerRuntime(rundir, build=True, publish_broker=False)
    try:
        status = runtime.up(_fast_topology(tmp_path), timeout_s=300)
        assert json.loads((rundir / "docker.json").read_text())["containers"] == [
            "dtest-broker", "dtest-central", "dtest-link-proxies"]
        assert {r: s.alive for r, s in status.roles.items()} == {
            "broker": True, "central": True, "link-proxies": True}
        assert isinstance(runtime_for(rundir), DockerRuntime)  # found from --dir alone
        url, dashboard_pid = runtime.start_dashboard()  # `epic testbed up --dashboard`
        assert json.loads((rundir / "docker.json").read_text())["dashboard"]["pid"] == (
            dashboard_pid)
        probe = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
        client.containers.run("epic-device", entrypoint=["python", "-c", probe], remove=True)

        result = replay(rundir, tiny_dataset, 2, "epic", "max", timeout_s=300)
        epic = result["modes"]["epic"]
        assert epic["gathers"] == 2 and epic["partial"] == 0
        assert epic["agents"]["started"] == [f"device-{k}" for k in range(1, 6)]
        assert _frames_on_dashboard(url, 2 * 5) >= 10  # the page's numbers: this testbed's

        runtime.degrade_link("device-2", bandwidth_bps=1e6)  # the proxies hot-reload it
        _proxy_link(rundir, "device-2", "fast-device-2")
        assert runtime.restart_broker(hard=True) == "container dtest-broker"
        assert runtime_for(rundir).status().roles["broker"].alive
        assert runtime.kill_device("device-3") is None  # no agent running: a record
        again = replay(rundir, tiny_dataset, 1, "epic", "max", start=2, timeout_s=300)
        epic = again["modes"]["epic"]
        assert epic["agents"]["skipped_dead"] == ["device-3"] and epic["partial"] == 1
        assert again["dead_devices"] == ["device-3"]
        assert runtime.restore_device("device-3")
    finally:
        removed = runtime.down(timeout_s=10)
    assert sorted(removed) == [f"dashboard (pid {dashboard_pid})", "dtest-broker",
                               "dtest-central", "dtest-link-proxies"]
    assert not client.containers.list(all=True, filters={"label": "epic.testbed=dtest"})
    assert (rundir / "logs" / "central.log").is_file()
    assert (rundir / "logs" / "agent-device-1-epic.log").is_file()
    assert runtime.down() == []  # a second down is a no-op
    with pytest.raises(InputError, match="no docker testbed"):
        runtime.status()


def test_containers_and_processes_decode_the_same_gathers_alike(tmp_path, tiny_dataset):
    """The same gathers, EPIC and raw, through the container testbed (central on ONNX Runtime
    in its torch-free image) and the process testbed (central on the torch checkpoints): the
    same fidelity, gather by gather, at the precision results.jsonl records (6 decimals)."""
    from emulation.runtime import ProcessRuntime

    raw_ckpt = REPO / "artifacts" / "inversionnet-flatvel-a.pt"
    metrics = {}
    for kind, runtime in (("process", ProcessRuntime(tmp_path / "proc")),
                          ("docker", DockerRuntime(tmp_path / "dock", build=True,
                                                   publish_broker=False))):
        try:
            runtime.up(_fast_topology(tmp_path), raw_checkpoint=raw_ckpt, truth=tiny_dataset,
                       timeout_s=300)
            result = replay(runtime.rundir, tiny_dataset, 2, "both", "max", timeout_s=300)
            assert all(m["gathers"] == 2 and m["partial"] == 0
                       for m in result["modes"].values()), result["modes"]
            records = [json.loads(line) for line in
                       (runtime.rundir / "results.jsonl").read_text().splitlines()]
            metrics[kind] = {(r["mode"], r["gather"]): r["metrics"] for r in records}
        finally:
            runtime.down(timeout_s=10)
    assert set(metrics["docker"]) == {(m, g) for m in ("latent", "raw") for g in (0, 1)}
    for key, expected in metrics["process"].items():
        got = metrics["docker"][key]
        assert got.keys() == expected.keys(), key
        for name, value in expected.items():  # ONNX Runtime vs torch: |dMAE| ~ 1e-9
            assert got[name] == pytest.approx(value, abs=2e-6), (key, name, got, expected)


def _docker_start_instant(client, testbed: str, timeout_s: float = 120.0) -> float:
    """The running docker replay's shared start T, from its device containers' environment."""
    deadline = time.monotonic() + timeout_s
    while True:
        running = client.containers.list(filters={"label": [f"epic.testbed={testbed}",
                                                            "epic.device"]})
        for container in running:
            env = dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])
            if "EPIC_START_AT_UNIX_S" in env:
                return float(env["EPIC_START_AT_UNIX_S"])
        assert time.monotonic() < deadline, "no device container started"
        time.sleep(0.1)


def _shared_wifi(tmp_path: Path) -> Path:
    path = tmp_path / "wifi.yaml"
    path.write_text((REPO / "topology.yaml").read_text().replace("testbed: epic-5",
                                                                 "testbed: dfault"))
    return path


def test_docker_link_model_broker_kill_and_device_kill_during_replays(tmp_path,
                                                                       tiny_dataset):
    """On containers: (1) every device's link degraded to 4 Mbit/s: the proxies reload it and
    raw gathers' link latency is the SimPy model's within 10 %; (2) replaying gathers 1-3 in
    real time (gather k published at T + 5 k s), the broker container is SIGKILLed and
    restarted as gather 1 is published, and device-2's container is killed (`docker kill`)
    before gather 2: gather 1 loses nothing, gathers 2-3 are decoded partially without
    device-2, central stays up, nothing is dropped."""
    import threading

    client = connect()
    rundir = tmp_path / "run"
    runtime = DockerRuntime(rundir, build=True, publish_broker=False)
    devices = [f"device-{k}" for k in range(1, 6)]
    try:
        runtime.up(_shared_wifi(tmp_path), truth=tiny_dataset, timeout_s=300)
        for device in devices:
            runtime.degrade_link(device, bandwidth_bps=4e6)
        for device in devices:
            _proxy_link(rundir, device, f"wifi-{device}")
        raw = replay(rundir, tiny_dataset, 1, "raw", "realtime", timeout_s=300)
        live_s = raw["modes"]["raw"]["stages_s"]["link_broker"]["p50"]
        model_s = raw["prediction"]["modes"]["raw"]["gather_latency_s"]["p50"]
        print(f"\nraw link latency, 4 Mbit/s each: live {live_s:.3f} s, model {model_s:.3f} s")
        assert live_s == pytest.approx(model_s, rel=0.10)

        outcome: dict = {}
        worker = threading.Thread(target=lambda: outcome.update(
            replay(rundir, tiny_dataset, 3, "epic", "realtime", start=1, timeout_s=300)))
        worker.start()
        start_at = _docker_start_instant(client, "dfault")
        time.sleep(max(start_at + 5.0 + 0.002 - time.time(), 0))  # the faults' instants
        runtime.restart_broker(hard=True)
        time.sleep(max(start_at + 7.5 - time.time(), 0))  # between gathers 1 and 2
        assert runtime.kill_device("device-2") == "container dfault-device-2"
        worker.join(300)
        assert not worker.is_alive() and outcome, "the replay did not finish"
        epic = outcome["modes"]["epic"]
        assert epic["dropped"] == [] and epic["gathers"] == 3, epic
        records = {r["gather"]: r for r in map(json.loads, (rundir / "results.jsonl")
                                               .read_text().splitlines()) if r["mode"] == "latent"}
        assert records[1]["present"] == devices, records[1]  # the broker SIGKILL lost nothing
        for gather in (2, 3):
            assert records[gather]["absent"] == ["device-2"], records[gather]
        assert runtime.status().roles["central"].alive
    finally:
        runtime.down(timeout_s=10)
