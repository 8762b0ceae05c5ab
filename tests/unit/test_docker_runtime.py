"""The docker runtime without an engine: its specs agree with docker-compose.yml, and with no
engine reachable (the situation on the development machine) `up` fails with one clear line."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from emulation.compose import DEFAULT_GATHERS, RUN_DIR, compose_text
from emulation.docker_specs import (
    BROKER_PORT,
    RESIDENT,
    RUNTIME_LABELS,
    ContainerSpec,
    container_specs,
)
from emulation.runtime import DockerRuntime, runtime_for
from emulation.runtime.docker import connect, engine_problem
from emulation.testbed import prepare_compose_runtime
from epic.errors import InputError, RunError
from epic.rundir import (
    CentralStatus,
    DeliveryCounts,
    Endpoint,
    FrameCounts,
    GatherCounts,
    ProxyStatus,
    RadioEnergy,
    ReloadState,
    RunDir,
    write_record,
)
from epic.topology import load_topology
from epic_cli import main
from tests.conftest import REPO

COMPOSE = REPO / "docker-compose.yml"
NO_ENGINE = engine_problem()
needs_no_engine = pytest.mark.skipif(NO_ENGINE is None,
                                     reason="a Docker engine answers here; the no-engine "
                                            "path cannot be exercised")


def _substitute(node, env: dict[str, str]):
    """Compose's variable interpolation: ${X}, ${X:-default} and ${X:?error}, recursively."""
    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise AssertionError(f"compose needs ${name}: {arg}")
        return arg or ""

    if isinstance(node, str):
        return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, node)
    if isinstance(node, list):
        return [_substitute(item, env) for item in node]
    if isinstance(node, dict):
        return {key: _substitute(value, env) for key, value in node.items()}
    return node


def _volumes(entries: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for entry in entries:
        host, bind, *mode = entry.split(":")
        out[host] = {"bind": bind, "mode": mode[0] if mode else "rw"}
    return out


def _ports(entries: list[str]) -> dict[str, int]:
    return {f"{entry.split(':')[1]}/tcp": int(entry.split(":")[0]) for entry in entries}


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"EPIC_RUNDIR": str(tmp_path / "run"), "EPIC_UID": "1234", "EPIC_GID": "5678",
            "EPIC_DATA": str(tmp_path / "data")}


@pytest.fixture
def compose(env) -> dict:
    return _substitute(yaml.safe_load(COMPOSE.read_text())["services"], env)


def test_the_committed_compose_file_is_the_generated_one():
    assert COMPOSE.read_text() == compose_text(load_topology(REPO / "topology.yaml")), (
        "docker-compose.yml is stale: run `epic testbed compose`")


@pytest.fixture
def specs(env) -> dict[str, ContainerSpec]:
    return container_specs(load_topology(REPO / "topology.yaml"), Path(env["EPIC_RUNDIR"]),
                           data_dir=Path(env["EPIC_DATA"]), user="1234:5678",
                           gathers=DEFAULT_GATHERS)


def _in_rundir(value, rundir: str):
    """Compose's paths in the run volume (/run/epic) as the SDK runtime's (RUNDIR)."""
    if isinstance(value, str):
        return value.replace(RUN_DIR, rundir)
    return [_in_rundir(v, rundir) for v in value]


def test_specs_have_the_compose_roles(compose, specs):
    """The SDK runtime starts compose's long-running roles and devices; compose adds its
    one-shot init (credentials: `up` writes them itself) and results steps, and its dashboard
    container (the SDK runtime's `up --dashboard` runs it as a host process)."""
    assert list(specs) == [s for s in compose if s not in ("init", "results", "dashboard")]
    assert [s for s in specs if specs[s].resident] == list(RESIDENT)
    assert all(compose[s]["depends_on"]["link-proxies"] == {"condition": "service_healthy"}
               for s in specs if not specs[s].resident)


def test_every_spec_agrees_with_its_compose_service(compose, specs, env):
    rundir = str(Path(env["EPIC_RUNDIR"]).resolve())
    for name, spec in specs.items():
        service = compose[name]
        assert spec.service == name
        if "build" in service:
            assert service["build"]["context"] == ".", name  # the SDK builds from REPO
        if name == "broker":  # compose builds it on the base image the SDK runs directly
            assert service["build"]["args"]["BASE"] == spec.image
        else:
            assert spec.image == service["image"], name
            assert spec.dockerfile in (None, service["build"]["dockerfile"]), name
        command = list(service.get("command", ()))
        if "--follow" in command:  # compose's proxies follow the user's file; the SDK's the
            at = command.index("--follow")  # run dir's copy (the host folder) directly
            del command[at:at + 2]
        assert spec.command == (tuple(_in_rundir(command, rundir))
                                if "command" in service else None), name
        env_compose = {k: _in_rundir(v, rundir) for k, v in
                       service.get("environment", {}).items() if k != "EPIC_TRUTH"}
        env_spec = {k: v for k, v in spec.environment.items()
                    if k not in ("EPIC_CHECKPOINT", "EPIC_DATA")}
        env_compose.pop("EPIC_DATA", None)
        env_compose.pop("EPIC_SYNC_DIR", None)  # compose's own start-instant volume
        assert env_spec == env_compose, name
        assert set(spec.depends_on) <= {"broker", "central", "link-proxies"}, name
        assert set(spec.depends_on) == set(service["depends_on"]) - {"init"}, name
        compose_labels = service.get("labels", {})
        assert {k: spec.labels[k] for k in compose_labels} == compose_labels, name
        assert set(spec.labels) - set(compose_labels) == set(RUNTIME_LABELS) - {
            "epic.testbed"}, name
        assert spec.labels["epic.service"] == name
        # the device's hardware class: CPU quota and memory limit, the same in both
        cpus = service.get("cpus")
        assert spec.nano_cpus == (None if cpus is None else round(cpus * 1e9)), name
        assert spec.mem_limit == service.get("mem_limit"), name


def test_specs_follow_the_given_topology_not_the_default(tmp_path):
    text = (REPO / "topology.yaml").read_text().replace("testbed: epic-5", "testbed: lab")
    text = text[:text.index("devices:")] + (
        "devices:\n"
        "  - {id: device-7, receivers: [0, 35], link: wifi, energy: wifi-80211n}\n"
        "  - {id: device-9, receivers: [35, 70], link: wifi, energy: wifi-80211n}\n")
    path = tmp_path / "two.yaml"
    path.write_text(text)
    rundir = tmp_path / "run"
    specs = container_specs(load_topology(path), rundir, broker_host_port=None)
    assert list(specs) == [*RESIDENT, "device-7", "device-9"]
    assert specs["broker"].ports == {}  # not published
    assert specs["device-9"].environment["EPIC_DEVICE_ID"] == "9"
    assert specs["device-9"].environment["EPIC_BROKER_PORT"] == "18831"  # 2nd proxy port
    assert specs["device-9"].labels["epic.receivers"] == "35-70"
    assert specs["central"].container_name() == "lab-central"
    for spec in specs.values():
        assert spec.labels["epic.testbed"] == "lab"
        assert spec.labels["epic.rundir"] == str(rundir.resolve())
        if spec.environment:
            assert spec.environment["EPIC_TOPOLOGY"] == f"{rundir.resolve()}/topology.yaml"


def test_central_files_are_mounted_read_only_at_their_own_path(tmp_path):
    checkpoint = tmp_path / "m.pt"
    specs = container_specs(load_topology(REPO / "topology.yaml"), tmp_path / "run",
                            checkpoint=checkpoint, truth=tmp_path / "truth")
    env, volumes = specs["central"].environment, specs["central"].volumes
    assert env["EPIC_CHECKPOINT"] == str(checkpoint)
    assert env["EPIC_TRUTH"] == str(tmp_path / "truth")
    assert "EPIC_RAW_CHECKPOINT" not in env
    assert volumes[str(checkpoint)] == {"bind": str(checkpoint), "mode": "ro"}


def test_run_kwargs_put_the_service_name_on_the_network(specs):
    docker = pytest.importorskip("docker")
    client = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.44")  # offline

    class Client:
        api = client

    kwargs = specs["broker"].run_kwargs(Client(), "epic-5-net")
    assert kwargs["name"] == "epic-5-broker" and kwargs["detach"] is True
    assert kwargs["network"] == "epic-5-net"
    assert kwargs["networking_config"]["epic-5-net"]["Aliases"] == ["broker"]
    assert kwargs["ports"] == {f"{BROKER_PORT}/tcp": BROKER_PORT}
    assert kwargs["command"][-1].endswith("/mosquitto.conf")
    assert "command" not in specs["central"].run_kwargs(Client(), "n")  # the image's CMD


def test_dockerignore_keeps_what_the_dockerfiles_copy():
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".venv", "data", "runs", ".git"} <= ignored
    for dockerfile in ("devices/Dockerfile", "central/Dockerfile"):
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for src in line.split()[1:-1]:
                    assert src.split("/")[0] not in ignored, f"{dockerfile}: {src} ignored"


@needs_no_engine
def test_connect_without_an_engine_is_one_clear_line():
    pytest.importorskip("docker")
    with pytest.raises(InputError) as info:
        connect(timeout_s=5)
    message = str(info.value)
    assert message.startswith("no Docker engine reachable (")
    assert message.endswith("run without --runtime docker to use processes")
    assert "\n" not in message


def test_connect_without_the_docker_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "docker", None)  # import docker -> ImportError
    with pytest.raises(InputError, match=r"docker Python package is not installed"):
        connect()


@needs_no_engine
def test_cli_up_docker_exits_2_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("docker")
    rundir = tmp_path / "run"
    assert main(["testbed", "up", "--runtime", "docker", "--dir", str(rundir),
                 "--topology", str(REPO / "topology.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("epic: error: no Docker engine reachable (")
    assert err.endswith("run without --runtime docker to use processes")
    assert not rundir.exists()  # failed before writing credentials


def test_down_and_status_without_a_docker_testbed(tmp_path):
    assert DockerRuntime(tmp_path / "nowhere").down() == []  # safe, needs no engine
    assert DockerRuntime(tmp_path).down() == []
    with pytest.raises(InputError, match="no docker testbed"):
        DockerRuntime(tmp_path).status()


class _Container:
    def __init__(self, name: str, service: str, calls: list[str]) -> None:
        self.name, self.labels, self.calls = name, {"epic.service": service}, calls

    def stop(self, timeout: int) -> None:
        self.calls.append(f"stop {self.name}")

    def logs(self) -> bytes:
        return f"log of {self.name}\n".encode()

    def remove(self, force: bool) -> None:
        self.calls.append(f"remove {self.name}")


def test_down_removes_what_carries_this_testbeds_labels_in_order(tmp_path):
    """A stand-in client: the engine does the label filtering; check what we ask and do."""
    pytest.importorskip("docker")
    rundir = tmp_path.resolve()
    (rundir / "docker.json").write_text(json.dumps({"testbed": "tb"}))
    calls: list[str] = []
    filters_seen = []
    names = ["tb-broker", "tb-device-1", "tb-link-proxies", "tb-central"]

    class Network:
        name = "tb-net"

        def remove(self) -> None:
            calls.append("remove network")

    class Listing:
        def list(self, all=False, filters=None):
            filters_seen.append(filters)
            return [_Container(n, n[3:], calls) for n in names] if all else []

    class Networks:
        def list(self, filters=None):
            filters_seen.append(filters)
            return [Network()]

    class Client:
        containers, networks = Listing(), Networks()

    assert isinstance(runtime_for(rundir), DockerRuntime)  # found from the run dir alone
    removed = DockerRuntime(rundir, client=Client()).down(timeout_s=1)
    assert removed == ["tb-device-1", "tb-central", "tb-link-proxies", "tb-broker"]
    assert calls[-1] == "remove network"
    assert calls[:2] == ["stop tb-device-1", "remove tb-device-1"]
    for filters in filters_seen:
        assert filters == {"label": ["epic.testbed=tb", f"epic.rundir={rundir}"]}
    assert (rundir / "logs" / "central.log").read_text() == "log of tb-central\n"
    assert not (rundir / "docker.json").exists()


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                    reason="mosquitto_passwd is not on PATH (apt install mosquitto)")
def test_compose_runtime_has_the_conf_the_broker_spec_names_and_the_topology(tmp_path):
    topology = tmp_path / "mine.yaml"
    topology.write_text((REPO / "topology.yaml").read_text())
    rundir = prepare_compose_runtime(topology, tmp_path / "run")
    spec = container_specs(load_topology(topology), rundir)["broker"]
    conf = Path(spec.command[-1]).read_text()
    assert f"listener {BROKER_PORT} 0.0.0.0" in conf
    assert (rundir / "topology.yaml").read_text() == topology.read_text()  # what roles read
    assert spec.volumes[str(rundir)]["bind"] == str(rundir)


class _FakeEngine:
    """Stands in for docker.DockerClient: records calls; 'running' central and proxies write
    their status files into the mounted RUNDIR as the real roles do."""

    def __init__(self, central_exits: bool = False) -> None:
        self.calls: list[tuple] = []
        self.started: dict[str, _Container] = {}
        self.central_exits = central_exits
        engine = self

        class Images:
            def get(self, tag):
                engine.calls.append(("get", tag))

            def build(self, **kwargs):
                engine.calls.append(("build", kwargs["tag"], kwargs["dockerfile"]))

        class Containers:
            def list(self, all=False, filters=None):
                rundir = [f for f in filters["label"] if f.startswith("epic.rundir=")]
                return list(engine.started.values()) if rundir else []

            def run(self, **kwargs):
                return engine.run(**kwargs)

        class Networks:
            def list(self, filters=None):
                return []

            def create(self, name, **kwargs):
                engine.calls.append(("network", name, kwargs["labels"]))

        class Api:
            def create_endpoint_config(self, aliases):
                return {"Aliases": aliases}

        self.images, self.containers, self.networks, self.api = (
            Images(), Containers(), Networks(), Api())

    def run(self, **kwargs):
        service = kwargs["labels"]["epic.service"]
        rundir = Path(kwargs["labels"]["epic.rundir"])
        self.calls.append(("run", kwargs["name"], kwargs["networking_config"]))
        container = _Container(kwargs["name"], service, [])
        container.status = "exited" if self.central_exits and service == "central" else (
            "running")
        container.reload = lambda: None
        container.logs = lambda tail=None: b"boom\n"
        container.kill = lambda signal: self.calls.append(("signal", kwargs["name"], signal))
        files = RunDir(rundir)
        if service == "central" and not self.central_exits:  # what a connected central writes
            write_record(files.central_status, _central_status())
        if service == "link-proxies":
            for device in load_topology(files.topology).devices:
                write_record(files.proxy_status(device.id), _proxy_status(device.id))
        self.started[kwargs["name"]] = container
        return container


def _central_status() -> CentralStatus:
    return CentralStatus(
        pid=1, started_ns=0, updated_ns=0, testbed="epic-5", connected=True, connects=1,
        frames=FrameCounts(received=0, accepted=0, rejected={}),
        gathers=GatherCounts(decoded={}, partial=0, dropped=0, pending=0, decode_errors=0),
        delivery=DeliveryCounts(confirmations_sent=0, deadline_extensions=0),
        status_messages=0, device_status={}, last_gather=None)


def _proxy_status(device_id: str) -> ProxyStatus:
    counters = dict.fromkeys(("up_mqtt_bytes", "up_wire_bytes", "up_packets", "publishes",
                              "resent_rounds", "given_up", "down_mqtt_bytes",
                              "down_wire_bytes", "down_packets"), 0)
    return ProxyStatus(
        device=device_id, state="running", pid=1, listen=Endpoint(host="0.0.0.0", port=1),
        broker=Endpoint(host="broker", port=1883), topology="topology.yaml", link="l",
        link_spec={}, connections_open=0, started_unix_s=0.0, updated_unix_s=0.0,
        uptime_s=0.0, reload=ReloadState(count=0, last_unix_s=None, error=None),
        tx_s=0.0, rx_s=0.0, energy_j=RadioEnergy(tx=0, rx=0, idle=0, sleep=0, comm=0, radio=0),
        **counters)


needs_passwd = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                                  reason="mosquitto_passwd is not on PATH")


@needs_passwd
def test_up_orchestrates_images_network_and_roles_with_a_stand_in_engine(tmp_path):
    engine = _FakeEngine()
    status = DockerRuntime(tmp_path / "run", client=engine).up(REPO / "topology.yaml",
                                                               timeout_s=5)
    rundir = (tmp_path / "run").resolve()
    assert ("build", "epic-device", "devices/Dockerfile") in engine.calls
    assert ("build", "epic-central", "central/Dockerfile") in engine.calls
    runs = [c for c in engine.calls if c[0] == "run"]
    assert [c[1] for c in runs] == ["epic-5-broker", "epic-5-central", "epic-5-link-proxies"]
    assert runs[1][2] == {"epic-5-net": {"Aliases": ["central"]}}
    # once healthy, the broker saves central's new session at once
    assert engine.calls[-1] == ("signal", "epic-5-broker", "SIGUSR1")
    assert ("network", "epic-5-net", {"epic.testbed": "epic-5",
                                      "epic.rundir": str(rundir)}) in engine.calls
    state = json.loads((rundir / "docker.json").read_text())
    assert state["runtime"] == "docker" and state["started_unix_s"] is not None
    assert status.runtime == "docker" and status.running and status.network == "epic-5-net"
    assert status.roles["central"].where == "container epic-5-central"
    assert set(status.links) == set(state["devices"])
    assert isinstance(runtime_for(rundir), DockerRuntime)  # found from the run dir alone
    with pytest.raises(InputError, match="docker testbed is recorded"):
        DockerRuntime(rundir, client=engine).up(REPO / "topology.yaml")


@needs_passwd
def test_up_that_fails_cleans_up_and_says_why(tmp_path):
    engine = _FakeEngine(central_exits=True)
    with pytest.raises(RunError, match=r"container epic-5-central exited .*boom"):
        DockerRuntime(tmp_path / "run", build=False, client=engine).up(
            REPO / "topology.yaml", timeout_s=5)
    assert not any(c[0] == "build" for c in engine.calls)  # --no-build: tags looked up
    assert not (tmp_path / "run" / "docker.json").exists()  # down ran
