"""The docker runtime end to end: build the images, up, replay through device containers, down.

Needs a Docker engine (and mosquitto_passwd on the host for the credentials); where none is
reachable, as on the development machine, the test is SKIPPED and says so. The first run
builds epic-central (CPU torch): allow many minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulation import docker_runtime
from epic.errors import InputError
from tests.conftest import REPO
from tests.integration.conftest import requires_mosquitto

NO_ENGINE = docker_runtime.engine_problem()

pytestmark = [
    pytest.mark.integration,
    requires_mosquitto,
    pytest.mark.skipif(NO_ENGINE is not None,
                       reason=f"docker runtime not run, no Docker engine here: {NO_ENGINE}"),
    pytest.mark.timeout(3600),
]


def _fast_topology(tmp_path: Path) -> Path:
    text = (REPO / "topology.yaml").read_text()
    fast = ("links:\n  fast:\n    kind: dedicated\n    bandwidth_bps: 50.0e+6\n"
            "    delay_s: 0.001\n    mtu_bytes: 1500\n    overhead_bytes: 40\n\n")
    text = text[:text.index("links:")] + fast + text[text.index("devices:"):]
    path = tmp_path / "topology.yaml"
    path.write_text(text.replace("testbed: epic-5", "testbed: dtest")
                    .replace("link: wifi", "link: fast"))
    return path


def test_docker_testbed_up_replay_down(tmp_path, tiny_dataset):
    rundir = tmp_path / "run"
    client = docker_runtime.connect()
    try:
        state = docker_runtime.up(_fast_topology(tmp_path), rundir, build=True,
                                  broker_host_port=None, timeout_s=300)
        assert state["containers"] == ["dtest-broker", "dtest-central", "dtest-link-proxies"]
        now = docker_runtime.status(rundir)
        assert {r: s["alive"] for r, s in now["roles"].items()} == {
            "broker": True, "central": True, "link-proxies": True}
        probe = "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
        client.containers.run("epic-device", entrypoint=["python", "-c", probe], remove=True)

        codes = docker_runtime.run_devices(rundir, tiny_dataset, gathers=2, rate="max")
        assert codes == {f"device-{k}": 0 for k in range(1, 6)}
        results = [json.loads(line) for line in (rundir / "results.jsonl").read_text()
                   .splitlines()]
        assert len({r["gather"] for r in results}) == 2
    finally:
        removed = docker_runtime.down(rundir, timeout_s=10)
    assert sorted(removed) == ["dtest-broker", "dtest-central", "dtest-link-proxies"]
    assert not client.containers.list(all=True, filters={"label": "epic.testbed=dtest"})
    assert (rundir / "logs" / "central.log").is_file()
    assert docker_runtime.down(rundir) == []  # a second down is a no-op
    with pytest.raises(InputError, match="no docker testbed"):
        docker_runtime.status(rundir)
