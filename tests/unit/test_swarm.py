"""docker-stack.yml is generated from topology.yaml and fits what `docker stack deploy` needs.

No engine here: the file's shape (no build/depends_on, one-shots not restarted, placement,
attachable overlays, one secret per device), the start gate and the device's entry steps.
tests/integration/test_swarm_engine.py deploys it on a real single-node swarm.
"""

from __future__ import annotations

import json
import lzma
import re
import shutil
import threading

import numpy as np
import pytest
import yaml

from devices import swarm_entry
from emulation.swarm import (
    DEVICE_LABEL,
    STACK_FILE,
    StartGate,
    make_secrets,
    stack_config,
    stack_text,
)
from epic.broker import free_port
from epic.topology import load_topology
from epic_cli import main
from tests.conftest import REPO

ONE_SHOTS = {"init", "results"}
MANAGER_ROLES = {"init", "broker", "central", "link-proxies", "gate", "results"}


@pytest.fixture(scope="module")
def topology():
    return load_topology(REPO / "topology.yaml")


@pytest.fixture(scope="module")
def stack(topology) -> dict:
    return stack_config(topology)


def test_the_committed_file_is_generated_from_the_topology(topology):
    assert STACK_FILE.read_text() == stack_text(topology), (
        "docker-stack.yml is stale: run `epic testbed stack`")
    assert yaml.safe_load(stack_text(topology)) == stack_config(topology)


def test_the_cli_writes_and_checks_it(tmp_path):
    out = tmp_path / "stack.yml"
    shutil.copy(REPO / "topology.yaml", tmp_path / "topology.yaml")
    topo = str(tmp_path / "topology.yaml")
    assert main(["testbed", "stack", "--topology", topo, "--out", str(out)]) == 0
    assert main(["testbed", "stack", "--topology", topo, "--out", str(out), "--check"]) == 0
    out.write_text(out.read_text() + "# edited\n")
    assert main(["testbed", "stack", "--topology", topo, "--out", str(out), "--check"]) != 0


def test_no_compose_only_keys_and_one_shots_are_not_restarted(stack, topology):
    devices = {d.id for d in topology.devices}
    assert set(stack["services"]) == MANAGER_ROLES | devices
    for name, service in stack["services"].items():
        assert not {"build", "depends_on", "network_mode", "restart"} & set(service), name
        condition = service["deploy"]["restart_policy"]["condition"]
        assert condition == ("none" if name in ONE_SHOTS | devices else "on-failure"), name
        assert service["deploy"]["endpoint_mode"] == "dnsrr"  # no IPVS VIP


def test_placement_managers_and_labelled_device_nodes(stack, topology):
    for name, service in stack["services"].items():
        constraints = service["deploy"]["placement"]["constraints"]
        want = ([f"node.labels.{DEVICE_LABEL} == true"] if name.startswith("device-")
                else ["node.role == manager"])
        assert constraints == want, name
    pinned = stack_config(topology, pin=True)["services"]["device-3"]
    assert "node.labels.epic.device-3 == true" in pinned["deploy"]["placement"]["constraints"]


def test_networks_are_attachable_overlays_and_devices_reach_only_their_proxy(stack, topology):
    assert all(n["driver"] == "overlay" and n["attachable"] for n in stack["networks"].values())
    edges = {f"edge-{d.id}" for d in topology.devices}
    assert set(stack["networks"]) == {"core"} | edges
    services = stack["services"]
    for device in topology.devices:
        assert services[device.id]["networks"] == [f"edge-{device.id}"]
        on_edge = {s for s, spec in services.items() if f"edge-{device.id}" in spec["networks"]}
        assert on_edge == {device.id, "link-proxies", "gate"}
    assert "core" not in services["gate"]["networks"]


def test_each_device_gets_only_its_own_secret_and_no_shared_volume(stack, topology):
    services = stack["services"]
    for device in topology.devices:
        spec = services[device.id]
        assert [s["source"] for s in spec["secrets"]] == [device.id]
        assert spec["secrets"][0]["mode"] == 0o400 and spec["secrets"][0]["uid"] == "10001"
        assert stack["secrets"][device.id]["file"].endswith(f"/{device.id}.json")
        assert all((isinstance(v, dict) and v["type"] == "tmpfs")
                   or str(v).endswith(":/data:ro") for v in spec["volumes"])
    broker_files = {"credentials.json", "passwd", "acl", "mosquitto.conf"}
    holders = {s for s, spec in services.items()
               if broker_files & {x["source"] for x in spec.get("secrets", [])}}
    assert holders == {"init"}


def test_shell_dollars_are_escaped_for_stack_interpolation(stack):
    for name, service in stack["services"].items():
        for arg in service.get("command", []):
            # a literal $ must be $$; ${VAR...} is interpolated by `docker stack deploy`
            assert not re.search(r"(?<!\$)\$(?![{$])", arg.replace("$$", "")), (name, arg)


def test_device_limits_follow_the_compose_service(stack, topology):
    from emulation.compose import compose_config

    composed = compose_config(topology)["services"]
    for device in topology.devices:
        cpus = composed[device.id].get("cpus")
        limits = stack["services"][device.id]["deploy"].get("resources", {}).get("limits", {})
        assert limits.get("cpus") == (None if cpus is None else str(cpus))


def test_the_gate_answers_every_device_the_same_instant():
    gate = StartGate(lead_s=5.0)
    port = free_port()
    threading.Thread(target=gate.serve, args=(port, "127.0.0.1"), daemon=True).start()
    starts = [swarm_entry.ask_gate(f"127.0.0.1:{port}", f"device-{n}", timeout_s=10.0,
                                   poll_s=0.05) for n in (1, 2, 3)]
    assert len(set(starts)) == 1 and starts[0] == gate.start_at_unix_s


def test_a_device_without_a_gate_times_out_with_a_reason():
    with pytest.raises(TimeoutError, match="did not answer"):
        swarm_entry.ask_gate(f"127.0.0.1:{free_port()}", "device-1", timeout_s=0.2, poll_s=0.05)


def test_the_device_unpacks_a_packed_set_and_installs_its_credential(tmp_path):
    packed = tmp_path / "demo"
    packed.mkdir()
    data = np.arange(3 * 5 * 4 * 7, dtype=np.float16).reshape(3, 5, 4, 7)
    with lzma.open(packed / "data.npy.xz", "wb") as handle:
        np.save(handle, data)
    rundir = tmp_path / "run"
    out = swarm_entry.local_data(packed, rundir, gathers=2)
    got = np.load(out / "data0.npy")
    assert got.dtype == np.float32 and np.array_equal(got, data[:2].astype(np.float32))
    plain = tmp_path / "openfwi"
    plain.mkdir()
    assert swarm_entry.local_data(plain, rundir, gathers=2) == plain
    secret = tmp_path / "secret"
    secret.write_text(json.dumps({"passwords": {"device-1": "x"}}))
    installed = swarm_entry.install_credentials(secret, rundir)
    assert installed.name == "credentials.json" and installed.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                    reason="mosquitto_passwd is not on PATH (apt install mosquitto)")
def test_secrets_give_each_device_only_its_password(tmp_path, topology):
    files = make_secrets(REPO / "topology.yaml", tmp_path / "secrets")
    names = {f.name for f in files}
    assert names == {"credentials.json", "passwd", "acl", "mosquitto.conf", "deploy-id",
                     *(f"{d.id}.json" for d in topology.devices)}
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    everyone = json.loads((tmp_path / "secrets" / "credentials.json").read_text())
    for device in topology.devices:
        own = json.loads((tmp_path / "secrets" / f"{device.id}.json").read_text())
        assert own["passwords"] == {device.id: everyone["passwords"][device.id]}
    conf = (tmp_path / "secrets" / "mosquitto.conf").read_text()
    assert "password_file /run/epic/passwd" in conf and str(tmp_path) not in conf
