"""epic.devicespec: the devices the agents read from RUNDIR/devices.json instead of the YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from epic.devicespec import DeviceEntry, read_device_specs, write_device_specs
from epic.errors import InputError
from epic.topology import load_topology

REPO = Path(__file__).resolve().parents[2]


def test_round_trip_equals_the_validated_topology(tmp_path: Path) -> None:
    topology = load_topology(REPO / "topology.yaml")
    path = write_device_specs(tmp_path / "devices.json", topology.testbed,
                              REPO / "topology.yaml", topology.devices)
    specs = read_device_specs(path)
    assert specs.testbed == topology.testbed
    assert specs.topology == (REPO / "topology.yaml").resolve()
    assert specs.devices == tuple(DeviceEntry(d.id, d.number, tuple(d.receivers))
                                  for d in topology.devices)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d.update(version=2), r"version 2, expected 1"),
    (lambda d: d["devices"][1].update(id="device-9"), r"devices\[1\] is not a device entry"),
    (lambda d: d["devices"][0].update(receivers=[14, 0]), r"devices\[0\]"),
    (lambda d: d["devices"][0].pop("number"), r"devices\[0\]"),
    (lambda d: d.pop("testbed"), r"needs a testbed"),
])
def test_a_bad_file_names_the_field(tmp_path: Path, edit, match: str) -> None:
    topology = load_topology(REPO / "topology.yaml")
    path = write_device_specs(tmp_path / "devices.json", topology.testbed,
                              REPO / "topology.yaml", topology.devices)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=match):
        read_device_specs(path)


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read the device specs"):
        read_device_specs(tmp_path / "devices.json")
