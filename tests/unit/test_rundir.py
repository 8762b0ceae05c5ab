"""The run directory's owner: record round trips, versions, errors that name the file and
field, the atomic writer, the tolerant readers, and the library's import direction."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from epic.rundir import (
    RECORD_VERSION,
    AgentProcesses,
    AgentSummary,
    CentralStatus,
    DeliveryCounts,
    DeviceReceipt,
    DroppedGather,
    EncodeTimes,
    Endpoint,
    Faults,
    FrameCounts,
    GatherCounts,
    ProxyStatus,
    RadioEnergy,
    RecordError,
    ReloadState,
    Result,
    RoleProcess,
    RunDir,
    TestbedInfo,
    append_record,
    read_json,
    read_record,
    read_records,
    write_atomic,
    write_json,
    write_map,
    write_record,
)
from tests.conftest import REPO

RECEIPT = DeviceReceipt(capture_ns=1, encode_end_ns=2, publish_ns=3, first_receive_ns=4,
                        receive_ns=5, frames=1, wire_bytes=1000)
RESULT = Result(gather=3, mode="latent", present=("device-1", "device-2"), absent=("device-3",),
                incomplete=(), partial=True, at_deadline=True, deadline_extended=0,
                wait_s=0.25, decode_start_ns=10, decode_end_ns=20, decode_batch=2,
                devices={"device-1": RECEIPT, "device-2": RECEIPT}, wire_bytes=2000,
                map="maps/latent-3.npy", metrics={"mae": 0.1, "rmse": 0.2, "ssim": 0.9})
PROXY = ProxyStatus(
    device="device-1", state="running", pid=7, listen=Endpoint(host="127.0.0.1", port=1),
    broker=Endpoint(host="127.0.0.1", port=2), topology="/t.yaml", link="lora",
    link_spec={"bandwidth_bps": 5e3, "loss": 0.0}, connections_open=1, started_unix_s=1.0,
    updated_unix_s=2.0, uptime_s=1.0, reload=ReloadState(count=0, last_unix_s=None, error=None),
    up_mqtt_bytes=1, up_wire_bytes=2, up_packets=3, publishes=4, resent_rounds=5, given_up=0,
    down_mqtt_bytes=6, down_wire_bytes=7, down_packets=8, tx_s=0.5, rx_s=0.25,
    energy_j=RadioEnergy(tx=1.0, rx=0.5, idle=0.1, sleep=0.0, comm=1.5, radio=1.6))
RECORDS = [
    RESULT,
    DroppedGather(gather=4, mode="raw", reason="no device complete", incomplete=("device-2",),
                  wait_s=2.0, dropped_ns=99),
    CentralStatus(pid=1, started_ns=2, updated_ns=3, testbed="epic-5", connected=True,
                  connects=1, frames=FrameCounts(received=5, accepted=4, rejected={"late": 1}),
                  gathers=GatherCounts(decoded={"latent": 1, "raw": 0}, partial=1, dropped=0,
                                       pending=0, decode_errors=0),
                  delivery=DeliveryCounts(confirmations_sent=2, deadline_extensions=0),
                  status_messages=5, device_status={"device-1": "online"},
                  last_gather={"gather": 3, "map": None}),
    PROXY,
    AgentSummary(device="device-1", mode="epic", gathers_published=2,
                 encode_s=EncodeTimes(p50=0.01, p99=0.02, n=2), start_at_unix_s=5.0),
    AgentSummary(device="device-2", mode="raw"),
    Faults(dead={"device-3": 12.5}),
    AgentProcesses(mode="epic", agents={"device-1": RoleProcess("agent-device-1", 5, 6, "l")}),
    TestbedInfo(rundir="/r", topology="/r/topology.yaml", testbed="epic-5",
                broker_host="127.0.0.1", broker_port=1883, proxy_base_port=20000,
                devices=("device-1", "device-2"), checkpoint="/c.pt", raw_checkpoint=None,
                truth=None, processes=(RoleProcess("broker", 1, 2, "/r/logs/broker.log"),),
                started_unix_s=3.0),
]


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_every_record_round_trips_through_json_with_its_version(record, tmp_path):
    path = tmp_path / "record.json"
    write_record(path, record)
    data = json.loads(path.read_text())
    assert data["version"] == RECORD_VERSION
    assert read_record(path, type(record)) == record
    assert type(record).from_dict(json.loads(json.dumps(record.to_dict()))) == record


def test_records_keep_the_keys_the_roles_wrote_before_versions():
    """The on-disk keys are the interface (docs/rundir.md): "version" is the only new one."""
    data = RESULT.to_dict()
    assert list(data) == ["version", "gather", "mode", "present", "absent", "incomplete",
                          "partial", "at_deadline", "deadline_extended", "wait_s",
                          "decode_start_ns", "decode_end_ns", "decode_batch", "devices",
                          "wire_bytes", "map", "metrics"]
    assert data["devices"]["device-1"] == {"capture_ns": 1, "encode_end_ns": 2,
                                           "publish_ns": 3, "first_receive_ns": 4,
                                           "receive_ns": 5, "frames": 1, "wire_bytes": 1000}
    proxy = PROXY.to_dict()  # the shaper's counters stay flat, beside the proxy's fields
    assert proxy["publishes"] == 4 and proxy["energy_j"]["comm"] == 1.5
    assert AgentSummary(device="d", mode="epic").to_dict()["encode_s"] == {"n": 0}


def test_a_record_without_version_reads_as_version_1_and_unknown_keys_are_ignored():
    data = {k: v for k, v in Faults(dead={"device-1": 1.0}).to_dict().items()
            if k != "version"}
    assert Faults.from_dict({**data, "added_later": True}) == Faults(dead={"device-1": 1.0})


def test_another_version_is_an_error_naming_the_file_and_field(tmp_path):
    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"version": RECORD_VERSION + 1, "dead": {}}))
    with pytest.raises(RecordError, match=rf"faults\.json: version: this reader knows "
                                          rf"version {RECORD_VERSION}, the record is version "
                                          rf"{RECORD_VERSION + 1}"):
        read_record(path, Faults)


def test_a_bad_field_is_an_error_naming_the_file_line_and_field(tmp_path):
    bad = RESULT.to_dict()
    bad["devices"]["device-2"]["receive_ns"] = "soon"
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(RESULT.to_dict()) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"results\.jsonl:2: devices\.device-2\.receive_ns: "
                                          r"expected int, got 'soon'"):
        read_records(path, Result)
    missing = {k: v for k, v in RESULT.to_dict().items() if k != "wire_bytes"}
    with pytest.raises(RecordError, match=r"<record>: wire_bytes: missing"):
        Result.from_dict(missing)
    with pytest.raises(RecordError, match=r"partial: expected bool, got 1"):
        Result.from_dict({**RESULT.to_dict(), "partial": 1})


def test_the_jsonl_reader_holds_back_a_half_written_line_and_skips_a_crash_cut_one(tmp_path):
    path = tmp_path / "results.jsonl"
    assert read_records(path, Result) == []  # no file yet
    line = json.dumps(RESULT.to_dict())
    path.write_text(line + "\n" + line[: len(line) // 2])  # central is writing line 2
    assert read_records(path, Result) == [RESULT]
    with open(path, "a") as handle:  # ... and finishes it
        handle.write(line[len(line) // 2:] + "\n")
    assert read_records(path, Result) == [RESULT, RESULT]
    path.write_text(line[:40] + "\n" + line + "\n")  # a line cut by a crash, then a new one
    assert read_records(path, Result) == [RESULT]


def test_append_record_writes_one_json_line(tmp_path):
    path = tmp_path / "dropped.jsonl"
    record = RECORDS[1]
    append_record(path, record)
    append_record(path, {"plain": "dict"})
    assert read_records(path) == [record.to_dict(), {"plain": "dict"}]


def test_the_atomic_writer_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "central-status.json"
    write_json(path, {"a": 1})
    write_json(path, {"a": 2})
    assert read_json(path) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    with pytest.raises(TypeError):  # a failed write keeps the old file, and no temporary
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert read_json(path) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert read_json(tmp_path / "absent.json") is None


def test_a_map_is_written_atomically_as_float32(tmp_path):
    path = RunDir(tmp_path).map("latent", 3)
    path.parent.mkdir()
    write_map(path, np.full((70, 70), 2000.0))
    loaded = np.load(path)
    assert loaded.dtype == np.float32 and loaded.shape == (70, 70) and loaded[0, 0] == 2000.0


def test_a_reader_never_sees_a_torn_record_while_a_writer_rewrites_it(tmp_path):
    """One thread rewrites central-status.json as fast as it can (records of very different
    sizes); another reads it in a loop: every read parses, and is one of the two records."""
    path = tmp_path / "central-status.json"
    small = RECORDS[2]
    large = CentralStatus.from_dict({**small.to_dict(),
                                     "device_status": {f"device-{i}": "online" * 20
                                                       for i in range(500)}})
    write_record(path, small)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        while not stop.is_set():
            write_record(path, large if writes[0] % 2 else small)
            writes[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    try:
        reads = 0
        while reads < 300 or len(seen) < 2:
            # a plain read, no retry: the rename alone must keep every read whole
            record = CentralStatus.from_dict(json.loads(path.read_text()), str(path))
            assert record in (small, large)
            seen.add(len(record.device_status))
            reads += 1
            assert reads < 100_000, "the writer never alternated"
    finally:
        stop.set()
        thread.join()
    assert writes[0] >= 2


def test_run_dir_paths_and_rotation(tmp_path):
    files = RunDir(tmp_path)
    assert files.proxy_status("device-2").name == "proxy-device-2.json"
    assert files.agent_stats("device-2").name == "agent-device-2.json"
    assert RunDir.map_ref("raw", 7) == "maps/raw-7.npy"
    assert files.log("central") == tmp_path / "logs" / "central.log"
    files.results.write_text("r\n")
    files.dropped.write_text("d\n")
    moved = files.rotate(unix_s=1700000000)
    assert [(a.name, b.name) for a, b in moved] == [
        ("results.jsonl", "results-1700000000.jsonl"),
        ("dropped.jsonl", "dropped-1700000000.jsonl")]
    assert not files.results.exists() and files.rotate() == []


# -- import direction -------------------------------------------------------------------------
ROLE_PACKAGES = {"devices", "central", "emulation"}


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_library_imports_no_role_package():
    offenders = {}
    for path in sorted((REPO / "epic").rglob("*.py")):
        name = path.relative_to(REPO).as_posix()
        roles = _imported_roots(path) & (ROLE_PACKAGES | {"epic_cli"})
        if roles:
            offenders[name] = sorted(roles)
    assert offenders == {}, f"epic/ must import no role package and no CLI: {offenders}"
    assert _imported_roots(REPO / "epic" / "rundir.py") <= {
        "__future__", "dataclasses", "io", "json", "logging", "os", "secrets", "time",
        "types", "typing", "collections", "pathlib", "numpy", "epic"}
