"""Fixtures: OUR Mosquitto (from broker/mosquitto.conf) on a free port, stopped afterwards."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from epic.broker import BrokerProcess, BrokerRuntime, free_port, prepare_runtime
from epic.mqtt import MqttSettings

TESTBED = "itest"
DEVICE_IDS = (1, 2, 3)

requires_mosquitto = pytest.mark.skipif(
    shutil.which("mosquitto") is None or shutil.which("mosquitto_passwd") is None,
    reason="mosquitto and mosquitto_passwd are not on PATH (apt install mosquitto)",
)


@pytest.fixture
def broker_runtime(tmp_path: Path) -> BrokerRuntime:
    """A runtime dir for testbed 'itest' with devices 1-3 and central, on a free port."""
    return prepare_runtime(tmp_path / "run", testbed=TESTBED, device_ids=DEVICE_IDS,
                           port=free_port())


@pytest.fixture
def broker(broker_runtime: BrokerRuntime) -> Iterator[BrokerProcess]:
    """A running broker; killed (SIGKILL after a SIGTERM timeout) when the test ends."""
    process = BrokerProcess(broker_runtime).start()
    try:
        yield process
    finally:
        process.stop(timeout_s=5)


@pytest.fixture
def settings_for(broker_runtime: BrokerRuntime) -> Callable[..., MqttSettings]:
    """``settings_for("device-1", keepalive_s=2)``: client settings with that user's password.

    ``username=None`` gives an anonymous client; the client id defaults to the username.
    """

    def make(username: str | None, **overrides: object) -> MqttSettings:
        fields: dict[str, object] = {
            "host": broker_runtime.host, "port": broker_runtime.port,
            "client_id": username or "anonymous", "username": username,
            "password": broker_runtime.password(username) if username else None,
            "ca_file": broker_runtime.ca_file,
        }
        fields.update(overrides)
        return MqttSettings(**fields)

    return make
