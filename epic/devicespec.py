"""The devices of a validated topology, as the device agents read them: RUNDIR/devices.json.

A testbed's run directory is prepared from a topology that :func:`epic.topology.load_topology`
has already validated (pydantic + YAML, about 0.2-0.7 s of imports and parsing). The agents
need only the testbed name and each device's number and receivers, so the preparation writes
them once, here, and an agent reads them with ``json`` instead of validating the whole topology
again at every launch (:func:`read_device_specs` still checks every field it returns).

``devices.json``::

    {"version": 1, "testbed": "epic", "topology": "/abs/RUNDIR/topology.yaml",
     "devices": [{"id": "device-1", "number": 1, "receivers": [0, 14]}, ...]}

It describes the devices of the topology it was written from (``topology``); the link
profiles, which faults edit in place, are not in it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from epic.errors import InputError

__all__ = [
    "DEVICE_SPECS_FILE",
    "DeviceEntry",
    "DeviceSpecs",
    "read_device_specs",
    "write_device_specs",
]

DEVICE_SPECS_FILE = "devices.json"
"""Its name in a run directory."""

_VERSION = 1


@dataclass(frozen=True)
class DeviceEntry:
    """One device: ``id`` (``device-<number>``), ``number`` (>= 1) and its receivers
    ``[start, stop)``."""

    id: str
    number: int
    receivers: tuple[int, int]


@dataclass(frozen=True)
class DeviceSpecs:
    """The testbed name, the topology file the devices came from, and the devices in
    topology order."""

    testbed: str
    topology: Path
    devices: tuple[DeviceEntry, ...]


def write_device_specs(path: Path, testbed: str, topology_path: Path,
                       devices: list[Any]) -> Path:
    """Write ``path`` (atomically) from a validated topology's ``devices`` (objects with
    ``id``, ``number`` and ``receivers``)."""
    data = {"version": _VERSION, "testbed": testbed,
            "topology": str(Path(topology_path).resolve()),
            "devices": [{"id": d.id, "number": int(d.number),
                         "receivers": [int(d.receivers[0]), int(d.receivers[1])]}
                        for d in devices]}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def read_device_specs(path: Path) -> DeviceSpecs:
    """Read ``path`` written by :func:`write_device_specs`.

    Raises:
        InputError: missing or unreadable file, another version, or a field of the wrong type
            (the message names the file and the field).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the device specs ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        got = data.get("version") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: version {got!r}, expected {_VERSION}")
    testbed, topology, items = data.get("testbed"), data.get("topology"), data.get("devices")
    if not isinstance(testbed, str) or not isinstance(topology, str) or not isinstance(
            items, list):
        raise InputError(f"{path}: needs a testbed and a topology (strings) and a devices list")
    devices = []
    for k, item in enumerate(items):
        try:
            number, rx = item["number"], item["receivers"]
            ok = (isinstance(number, int) and number >= 1 and item["id"] == f"device-{number}"
                  and isinstance(rx, list) and len(rx) == 2
                  and all(isinstance(r, int) for r in rx) and 0 <= rx[0] < rx[1])
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise InputError(f"{path}: devices[{k}] is not a device entry: {item!r}")
        devices.append(DeviceEntry(item["id"], number, (rx[0], rx[1])))
    return DeviceSpecs(testbed, Path(topology), tuple(devices))
