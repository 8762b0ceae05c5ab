"""The testbed's runtimes behind one interface: roles as processes, or as containers.

``RUNTIMES[kind](rundir)`` makes the runtime ``epic testbed up --runtime KIND`` starts;
:func:`runtime_for` finds the runtime of an existing run directory from what it recorded
(docker.json: containers; else processes, testbed.json), so that ``epic replay`` and every
``epic testbed fault`` verb need only ``--dir``.
"""

from __future__ import annotations

from pathlib import Path

from emulation.runtime.base import (
    DEFAULT_LEAD_S,
    AgentRun,
    LinkState,
    RoleState,
    Runtime,
    TestbedStatus,
    dead_devices,
)
from emulation.runtime.docker import DockerRuntime
from emulation.runtime.process import ProcessRuntime

__all__ = [
    "DEFAULT_LEAD_S",
    "RUNTIMES",
    "AgentRun",
    "DockerRuntime",
    "LinkState",
    "ProcessRuntime",
    "RoleState",
    "Runtime",
    "TestbedStatus",
    "dead_devices",
    "runtime_for",
]

RUNTIMES: dict[str, type[Runtime]] = {"process": ProcessRuntime, "docker": DockerRuntime}


def runtime_for(rundir: Path) -> Runtime:
    """The runtime whose testbed is recorded in ``rundir``; the process runtime if none is
    (its methods then say that no testbed is there)."""
    for kind in (DockerRuntime, ProcessRuntime):  # a stale testbed.json may lie beside
        runtime = kind(rundir)
        if runtime.recorded():
            return runtime
    return ProcessRuntime(rundir)
