"""The one-shot steps of docker-compose.yml: ``init`` and ``collect``; and ``pack-demo``.

``python -m emulation.compose_steps init --topology T --rundir R --data D --gathers N
--owner UID:GID`` (the ``init`` service, as root): broker credentials, ACL and conf in R
(:func:`emulation.testbed.prepare_compose_runtime`; kept when R already holds credentials for
the same testbed and devices, because a running broker only knows the ones it started with),
R/topology.yaml, stale status files removed, N gathers of D unpacked to R/data (D is a packed
demo set, see ``pack-demo``, or an OpenFWI-layout directory), and R given to UID:GID.

``python -m emulation.compose_steps collect --rundir R --out O --gathers N --mode M`` (the
``results`` service, after every device exited): waits until central decoded gathers 0..N-1,
writes R/replay.json (the shape ``epic replay`` writes, so ``epic report`` reads it), copies the
results (never the credentials, ACL, conf or broker database) to O, owned like ``--owner-of``,
and logs a summary. Exit status 1 if a gather is missing after ``--timeout-s``.

``python -m emulation.compose_steps pack-demo SRC OUT`` (on a host with the training extras):
packs the gathers of an OpenFWI-layout directory made by ``epic data synth`` into OUT as
``data.npy.xz`` (float16: half the bytes, relative error < 1e-3) and ``model.npy.xz``, with
SRC's card.json. docker/demo is made this way.
"""

from __future__ import annotations

import argparse
import json
import logging
import lzma
import os
import secrets
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from epic.errors import InputError
from epic.rundir import (
    AgentSummary,
    ProxyStatus,
    RecordError,
    Result,
    RunDir,
    read_record,
    read_records,
    write_json,
)

__all__ = ["collect", "init", "main", "pack_demo", "unpack_data"]

log = logging.getLogger("compose")

PACKED_DATA, PACKED_MODEL = "data.npy.xz", "model.npy.xz"
STALE = (RunDir.CENTRAL_STATUS, RunDir.PROXY_GLOB, RunDir.AGENT_GLOB, "replay-start.json",
         RunDir.FAULTS, RunDir.AGENTS, RunDir.REPLAY)
PRIVATE = RunDir.BROKER_PRIVATE | {"data"}  # never copied to the results (data goes to
# results/data, see collect)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            os.chown(os.path.join(base, name), uid, gid, follow_symlinks=False)


def _owner(spec: str) -> tuple[int, int]:
    try:
        uid, gid = (int(x) for x in spec.split(":"))
    except ValueError:
        raise InputError(f"--owner must be UID:GID, got {spec!r}") from None
    return uid, gid


def _credentials_match(rundir: Path, testbed: str, users: set[str]) -> bool:
    try:
        data = json.loads(RunDir(rundir).credentials.read_text())
    except (OSError, ValueError):
        return False
    passwords = set(data.get("passwords", {}))
    return (data.get("testbed") == testbed and users <= passwords
            and not {u for u in passwords - users if u.startswith("device-")}
            and RunDir(rundir).passwd.is_file() and RunDir(rundir).broker_conf.is_file())


def unpack_data(source: Path, dest: Path, gathers: int) -> tuple[int, str]:
    """Write gathers 0..gathers-1 of ``source`` to ``dest`` as data0.npy / model0.npy.

    ``source`` is a packed demo set (data.npy.xz, model.npy.xz) or an OpenFWI-layout
    directory. Returns (gathers written, a description of the source).
    """
    from epic.data.openfwi import OpenFWIDataset

    dest.mkdir(parents=True, exist_ok=True)
    for old in [*dest.glob("data*.npy"), *dest.glob("model*.npy")]:
        old.unlink()
    if (source / PACKED_DATA).is_file():
        with lzma.open(source / PACKED_DATA) as handle:
            data = np.load(handle, allow_pickle=False)
        with lzma.open(source / PACKED_MODEL) as handle:
            model = np.load(handle, allow_pickle=False)
        card = {}
        if (source / "card.json").is_file():
            card = json.loads((source / "card.json").read_text())
        kind = card.get("generator", {}).get("kind", "?")
        what = (f"{card.get('title', 'packed')} demo set ({kind} maps, seed "
                f"{card.get('seed', '?')}, made by `epic data synth`)")
    else:
        dataset = OpenFWIDataset(source, require_models=False)
        n = min(gathers, len(dataset))
        items = [dataset[i] for i in range(n)]
        data = np.stack([d for d, _ in items])
        model = (np.stack([m for _, m in items]) if all(m is not None for _, m in items)
                 else None)
        what = f"OpenFWI-layout directory mounted as {source}"
    if gathers > len(data):
        raise InputError(f"EPIC_GATHERS={gathers} but {source} holds {len(data)} gathers")
    np.save(dest / "data0.npy", np.ascontiguousarray(data[:gathers], dtype=np.float32))
    if model is not None:
        np.save(dest / "model0.npy", np.ascontiguousarray(model[:gathers], dtype=np.float32))
    return gathers, what


def _device_dir(devices_dir: Path, device: str, testbed: str, password: str,
                topology_path: Path, uid: int, gid: int) -> None:
    """A device's own volume: a credentials.json with its password alone, its topology copy.

    Host and port in it are placeholders: the device reaches the broker through its link proxy
    ($EPIC_BROKER_HOST/PORT), and never learns another credential."""
    own = devices_dir / device
    own.mkdir(parents=True, exist_ok=True)
    files = RunDir(own)
    for pattern in (RunDir.AGENT_GLOB, "replay-start.json"):  # an earlier up's
        for path in own.glob(pattern):
            path.unlink()
    write_json(files.credentials, {"testbed": testbed, "host": "link-proxies", "port": 0,
                                   "passwords": {device: password}, "ca_file": None})
    os.chmod(files.credentials, 0o600)
    shutil.copyfile(topology_path, own / "topology.yaml")
    _chown_tree(own, uid, gid)


def init(topology_path: Path, rundir: Path, data: Path, gathers: int, owner: str,
         data_out: Path | None = None, devices_dir: Path | None = None,
         sync_dir: Path | None = None) -> None:
    """The ``init`` service: credentials, conf, topology copy, demo data, ownership.

    ``data_out``: where the gathers go (the ``data`` volume; default R/data). ``devices_dir``:
    each device's own volume at ``devices_dir/<id>`` gets its own credential only.
    ``sync_dir``: the devices' shared-start volume, cleared."""
    from emulation.testbed import prepare_compose_runtime
    from epic.broker import CENTRAL_USER
    from epic.topology import load_topology
    from epic.wire import device_name

    uid, gid = _owner(owner)
    if gathers < 1:
        raise InputError(f"EPIC_GATHERS must be >= 1, got {gathers}")
    topology = load_topology(topology_path)
    rundir.mkdir(parents=True, exist_ok=True)
    users = {CENTRAL_USER, *(device_name(d.number) for d in topology.devices)}
    if _credentials_match(rundir, topology.testbed, users):
        shutil.copyfile(topology_path, rundir / "topology.yaml")
        log.info("init: credentials for %d users kept from the run volume (a running broker "
                 "knows them); `docker compose down -v` discards them", len(users))
    else:
        prepare_compose_runtime(topology_path, rundir)
        log.info("init: generated credentials for %s, ACL and mosquitto.conf in the run volume "
                 "%s (never in an image or the repository)", ", ".join(sorted(users)), rundir)
    for pattern in STALE:
        for path in rundir.glob(pattern):
            path.unlink()
    RunDir(rundir).rotate()  # an earlier up's results (and dropped gathers): keep them aside
    token = RunDir(rundir).dashboard_token
    if not token.is_file():  # the dashboard serves beyond loopback inside its container
        token.write_text(secrets.token_urlsafe(24) + "\n")
    os.chmod(token, 0o600)
    data_out = data_out or rundir / "data"
    n, what = unpack_data(data, data_out, gathers)
    log.info("init: %d gathers from the %s in %s", n, what, data_out)
    (rundir / "logs").mkdir(exist_ok=True)
    _chown_tree(rundir, uid, gid)
    _chown_tree(data_out, uid, gid)
    if sync_dir is not None:
        (sync_dir / "replay-start.json").unlink(missing_ok=True)
        _chown_tree(sync_dir, uid, gid)
    if devices_dir is not None:
        passwords = json.loads(RunDir(rundir).credentials.read_text())["passwords"]
        for device in topology.devices:
            _device_dir(devices_dir, device.id, topology.testbed, passwords[device.id],
                        rundir / "topology.yaml", uid, gid)
        log.info("init: each device's volume holds its own credential only (%s)",
                 ", ".join(f"{devices_dir}/{d.id}" for d in topology.devices))
    log.info("init: testbed %s, %d devices (%s); broker, central and link proxies start next",
             topology.testbed, len(topology.devices),
             ", ".join(f"{d.id} {d.link}" for d in topology.devices))


def _records(rundir: Path) -> list[Result]:
    return read_records(RunDir(rundir).results, Result)  # a line being written: held back


def _read_or_none(path: Path, kind: type) -> object | None:
    try:
        return read_record(path, kind)
    except RecordError as exc:
        log.warning("results: %s", exc)
        return None


def _summary(rundir: Path, records: list[Result], mode: str, gathers: int, rate: str,
             data: Path) -> dict:
    """RUNDIR/replay.json's content for this compose run (as :func:`emulation.replay.replay`)."""
    from emulation.replay import _predict, fidelity_cost, summarize_mode
    from epic.topology import load_topology

    topology = load_topology(rundir / "topology.yaml")
    devices = [d.id for d in topology.devices]
    files = RunDir(rundir)
    after = {d: _read_or_none(files.proxy_status(d), ProxyStatus) for d in devices}
    before = dict.fromkeys(devices)  # None: the proxies started at 0 with this run
    compute_w = {d.id: topology.compute_of(d)[1:] for d in topology.devices}
    summary = summarize_mode(mode, records, before, after, compute_w) if records else None
    if summary is not None:
        summary["fidelity_cost"] = fidelity_cost(records, [], None)
        agents = [_read_or_none(files.agent_stats(d), AgentSummary) for d in devices]
        summary["agents"] = {"start_at_unix_s": next(
            (a.start_at_unix_s for a in agents if a is not None), None)}
    modes = {mode: summary} if summary else {}
    prediction = None
    if summary is not None:
        try:
            prediction = _predict(str(rundir / "topology.yaml"), (mode,), gathers, modes, 0)
        except Exception as exc:  # the prediction is a bonus; never lose the results for it
            log.warning("results: no model prediction (%s)", exc)
    return {"testbed": topology.testbed, "topology": "topology.yaml", "data": "data",
            "shots": gathers, "start": 0, "rate": rate, "modes": modes, "dead_devices": [],
            "raw_decoded": mode == "raw", "truth": "data" if (data / "model0.npy").is_file()
            else None, "ratios": None, "prediction": prediction,
            "runtime": "compose"}


def collect(rundir: Path, out: Path, gathers: int, mode: str, rate: str = "realtime",
            owner_of: Path | None = None, shown_as: str | None = None,
            timeout_s: float = 120.0, data: Path | None = None,
            devices_dir: Path | None = None,
            deployment: str = "compose") -> bool:
    """The ``results`` service; True if every gather was decoded.

    ``data``: the gathers and true maps (default R/data); ``devices_dir``: the devices' own
    volumes, whose agent stats are copied into R first. ``deployment``: "compose" or "swarm",
    for the commands the log lines name."""
    logs_cmd, down_cmd = {"compose": ("docker compose logs central", "docker compose down -v"),
                          "swarm": ("docker service logs <stack>_central",
                                    "docker stack rm <stack>")}[deployment]
    if devices_dir is not None and devices_dir.is_dir():
        for own in sorted(p for p in devices_dir.iterdir() if p.is_dir()):
            for stats in own.glob(RunDir.AGENT_GLOB):
                shutil.copy2(stats, rundir / stats.name)
    central_mode = {"epic": "latent", "raw": "raw"}[mode]
    want = set(range(gathers))
    deadline = time.monotonic() + timeout_s
    while True:
        records = [r for r in _records(rundir) if r.mode == central_mode and r.gather in want]
        if {r.gather for r in records} >= want or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    latest = {r.gather: r for r in records}  # one record per gather
    records = [latest[g] for g in sorted(latest)]
    missing = sorted(want - set(latest))
    data = data or rundir / "data"
    replay = _summary(rundir, records, mode, gathers, rate, data)
    write_json(RunDir(rundir).replay, replay)
    out.mkdir(parents=True, exist_ok=True)
    for entry in rundir.iterdir():
        if entry.name in PRIVATE or entry.name.startswith("."):
            continue
        target = out / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)
    if data.is_dir():  # the replayed gathers and true maps (`epic report` plots them)
        shutil.copytree(data, out / "data", dirs_exist_ok=True)
    if owner_of is not None and owner_of.exists():
        st = owner_of.stat()
        _chown_tree(out, st.st_uid, st.st_gid)
    where = shown_as or str(out)
    summary = replay["modes"].get(mode)
    partial = summary["partial"] if summary else 0
    log.info("results: central decoded %d of %d gathers in %s mode (%d partial) to %d maps",
             len(records), gathers, mode, partial, sum(1 for r in records if r.map))
    if summary:
        lat = summary["capture_to_decode_s"]
        fid = summary.get("fidelity")
        log.info("results: capture -> decode p50 %.1f ms, p95 %.1f ms; %.0f bytes per gather; "
                 "%s", lat["p50"] * 1e3, lat["p95"] * 1e3, summary["bytes_per_gather"],
                 ", ".join(f"{k.upper()} {v:.4f}" for k, v in fid.items()) if fid
                 else "no fidelity (no true maps)")
    if missing:
        log.error("results: no decode for gathers %s within %.0f s; see `%s`", missing,
                  timeout_s, logs_cmd)
    log.info("results: written to %s (results.jsonl, maps/<mode>-<gather>.npy, replay.json, "
             "status files); `epic report %s --out reports/compose` makes the report", where,
             where)
    log.info("results: done. Broker, central and link proxies keep running: `%s` removes "
             "everything (containers, networks, credentials)", down_cmd)
    return not missing


def pack_demo(source: Path, out: Path, count: int | None = None) -> Path:
    """Pack an OpenFWI-layout directory (``epic data synth`` output) into ``out``."""
    from epic.data.openfwi import OpenFWIDataset

    dataset = OpenFWIDataset(source)
    n = len(dataset) if count is None else min(count, len(dataset))
    items = [dataset[i] for i in range(n)]
    data = np.stack([d for d, _ in items]).astype(np.float16)
    model = np.stack([m for _, m in items]).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    for name, array in ((PACKED_DATA, data), (PACKED_MODEL, model)):
        with lzma.open(out / name, "wb", preset=9) as handle:
            np.save(handle, array, allow_pickle=False)
    card = {}
    if (source / "card.json").is_file():
        card = json.loads((source / "card.json").read_text())
    card.update(count=n, packed={"data": f"{PACKED_DATA}: float16 (N, 5, 1000, 70), xz",
                                 "model": f"{PACKED_MODEL}: float32 (N, 1, 70, 70) m/s, xz",
                                 "unpacked_by": "emulation.compose_steps init (float32)"})
    card.pop("created_utc", None)
    card.pop("synthesis_wall_s", None)
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: init | collect | pack-demo; 2 on bad input."""
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    parser = argparse.ArgumentParser(prog="python -m emulation.compose_steps")
    sub = parser.add_subparsers(dest="step", required=True)
    p = sub.add_parser("init")
    p.add_argument("--topology", type=Path, required=True)
    p.add_argument("--rundir", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--gathers", type=int, required=True)
    p.add_argument("--owner", default="10001:10001")
    p.add_argument("--data-out", type=Path, default=None)
    p.add_argument("--devices-dir", type=Path, default=None)
    p.add_argument("--sync-dir", type=Path, default=None)
    p = sub.add_parser("collect")
    p.add_argument("--rundir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--gathers", type=int, required=True)
    p.add_argument("--mode", choices=("epic", "raw"), default="epic")
    p.add_argument("--rate", default="realtime")
    p.add_argument("--owner-of", type=Path, default=None)
    p.add_argument("--shown-as", default=None)
    p.add_argument("--timeout-s", type=float, default=120.0)
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--devices-dir", type=Path, default=None)
    p.add_argument("--deployment", choices=("compose", "swarm"), default="compose")
    p = sub.add_parser("pack-demo")
    p.add_argument("source", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--count", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        if args.step == "init":
            init(args.topology, args.rundir, args.data, args.gathers, args.owner,
                 args.data_out, args.devices_dir, args.sync_dir)
        elif args.step == "collect":
            return 0 if collect(args.rundir, args.out, args.gathers, args.mode, args.rate,
                                args.owner_of, args.shown_as, args.timeout_s, args.data,
                                args.devices_dir, args.deployment) else 1
        else:
            log.info("packed into %s", pack_demo(args.source, args.out, args.count))
    except InputError as exc:  # also DataError, TopologyError
        log.error("%s: %s", args.step, exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
