"""The run directory: its paths, its typed versioned records, one atomic writer, one reader.

This module owns the run directory the way :mod:`epic.wire` owns the frame bytes. Every role
that writes a run-dir file, and everything that reads one (replay, report, faults, bench,
outside tools), goes through it. docs/rundir.md documents the layout as an interface.

Paths: :class:`RunDir` names every file (``RunDir(root).results``, ``.proxy_status("device-1")``).

Records: frozen dataclasses with a ``version`` field (:data:`RECORD_VERSION`), ``to_dict()``
(the JSON-ready dict, keys in the order written) and ``from_dict(data, source)``, which checks
every field's type and raises :class:`RecordError` naming the file and the field
(``RUNDIR/central-status.json: frames.accepted: expected int, got 'x'``). A record written
without a ``version`` (before versions existed) reads as version 1; another version is an
error. Keys a reader does not know are ignored, so adding a field is not a new version;
removing or renaming one, or changing its meaning or unit, is.

Writing: :func:`write_atomic` (bytes) and :func:`write_record` / :func:`write_json` (JSON) write
a temporary file beside the target and ``os.replace`` it, so a reader sees the old content or
the new, never a mix. :func:`append_record` appends one JSON line in a single ``write``.

Reading: :func:`read_record` (a JSON file; retries a torn read, for files written by other
tools without the rename) and :func:`read_records` (a JSON-lines file that another process may
be appending to: a last line without its newline is held back until it is whole).
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import secrets
import time
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union

import numpy as np

from epic.errors import InputError

__all__ = [
    "RECORD_VERSION",
    "AgentProcesses",
    "AgentSummary",
    "CentralStatus",
    "DeliveryCounts",
    "DeviceReceipt",
    "DroppedGather",
    "EncodeTimes",
    "Endpoint",
    "Faults",
    "FrameCounts",
    "GatherCounts",
    "ProxyStatus",
    "RadioEnergy",
    "RecordError",
    "ReloadState",
    "Result",
    "RoleProcess",
    "RunDir",
    "TestbedInfo",
    "append_record",
    "read_json",
    "read_record",
    "read_records",
    "write_atomic",
    "write_json",
    "write_map",
    "write_record",
]

log = logging.getLogger(__name__)

RECORD_VERSION = 1
"""The version of every record this module writes (see the module docstring's policy)."""

_TORN_READ_RETRIES = 5
_TORN_READ_PAUSE_S = 0.01


class RecordError(InputError):
    """A run-dir file (or one of its lines) that is not a valid record: the message names the
    file, the line for JSON lines, the field and the bad value."""


# -- paths ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RunDir:
    """The names of the files in one run directory.

    Attributes:
        root: the run directory.
    """

    root: Path

    RESULTS: ClassVar[str] = "results.jsonl"
    DROPPED: ClassVar[str] = "dropped.jsonl"
    CENTRAL_STATUS: ClassVar[str] = "central-status.json"
    FAULTS: ClassVar[str] = "faults.json"
    AGENTS: ClassVar[str] = "agents.json"
    TESTBED: ClassVar[str] = "testbed.json"
    DOCKER: ClassVar[str] = "docker.json"
    REPLAY: ClassVar[str] = "replay.json"
    REPLAY_HISTORY: ClassVar[str] = "replay-history.jsonl"
    TOPOLOGY: ClassVar[str] = "topology.yaml"
    MAPS: ClassVar[str] = "maps"
    LOGS: ClassVar[str] = "logs"
    CREDENTIALS: ClassVar[str] = "credentials.json"
    PASSWD: ClassVar[str] = "passwd"
    ACL: ClassVar[str] = "acl"
    BROKER_CONF: ClassVar[str] = "mosquitto.conf"
    PERSISTENCE: ClassVar[str] = "persistence"
    TLS: ClassVar[str] = "tls"
    DASHBOARD_TOKEN: ClassVar[str] = "dashboard-token"  # the compose dashboard's (mode 0600)
    PROXY_GLOB: ClassVar[str] = "proxy-*.json"
    AGENT_GLOB: ClassVar[str] = "agent-*.json"
    ROTATED: ClassVar[tuple[str, ...]] = (RESULTS, DROPPED)
    """Central's record files: a new testbed moves earlier ones aside (:meth:`rotate`)."""
    BROKER_PRIVATE: ClassVar[frozenset[str]] = frozenset(
        {CREDENTIALS, PASSWD, ACL, BROKER_CONF, PERSISTENCE, TLS, DASHBOARD_TOKEN})
    """The broker runtime and the dashboard's token: secrets and the broker's database, never
    copied out of the run."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def results(self) -> Path:
        return self.root / self.RESULTS

    @property
    def dropped(self) -> Path:
        return self.root / self.DROPPED

    @property
    def central_status(self) -> Path:
        return self.root / self.CENTRAL_STATUS

    @property
    def faults(self) -> Path:
        return self.root / self.FAULTS

    @property
    def agents(self) -> Path:
        return self.root / self.AGENTS

    @property
    def testbed(self) -> Path:
        return self.root / self.TESTBED

    @property
    def docker(self) -> Path:
        return self.root / self.DOCKER

    @property
    def replay(self) -> Path:
        return self.root / self.REPLAY

    @property
    def replay_history(self) -> Path:
        return self.root / self.REPLAY_HISTORY

    @property
    def topology(self) -> Path:
        return self.root / self.TOPOLOGY

    @property
    def maps(self) -> Path:
        return self.root / self.MAPS

    @property
    def logs(self) -> Path:
        return self.root / self.LOGS

    @property
    def credentials(self) -> Path:
        return self.root / self.CREDENTIALS

    @property
    def dashboard_token(self) -> Path:
        return self.root / self.DASHBOARD_TOKEN

    @property
    def passwd(self) -> Path:
        return self.root / self.PASSWD

    @property
    def acl(self) -> Path:
        return self.root / self.ACL

    @property
    def broker_conf(self) -> Path:
        return self.root / self.BROKER_CONF

    @property
    def persistence(self) -> Path:
        return self.root / self.PERSISTENCE

    def proxy_status(self, device_id: str) -> Path:
        """RUNDIR/proxy-<device>.json: the link proxy's status of ``device_id``."""
        return self.root / f"proxy-{device_id}.json"

    def agent_stats(self, device_id: str) -> Path:
        """RUNDIR/agent-<device>.json: the device agent's counters."""
        return self.root / f"agent-{device_id}.json"

    def log(self, name: str) -> Path:
        """RUNDIR/logs/<name>.log."""
        return self.logs / f"{name}.log"

    @staticmethod
    def map_ref(mode: str, gather: int) -> str:
        """A map's path relative to the run directory, as results.jsonl records it."""
        return f"{RunDir.MAPS}/{mode}-{gather}.npy"

    def map(self, mode: str, gather: int) -> Path:
        """RUNDIR/maps/<mode>-<gather>.npy: a decoded (70, 70) float32 map in m/s."""
        return self.root / self.map_ref(mode, gather)

    def rotated(self, name: str, unix_s: int) -> Path:
        """Where :meth:`rotate` keeps an earlier ``name`` (``results.jsonl`` ->
        ``results-<unix s>.jsonl``)."""
        stem, _, suffix = name.rpartition(".")
        return self.root / f"{stem}-{unix_s}.{suffix}"

    def status_files(self) -> list[Path]:
        """The roles' status files present now: central's and the proxies'."""
        return [self.central_status, *sorted(self.root.glob(self.PROXY_GLOB))]

    def rotate(self, unix_s: int | None = None) -> list[tuple[Path, Path]]:
        """Move central's record files (results.jsonl, dropped.jsonl) aside, for a new central.

        Returns ``(original, kept)`` pairs, so that a failed start can put them back.
        """
        stamp = int(time.time()) if unix_s is None else unix_s
        moved = []
        for name in self.ROTATED:
            original = self.root / name
            if original.is_file():
                kept = self.rotated(name, stamp)
                os.replace(original, kept)
                moved.append((original, kept))
        return moved


# -- writing and reading ----------------------------------------------------------------------
def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a temporary file in the same directory, then
    ``os.replace``. Readers see the old content or the new, never a mix. The temporary file
    (``.<name>.<random>.tmp``) has the usual permissions and is removed if the write fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dumps(data: Mapping[str, Any], indent: int | None = 2) -> bytes:
    return (json.dumps(data, indent=indent) + "\n").encode()


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replace ``path`` with ``data`` as indented JSON, atomically (:func:`write_atomic`)."""
    write_atomic(path, _dumps(data))


def write_record(path: Path, record: _Record) -> None:
    """Replace ``path`` with ``record`` as indented JSON, atomically."""
    write_json(path, record.to_dict())


def append_record(path: Path, record: _Record | Mapping[str, Any]) -> None:
    """Append ``record`` as one JSON line, in one ``write`` call (readers hold a line back
    until its newline is there)."""
    data = record.to_dict() if isinstance(record, _Record) else record
    with open(path, "ab") as handle:
        handle.write(_dumps(data, indent=None))


def write_map(path: Path, velocity: np.ndarray) -> None:
    """Replace ``path`` with a ``.npy`` of ``velocity`` as float32, atomically."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(velocity, np.float32))
    write_atomic(path, buffer.getvalue())


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, or None if it does not exist.

    A file replaced with :func:`write_atomic` is never torn; for one written in place by
    another tool, a read that does not parse is retried a few times before it is an error.
    Raises RecordError if the file does not hold a JSON object.
    """
    path = Path(path)
    for attempt in range(_TORN_READ_RETRIES):
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RecordError(f"{path}: cannot read: {exc}") from exc
        try:
            data = json.loads(text)
            break
        except ValueError as exc:
            if attempt == _TORN_READ_RETRIES - 1:
                raise RecordError(f"{path}: not JSON: {exc}") from exc
            time.sleep(_TORN_READ_PAUSE_S)
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


R = TypeVar("R", bound="_Record")


def read_record(path: Path, kind: type[R]) -> R | None:
    """The ``kind`` record in ``path``, or None if the file does not exist.

    Raises RecordError (naming the file and the field) if it is not a valid ``kind``.
    """
    data = read_json(path)
    return None if data is None else kind.from_dict(data, str(path))


def read_records(path: Path, kind: type[R] | None = None) -> list[Any]:
    """The complete lines of a JSON-lines file, as ``kind`` records (or dicts without ``kind``).

    The file may be being appended to: a last line without its newline is held back (it is
    read once it is whole). A line that is not JSON (cut short by a crash, with a later line
    appended after it) is skipped and logged. A missing file is an empty list. Raises
    RecordError (``FILE:LINE: field: reason``) for a JSON line that is not a valid ``kind``.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines[:-1], start=1):  # lines[-1]: "" or a partial line
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except ValueError:
            log.warning("%s:%d: not a JSON line (cut short?); skipped", path, number)
            continue
        if kind is None:
            out.append(data)
        elif not isinstance(data, dict):
            raise RecordError(f"{path}:{number}: expected a JSON object, got "
                              f"{type(data).__name__}")
        else:
            out.append(kind.from_dict(data, f"{path}:{number}"))
    return out


# -- records ----------------------------------------------------------------------------------
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(kind: type) -> dict[str, Any]:
    if kind not in _HINTS:
        _HINTS[kind] = typing.get_type_hints(kind)
    return _HINTS[kind]


def _describe(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _convert(value: Any, hint: Any, source: str, name: str) -> Any:
    """``value`` read from JSON as type ``hint``; RecordError naming ``source`` and ``name``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, source, name)
            except RecordError:
                continue
        raise RecordError(f"{source}: {name}: expected {_describe(hint)}, got {value!r:.80}")
    if isinstance(hint, type) and issubclass(hint, _Record):
        if not isinstance(value, dict):
            raise RecordError(f"{source}: {name}: expected an object, got {value!r:.80}")
        return hint._from_dict(value, source, f"{name}.")
    ok = True
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (str, bool):
        ok = isinstance(value, hint)
    elif origin is tuple:
        ok = isinstance(value, list | tuple)
        if ok:
            value = tuple(_convert(v, args[0], source, f"{name}[{i}]")
                          for i, v in enumerate(value))
    elif origin in (dict, Mapping):
        ok = isinstance(value, dict) and all(isinstance(k, str) for k in value)
        if ok:
            value = {k: _convert(v, args[1], source, f"{name}.{k}") for k, v in value.items()}
    if not ok:
        raise RecordError(f"{source}: {name}: expected {_describe(hint)}, got {value!r:.80}")
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Record:
    """JSON conversion for the records below (frozen, slotted dataclasses)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict, keys in field order."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], source: str = "<record>") -> R:
        """Check and convert ``data`` (parsed JSON); ``source`` names the file in errors.

        Raises RecordError naming ``source`` and the field: a missing or mistyped field, or
        a ``version`` other than :data:`RECORD_VERSION` (none: version 1).
        """
        if not isinstance(data, Mapping):
            raise RecordError(f"{source}: expected a JSON object, got {type(data).__name__}")
        return cls._from_dict(data, source, "")

    @classmethod
    def _from_dict(cls: type[R], data: Mapping[str, Any], source: str, prefix: str) -> R:
        hints = _hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            name = prefix + f.name
            if f.name == "version":
                version = data.get("version", 1)
                if version != RECORD_VERSION:
                    raise RecordError(f"{source}: {name}: this reader knows version "
                                      f"{RECORD_VERSION}, the record is version {version!r}")
                values["version"] = RECORD_VERSION
                continue
            if f.name not in data:
                if f.default is not dataclasses.MISSING:
                    continue
                if f.default_factory is not dataclasses.MISSING:
                    continue
                raise RecordError(f"{source}: {name}: missing")
            values[f.name] = _convert(data[f.name], hints[f.name], source, name)
        return cls(**values)


def _record(kind: type) -> type:
    """A frozen, slotted, keyword-only record dataclass."""
    return dataclass(frozen=True, slots=True, kw_only=True)(kind)


@_record
class DeviceReceipt(_Record):
    """One device's part of a decoded gather (times: Unix ns; ``capture_ns`` is the capture of
    the gather's last sample, ``encode_end_ns`` the end of the encode (raw: of the chunking),
    ``publish_ns`` the last frame's publish, ``first_receive_ns``/``receive_ns`` central's
    receipt of the first/last frame)."""

    capture_ns: int
    encode_end_ns: int
    publish_ns: int
    first_receive_ns: int
    receive_ns: int
    frames: int
    wire_bytes: int


@_record
class Result(_Record):
    """One line of results.jsonl: one gather central decoded.

    Attributes:
        gather: gather id. mode: "latent" or "raw".
        present: devices decoded; absent: devices with no frame; incomplete: devices with
            some frames but not all (not decoded). partial: any device missing.
        at_deadline: closed by the deadline, not by the last device.
        deadline_extended: how often the deadline was moved (reconnects).
        wait_s: first frame to close, seconds.
        decode_start_ns, decode_end_ns: the model call, Unix ns. decode_batch: gathers in it.
        devices: device id -> its receipt. wire_bytes: frame bytes, all devices.
        map: the map's path relative to RUNDIR (None: no decoder for this mode).
        metrics: ``mae``, ``rmse`` (normalised [-1, 1] scale), ``ssim`` ([0, 1]), or None
            without true maps.
    """

    version: int = RECORD_VERSION
    gather: int
    mode: str
    present: tuple[str, ...]
    absent: tuple[str, ...]
    incomplete: tuple[str, ...]
    partial: bool
    at_deadline: bool
    deadline_extended: int
    wait_s: float
    decode_start_ns: int
    decode_end_ns: int
    decode_batch: int
    devices: dict[str, DeviceReceipt]
    wire_bytes: int
    map: str | None
    metrics: dict[str, float] | None

    @property
    def missing_any(self) -> bool:
        """Decoded without some device (absent or incomplete)."""
        return bool(self.absent or self.incomplete)


@_record
class DroppedGather(_Record):
    """One line of dropped.jsonl: a gather central closed with no complete device.

    Attributes: gather, mode, reason (plain text), incomplete (devices with some frames),
    wait_s (first frame to close, s), dropped_ns (Unix ns).
    """

    version: int = RECORD_VERSION
    gather: int
    mode: str
    reason: str
    incomplete: tuple[str, ...]
    wait_s: float
    dropped_ns: int


@_record
class FrameCounts(_Record):
    """Frames central received, accepted, and rejected by reason."""

    received: int
    accepted: int
    rejected: dict[str, int]


@_record
class GatherCounts(_Record):
    """Gathers decoded (by mode), partial, dropped, still pending, and failed decodes."""

    decoded: dict[str, int]
    partial: int
    dropped: int
    pending: int
    decode_errors: int


@_record
class DeliveryCounts(_Record):
    """End-to-end confirmations published and deadline extensions (reconnects)."""

    confirmations_sent: int
    deadline_extensions: int


@_record
class CentralStatus(_Record):
    """central-status.json: central's counters, rewritten every second.

    Attributes:
        pid: central's process id. started_ns, updated_ns: Unix ns.
        testbed: its name. connected: to the broker now. connects: sessions so far.
        frames, gathers, delivery: counters. status_messages: device status messages seen.
        device_status: device id -> its last status ("online", "offline").
        last_gather: the short result of the last decode (gather, mode, present,
            decode_end_ns, map, metrics), or None.
    """

    version: int = RECORD_VERSION
    pid: int
    started_ns: int
    updated_ns: int
    testbed: str
    connected: bool
    connects: int
    frames: FrameCounts
    gathers: GatherCounts
    delivery: DeliveryCounts
    status_messages: int
    device_status: dict[str, str]
    last_gather: dict[str, Any] | None


@_record
class Endpoint(_Record):
    """A TCP address."""

    host: str
    port: int


@_record
class ReloadState(_Record):
    """Topology hot reloads: how many took effect, the last one (Unix s), the last error."""

    count: int
    last_unix_s: float | None
    error: str | None


@_record
class RadioEnergy(_Record):
    """Radio energy by state, joules; ``comm`` = tx + rx, ``radio`` = all states."""

    tx: float
    rx: float
    idle: float
    sleep: float
    comm: float
    radio: float

    def minus(self, other: RadioEnergy | None) -> dict[str, float]:
        """``self - other`` per state (``other`` None: zero), as a dict."""
        return {f.name: getattr(self, f.name) - (getattr(other, f.name) if other else 0.0)
                for f in dataclasses.fields(self)}


@_record
class ProxyStatus(_Record):
    """proxy-<device>.json: one device's link proxy, rewritten every second.

    Attributes:
        device, state ("running", "stopped"), pid. listen: where the device connects;
        broker: where the proxy forwards. topology: the file it watches; link: the
        device's link name; link_spec: that link's parameters (topology.md).
        connections_open: now. started_unix_s, updated_unix_s: Unix s; uptime_s: s.
        reload: the topology reloads.
        up_*/down_*: bytes and packets that crossed the link (uplink: device to broker;
            ``*_wire_bytes`` add the per-packet overhead and resent rounds).
        publishes: PUBLISH packets up. resent_rounds: loss rounds; given_up: packets lost
            for good. tx_s, rx_s: radio seconds. energy_j: radio energy, joules.
    """

    version: int = RECORD_VERSION
    device: str
    state: str
    pid: int
    listen: Endpoint
    broker: Endpoint
    topology: str
    link: str
    link_spec: dict[str, Any]
    connections_open: int
    started_unix_s: float
    updated_unix_s: float
    uptime_s: float
    reload: ReloadState
    up_mqtt_bytes: int
    up_wire_bytes: int
    up_packets: int
    publishes: int
    resent_rounds: int
    given_up: int
    down_mqtt_bytes: int
    down_wire_bytes: int
    down_packets: int
    tx_s: float
    rx_s: float
    energy_j: RadioEnergy


@_record
class EncodeTimes(_Record):
    """Encode seconds per gather: ``n`` encodes, p50 and p99 (None when n is 0)."""

    p50: float | None = None
    p99: float | None = None
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"n": 0} if self.n == 0 else {"p50": self.p50, "p99": self.p99, "n": self.n}


@_record
class AgentSummary(_Record):
    """agent-<device>.json: one device agent's counters (times in seconds).

    Attributes:
        device, mode ("epic", "raw"). gathers/frames/bytes_published: sent.
        gathers_rejected, rejections (reason -> count): gathers not sent (NaN/Inf).
        encode_s: encode times. peak_rss_bytes: peak resident memory. backend: the encoder
        runtime. start_at_unix_s: the shared start T (None: none given); start_lag_s: how
        late streaming began after T. confirmations: central's confirmations received;
        resent: frames sent again after reconnects; unconfirmed_at_exit: frames central
        had not confirmed when the agent exited.
    """

    version: int = RECORD_VERSION
    device: str
    mode: str
    gathers_published: int = 0
    frames_published: int = 0
    bytes_published: int = 0
    gathers_rejected: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    encode_s: EncodeTimes = EncodeTimes(n=0)
    peak_rss_bytes: int = 0
    backend: str = ""
    start_at_unix_s: float | None = None
    start_lag_s: float | None = None
    confirmations: int = 0
    resent: int = 0
    unconfirmed_at_exit: int = 0


@_record
class Faults(_Record):
    """faults.json: devices marked dead by ``kill-device``, id -> kill time (Unix s)."""

    version: int = RECORD_VERSION
    dead: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RoleProcess(_Record):
    """One started process: its role, PID, kernel start time (clock ticks, field 22 of
    /proc/<pid>/stat: with the PID, it tells a recycled PID apart) and log file."""

    role: str
    pid: int
    start_ticks: int
    log: str


@_record
class AgentProcesses(_Record):
    """agents.json: the running replay's agent processes, by device id."""

    version: int = RECORD_VERSION
    mode: str
    agents: dict[str, RoleProcess]


@_record
class TestbedInfo(_Record):
    """testbed.json: what ``epic testbed up`` (process mode) started.

    Attributes:
        rundir, topology: absolute paths. testbed: its name.
        broker_host, broker_port: the real broker. proxy_base_port: device k's proxy is on
            ``proxy_base_port + k``. devices: device ids in topology order.
        checkpoint, raw_checkpoint, truth: what central was started with (None: absent).
        processes: the started roles. started_unix_s: when ``up`` finished (Unix s).
    """

    __test__ = False  # not a pytest test class, despite the name

    version: int = RECORD_VERSION
    rundir: str
    topology: str
    testbed: str
    broker_host: str
    broker_port: int
    proxy_base_port: int
    devices: tuple[str, ...]
    checkpoint: str
    raw_checkpoint: str | None
    truth: str | None
    processes: tuple[RoleProcess, ...]
    started_unix_s: float

    def proxy_port(self, device_id: str) -> int:
        """The listening port of ``device_id``'s link proxy."""
        return self.proxy_base_port + self.devices.index(device_id)
