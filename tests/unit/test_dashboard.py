"""The dashboard server against a recorded run dir written through epic.rundir's writers:
/metrics parsed by prometheus_client's own parser, the event stream, the safety rules (Host
check, token on every request, no credentials, no files), and the tolerant record reader.

A real uvicorn server on a free port, in a thread; readiness and results are polled, never
waited for with a fixed sleep.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the dashboard extra is not installed "
                    "(pip install -e '.[dashboard]')")
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from emulation.dashboard import DashboardState, check_bind, create_app
from epic.broker import free_port
from epic.errors import InputError
from epic.rundir import (
    CentralStatus,
    DeviceReceipt,
    Faults,
    ProxyStatus,
    Result,
    RunDir,
    append_record,
    write_map,
    write_record,
)
from epic_cli import main

REPO = Path(__file__).resolve().parents[2]
DEVICES = [f"device-{i}" for i in range(1, 6)]
SECRET = "s3cret-broker-password-do-not-show"
T0_NS = 1_800_000_000_000_000_000


def _proxy(device: str, publishes: int, up_bytes: int, updated_s: float) -> ProxyStatus:
    return ProxyStatus.from_dict({
        "device": device, "state": "running", "pid": 4242,
        "listen": {"host": "127.0.0.1", "port": 18830}, "broker": {"host": "127.0.0.1",
                                                                   "port": 1883},
        "topology": "topology.yaml", "link": "wifi",
        "link_spec": {"kind": "shared", "bandwidth_bps": 20e6, "delay_s": 0.002,
                      "loss": 0.001, "mtu_bytes": 1536},
        "connections_open": 1, "started_unix_s": updated_s - 10, "updated_unix_s": updated_s,
        "uptime_s": 10.0, "reload": {"count": 0, "last_unix_s": None, "error": None},
        "up_mqtt_bytes": up_bytes - 100, "up_wire_bytes": up_bytes, "up_packets": publishes,
        "publishes": publishes, "resent_rounds": 0, "given_up": 0, "down_mqtt_bytes": 40,
        "down_wire_bytes": 500, "down_packets": 5, "tx_s": 0.01, "rx_s": 0.002,
        "energy_j": {"tx": 0.004, "rx": 0.001, "idle": 3.0, "sleep": 0.0, "comm": 0.005,
                     "radio": 3.005}})


def _result(gather: int, present: list[str], rd: RunDir) -> Result:
    base = T0_NS + gather * 5_000_000_000
    devices = {d: DeviceReceipt(capture_ns=base, encode_end_ns=base + 2_000_000,
                                publish_ns=base + 2_100_000,
                                first_receive_ns=base + 10_000_000,
                                receive_ns=base + 10_000_000, frames=1, wire_bytes=972)
               for d in present}
    velocity = np.full((70, 70), 1500.0 + 300 * gather, np.float32)
    velocity[35:] = 3500.0
    write_map(rd.map("latent", gather), velocity)
    absent = tuple(d for d in DEVICES if d not in present)
    return Result(gather=gather, mode="latent", present=tuple(present), absent=absent,
                  incomplete=(), partial=bool(absent), at_deadline=bool(absent),
                  deadline_extended=0, wait_s=0.01, decode_start_ns=base + 12_000_000,
                  decode_end_ns=base + 30_000_000, decode_batch=1, devices=devices,
                  wire_bytes=972 * len(present), map=RunDir.map_ref("latent", gather),
                  metrics={"mae": 0.1, "rmse": 0.12, "ssim": 0.6})


@pytest.fixture
def recorded_rundir(tmp_path: Path) -> Path:
    """A run dir as a 5-device testbed leaves it after 3 EPIC gathers, device-3 killed
    before the third (a partial decode), written through epic.rundir."""
    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    rd.maps.mkdir()
    shutil.copyfile(REPO / "topology.yaml", rd.topology)
    rd.credentials.write_text(json.dumps({"central": {"password": SECRET}}))
    now_s = time.time()
    write_record(rd.central_status, CentralStatus.from_dict({
        "pid": 1, "started_ns": T0_NS, "updated_ns": int(now_s * 1e9), "testbed": "epic-5",
        "connected": True, "connects": 1,
        "frames": {"received": 14, "accepted": 14, "rejected": {}},
        "gathers": {"decoded": {"latent": 3}, "partial": 1, "dropped": 0, "pending": 0,
                    "decode_errors": 0},
        "delivery": {"confirmations_sent": 14, "deadline_extensions": 0},
        "status_messages": 10, "device_status": dict.fromkeys(DEVICES, "online"),
        "last_gather": None}))
    for k, device in enumerate(DEVICES):
        write_record(rd.proxy_status(device), _proxy(device, 3 + k, 3000 + k, now_s))
    write_record(rd.faults, Faults(dead={"device-3": now_s}))
    append_record(rd.results, _result(0, DEVICES, rd))
    append_record(rd.results, _result(1, DEVICES, rd))
    append_record(rd.results, _result(2, [d for d in DEVICES if d != "device-3"], rd))
    return rd.root


class _Server:
    """A real uvicorn serving ``app`` on a free loopback port, in a thread."""

    def __init__(self, app) -> None:
        self.port = free_port("127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server failed"
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def serve():
    servers = []

    def start(app) -> _Server:
        servers.append(_Server(app))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def _get(url: str, headers: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _value(family, _name: str | None = None, **labels) -> float:
    (sample,) = [s for s in family.samples
                 if all(s.labels.get(k) == v for k, v in labels.items())
                 and s.name == (_name or s.name)]
    return sample.value


def test_metrics_parse_with_prometheus_parser(recorded_rundir, serve):
    server = serve(create_app(recorded_rundir, predict=False))
    status, body = _get(server.url + "/metrics")
    assert status == 200
    families = _families(body.decode())
    assert families["epic_frames"].type == "counter"
    assert _value(families["epic_frames"]) == 14
    link = families["epic_link_bytes"]
    assert _value(link, device="device-2", direction="up") == 3001
    assert _value(link, device="device-2", direction="down") == 500
    energy = families["epic_radio_energy_joules"]
    assert energy.type == "counter"
    assert {s.labels["state"] for s in energy.samples} == {"tx", "rx", "idle", "sleep"}
    assert _value(energy, device="device-1", state="tx") == pytest.approx(0.004)
    up = families["epic_device_up"]
    assert _value(up, device="device-3") == 0 and _value(up, device="device-1") == 1
    assert _value(families["epic_gathers_decoded"], mode="epic") == 3
    assert _value(families["epic_gathers_partial"], mode="epic") == 1
    # the stage histogram: 14 device receipts, 3 decodes; every latency here is < 0.1 s
    hist = families["epic_stage_latency_seconds"]
    assert hist.type == "histogram"
    stages = {s.labels["stage"] for s in hist.samples}
    assert {"encode", "link_broker", "assembly", "decode"} <= stages
    count = {s.labels["stage"]: s.value for s in hist.samples if s.name.endswith("_count")}
    assert count["encode"] == 14 and count["decode"] == 3
    buckets = [s for s in hist.samples
               if s.name.endswith("_bucket") and s.labels["stage"] == "encode"]
    assert _value(hist, stage="encode", le="0.001", _name=buckets[0].name) == 0
    assert _value(hist, stage="encode", le="0.0025", _name=buckets[0].name) == 14
    assert _value(hist, stage="encode", le="+Inf", _name=buckets[0].name) == 14
    total = [s.value for s in hist.samples if s.name.endswith("_sum")
             and s.labels["stage"] == "encode"]
    assert total == [pytest.approx(14 * 0.002)]
    assert _value(families["epic_reconstruction_ssim"], mode="epic") == pytest.approx(0.6)
    assert _value(families["epic_central_connected"]) == 1


def test_event_stream_pushes_view_and_maps(recorded_rundir, serve):
    server = serve(create_app(recorded_rundir, predict=False))
    events: dict[str, list[dict]] = {}
    with urllib.request.urlopen(server.url + "/events", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        kind = None
        while "state" not in events:
            line = stream.readline().decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.setdefault(kind, []).append(json.loads(line[6:]))
    (view,) = events["state"]
    assert [d["id"] for d in view["devices"]] == DEVICES
    dead = {d["id"] for d in view["devices"] if d["dead"]}
    assert dead == {"device-3"}
    assert [m["gather"] for m in events["map"]] == [0, 1, 2]
    last = events["map"][-1]
    assert last["partial"] and last["absent"] == ["device-3"]
    values = np.frombuffer(__import__("base64").b64decode(last["map_u16"]), "<u2")
    assert values.reshape(70, 70)[0, 0] == 2100 and values.reshape(70, 70)[-1, 0] == 3500


def test_no_credentials_and_no_files(recorded_rundir, serve):
    server = serve(create_app(recorded_rundir, predict=False))
    for path in ("/", "/api/state", "/metrics"):
        status, body = _get(server.url + path)
        assert status == 200 and SECRET.encode() not in body, path
    for path in ("/credentials.json", "/maps/latent-0.npy", "/static/app.js",
                 "/../credentials.json", "/results.jsonl"):
        status, body = _get(server.url + path)
        assert status == 404 and SECRET.encode() not in body, path


def test_loopback_bind_refuses_foreign_host_header(recorded_rundir, serve):
    server = serve(create_app(recorded_rundir, predict=False))
    assert _get(server.url + "/healthz", {"Host": "attacker.example:8050"})[0] == 403
    assert _get(server.url + "/healthz", {"Host": f"localhost:{server.port}"})[0] == 200


def test_token_is_checked_on_every_request(recorded_rundir, serve):
    token = "a-long-enough-test-token"
    server = serve(create_app(recorded_rundir, token=token, loopback_only=False,
                              predict=False))
    for path in ("/", "/events", "/metrics", "/api/state", "/healthz"):
        assert _get(server.url + path)[0] == 401, path
        assert _get(server.url + path + "?token=wrong")[0] == 401, path
    assert _get(server.url + "/metrics", {"Authorization": f"Bearer {token}"})[0] == 200
    assert _get(server.url + f"/?token={token}")[0] == 200
    with urllib.request.urlopen(server.url + f"/events?token={token}", timeout=10) as s:
        assert s.status == 200 and s.readline().startswith(b"retry:")


def test_binding_beyond_loopback_needs_a_token(recorded_rundir, capsys):
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(InputError, match="--token"):
        check_bind("0.0.0.0", None)
    with pytest.raises(InputError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    code = main(["dashboard", "--dir", str(recorded_rundir), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert code == 2 and "--token" in err and len(err.strip().splitlines()) == 1


def test_state_reads_whole_lines_and_restarts_with_a_new_central(recorded_rundir):
    state = DashboardState(recorded_rundir, predict=False)
    assert state.refresh()
    assert state.gathers == {"epic": 3} and state.partial == {"epic": 1}
    rd = RunDir(recorded_rundir)
    line = json.dumps(_result(3, DEVICES, rd).to_dict())
    with open(rd.results, "a") as handle:  # a line still being appended: held back
        handle.write(line[:40])
    state.refresh()
    assert state.gathers == {"epic": 3}
    with open(rd.results, "a") as handle:
        handle.write(line[40:] + "\n")
    assert state.refresh() and state.gathers == {"epic": 4}
    assert [m.payload["gather"] for m in state.maps] == [0, 1, 2, 3]
    rd.rotate()  # a new testbed up: central starts an empty results.jsonl
    append_record(rd.results, _result(0, DEVICES, rd))
    assert state.refresh() and state.gathers == {"epic": 1} and state.partial == {}


def test_grafana_dashboard_queries_exported_metrics(recorded_rundir):
    """Every epic_* series that docs/grafana-dashboard.json queries is one /metrics exports."""
    from emulation.dashboard.metrics import render
    from emulation.dashboard.state import DashboardState as State

    state = State(recorded_rundir, predict=True)
    state.refresh()
    exported = {s.name for f in text_string_to_metric_families(render(state).decode())
                for s in f.samples}
    dashboard = json.loads((REPO / "docs" / "grafana-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel["targets"]
               for name in __import__("re").findall(r"epic_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, sorted(queried - exported)
