"""The dashboard's one door to the run directory: read-only, tolerant, cheap to call often.

Everything the dashboard knows about a run comes through :class:`RunDirSource`, and that goes
through :mod:`epic.rundir`, the module that owns the run directory: its paths
(:class:`~epic.rundir.RunDir`) and its typed, versioned records (``CentralStatus``,
``ProxyStatus``, ``AgentSummary``, ``Faults``, ``TestbedInfo``, ``Result``,
``DroppedGather``). The dashboard never writes: files are only opened for reading, and a
missing, half-written or invalid file reads as ``None`` (or the last good record, or no new
lines), never as an error, because the roles rewrite their status files every second while
the dashboard watches.

Each JSON file is re-read only when its ``(inode, size, mtime)`` changes, and the JSON-lines
files (results.jsonl, dropped.jsonl) are read on from a cursor, whole lines only (a line
being appended waits for its newline, as :func:`epic.rundir.read_records` does), each checked
with the record's ``from_dict``. A refresh of an idle run dir costs a dozen ``stat`` calls.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from epic.rundir import (
    AgentSummary,
    CentralStatus,
    DroppedGather,
    Faults,
    ProxyStatus,
    RecordError,
    Result,
    RunDir,
    TestbedInfo,
    read_json,
    read_record,
)

__all__ = ["MAP_SHAPE", "Cursor", "RunDirSource"]

log = logging.getLogger(__name__)

MAP_SHAPE: tuple[int, int] = (70, 70)


@dataclass(frozen=True)
class Cursor:
    """Where the last read of a JSON-lines file stopped: the file's inode and byte offset.

    A different inode (central's earlier file moved aside by a new ``testbed up``) or a
    shorter file restarts the read at 0; the read then says so.
    """

    inode: int = -1
    offset: int = 0


class RunDirSource:
    """Read-only, typed access to one run directory.

    Args:
        rundir: the run directory (it may not exist yet; everything then reads as absent).
        truth: the true maps' directory where the run dir names none (a compose testbed has
            no testbed.json), or None.
    """

    def __init__(self, rundir: Path, truth: Path | None = None) -> None:
        self.rundir = Path(rundir).resolve()
        self.truth_dir = str(truth) if truth is not None else None
        self.paths = RunDir(self.rundir)
        self._cache: dict[Path, tuple[tuple[int, int, int], Any]] = {}
        self._topology_cache: tuple[tuple[int, int, int], Any] | None = None
        self._truth_cache: tuple[str, Any] | None = None

    # -- JSON files, re-read when they change ----------------------------------------------
    @staticmethod
    def _stat_key(path: Path) -> tuple[int, int, int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _read(self, path: Path, kind: type | None) -> Any:
        """``kind``'s record in ``path`` (a dict if ``kind`` is None), cached by stat; the
        last good value while the file is invalid, None while it is absent."""
        key = self._stat_key(path)
        if key is None:
            self._cache.pop(path, None)
            return None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            value = read_json(path) if kind is None else read_record(path, kind)
        except RecordError as exc:
            log.warning("%s", exc)
            return cached[1] if cached is not None else None
        self._cache[path] = (key, value)
        return value

    def central_status(self) -> CentralStatus | None:
        """central-status.json: central's counters (rewritten every second), or None."""
        return self._read(self.paths.central_status, CentralStatus)

    def testbed(self) -> TestbedInfo | None:
        """testbed.json (process runtime): roles, PIDs, ports, truth dir; or None."""
        return self._read(self.paths.testbed, TestbedInfo)

    def docker(self) -> dict | None:
        """docker.json (container runtime through the Docker SDK), or None."""
        return self._read(self.paths.docker, None)

    def faults(self) -> dict[str, float]:
        """Devices marked dead by ``kill-device``: device id -> kill time (Unix s)."""
        faults = self._read(self.paths.faults, Faults)
        return dict(faults.dead) if faults is not None else {}

    def replay_summary(self) -> dict | None:
        """replay.json: the last replay's per-mode summary and the SimPy prediction."""
        return self._read(self.paths.replay, None)

    def proxy_status(self, device: str) -> ProxyStatus | None:
        """proxy-<device>.json: the device's link proxy (bytes, energy, link spec, reloads)."""
        return self._read(self.paths.proxy_status(device), ProxyStatus)

    def agent_status(self, device: str) -> AgentSummary | None:
        """agent-<device>.json: the device agent's counters from its last replay."""
        return self._read(self.paths.agent_stats(device), AgentSummary)

    def topology(self):
        """RUNDIR/topology.yaml as an :class:`epic.topology.Topology` (re-read when the file
        changes, e.g. a ``degrade-link`` fault), or None while it is absent or invalid."""
        key = self._stat_key(self.paths.topology)
        if key is None:
            return None
        if self._topology_cache is not None and self._topology_cache[0] == key:
            return self._topology_cache[1]
        from epic.errors import InputError
        from epic.topology import load_topology

        try:
            topology = load_topology(self.paths.topology)
        except (InputError, OSError, ValueError) as exc:
            log.warning("cannot read %s: %s", self.paths.topology, exc)
            return self._topology_cache[1] if self._topology_cache else None
        self._topology_cache = (key, topology)
        return topology

    def changed_key(self, devices: tuple[str, ...]) -> tuple:
        """One value that changes whenever any file the dashboard reads changes."""
        p = self.paths
        files = [p.central_status, p.testbed, p.docker, p.faults, p.replay, p.topology,
                 p.results, p.dropped, *map(p.proxy_status, devices),
                 *map(p.agent_stats, devices)]
        return tuple(self._stat_key(f) for f in files)

    # -- JSON-lines records -----------------------------------------------------------------
    def read_results(self, cursor: Cursor) -> tuple[list[Result], Cursor, bool]:
        """New complete records of results.jsonl after ``cursor``.

        Returns (records, new cursor, restarted): ``restarted`` is True when the file was
        replaced or truncated and the records are read from its start again.
        """
        return self._read_lines(self.paths.results, Result, cursor)

    def read_dropped(self, cursor: Cursor) -> tuple[list[DroppedGather], Cursor, bool]:
        """New complete records of dropped.jsonl (gathers central gave up on)."""
        return self._read_lines(self.paths.dropped, DroppedGather, cursor)

    @classmethod
    def _read_lines(cls, path: Path, kind: type, cursor: Cursor) -> tuple[list, Cursor, bool]:
        try:
            st = os.stat(path)
        except OSError:
            return [], Cursor(), cursor.inode != -1
        restarted = st.st_ino != cursor.inode or st.st_size < cursor.offset
        was_read = cursor.inode != -1
        offset = 0 if restarted else cursor.offset
        if st.st_size == offset:
            return [], Cursor(st.st_ino, offset), restarted and was_read
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read(st.st_size - offset)
        except OSError:
            return [], cursor, False
        end = chunk.rfind(b"\n") + 1  # a line still being appended waits for its newline
        records = []
        for line in chunk[:end].splitlines():
            if not line.strip():
                continue
            try:
                records.append(kind.from_dict(json.loads(line), str(path)))
            except (ValueError, RecordError) as exc:  # RecordError is a ValueError too
                log.warning("%s: skipping a line that is not a %s: %.200s", path,
                            kind.__name__, exc)
        return records, Cursor(st.st_ino, offset + end), restarted and was_read

    # -- arrays -----------------------------------------------------------------------------
    def load_map(self, relative: str) -> np.ndarray | None:
        """A decoded map named by a result record (``maps/<mode>-<gather>.npy``): (70, 70)
        float32, m/s; None if the name is not a map inside RUNDIR/maps or cannot be read."""
        maps = self.paths.maps.resolve()
        path = (self.rundir / relative).resolve()
        if path.parent != maps or path.suffix != ".npy":
            log.warning("ignoring map path %r outside %s", relative, maps)
            return None
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None
        return _as_map(array)

    def truth_map(self, gather: int) -> np.ndarray | None:
        """The true map of ``gather`` from the truth directory central was given (its
        testbed.json ``truth``), (70, 70) float32 m/s; None where unknown."""
        info = self.testbed()
        truth = info.truth if info is not None else (self.docker() or {}).get("truth")
        truth = truth or self.truth_dir
        if not isinstance(truth, str) or not truth:
            return None
        if self._truth_cache is None or self._truth_cache[0] != truth:
            from epic.data.openfwi import OpenFWIDataset
            from epic.errors import InputError

            try:
                self._truth_cache = (truth, OpenFWIDataset(truth))
            except (InputError, OSError, ValueError) as exc:
                log.warning("no truth maps from %s: %s", truth, exc)
                self._truth_cache = (truth, None)
        dataset = self._truth_cache[1]
        if dataset is None or not 0 <= gather < len(dataset):
            return None
        try:
            return _as_map(dataset[gather][1])
        except (OSError, ValueError, TypeError):
            return None


def _as_map(array: Any) -> np.ndarray | None:
    if array is None:
        return None
    array = np.asarray(array, dtype=np.float32)
    array = array.reshape(array.shape[-2:]) if array.size == 4900 else array
    return array if array.shape == MAP_SHAPE else None
