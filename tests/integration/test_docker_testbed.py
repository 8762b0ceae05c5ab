"""The docker runtime end to end: build the images, up, replay through device containers, down.

Needs a Docker engine (and mosquitto_passwd on the host for the credentials); where none is
reachable, the test is SKIPPED and says so. Images are built on the registry bases, or on
the local ones of docker/build-local-base.sh where the engine cannot pull.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emulation import docker_runtime
from epic.errors import InputError
from tests.conftest import REPO
from tests.integration.conftest import requires_mosquitto
from tests.integration.test_compose import _bases

NO_ENGINE = docker_runtime.engine_problem()

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
