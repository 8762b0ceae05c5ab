"""The device agent's stats file: rewritten at most every ``every_s`` while replaying, always on
close (a rewrite costs about as much as an encode, so it is throttled)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from devices.agent import STATS_PERIOD_S, AgentStats, DeviceAgent
from epic.topology import load_topology
from tests.conftest import REPO


def _agent(rundir: Path) -> DeviceAgent:
    """A DeviceAgent with only what ``_write_stats`` uses (no encoder, no MQTT session)."""
    agent = DeviceAgent.__new__(DeviceAgent)
    agent.spec = load_topology(REPO / "topology.yaml").devices[0]
    agent.stats = AgentStats(device=agent.spec.id, mode="epic")
    agent.rundir = rundir
    agent._stats_written_s = -math.inf
    return agent


def test_stats_rewrites_are_throttled_but_a_plain_write_always_happens(tmp_path: Path):
    agent = _agent(tmp_path)
    path = tmp_path / f"agent-{agent.spec.id}.json"
    agent.stats.gathers_published = 1
    agent._write_stats(every_s=3600.0)  # the first write is never held back
    assert json.loads(path.read_text())["gathers_published"] == 1
    agent.stats.gathers_published = 2
    agent._write_stats(every_s=3600.0)  # within the period: skipped
    assert json.loads(path.read_text())["gathers_published"] == 1
    agent._write_stats()  # close(): unconditional
    assert json.loads(path.read_text())["gathers_published"] == 2
    assert 0 < STATS_PERIOD_S <= 1.0
