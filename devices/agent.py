"""The device agent: sensor stream -> int8 encoder (or raw chunks) -> frames over MQTT.

``python -m devices.agent --device-id N --topology topology.yaml --rundir RUNDIR
--encoders artifacts/encoders/epic-flatvel-a/manifest.json --data DIR --mode epic`` (every
option also reads an ``EPIC_*`` environment variable, for containers).

The agent replays gathers of an OpenFWI-layout directory as the field stream of its own
receivers (:func:`epic.data.stream.replay_gather`, 100 ms windows at 1 kHz, paced in real
time or as fast as possible), waits for each complete shot-gather, and then:

* ``epic`` mode: encodes it with its int8 LiteRT encoder and publishes one LATENT frame
  (int8 ``(14, token_dim)`` with the model's scale and zero point, and the capture, encode-end
  and publish times in ns) on ``epic/<testbed>/device-<n>/latent``;
* ``raw`` mode: publishes its float32 ``(5, 1000, 14)`` traces as RAW_CHUNK frames.

With ``--start-at-unix-s T`` (a replay gives every agent the same T) the agent loads its
encoder and connects first, then waits until T: in real time the k-th replayed gather's
stream starts at T + k x (shots x samples / 1 kHz), i.e. gather k's capture ends at
T + (k + 1) x 5 s on every device; as fast as possible, all agents start streaming at T.
Without it, T is the moment the agent is ready.

The agent takes its device (number, receivers) and the testbed name from RUNDIR/devices.json
(:mod:`epic.devicespec`, written from the validated topology when the run directory was
prepared) when ``--topology`` is that run directory's topology copy, else from the topology
file; the data directory is opened once, without a NaN/Inf scan of whole shards.

A gather with NaN/Inf samples is rejected, counted and logged, never published. The agent
records encode time and peak memory in ``RUNDIR/agent-device-<n>.json``. It imports no torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import resource
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from epic import wire
from epic.broker import load_runtime
from epic.data.openfwi import OpenFWIDataset
from epic.data.stream import GatherAssembler, replay_gather
from epic.devicespec import DEVICE_SPECS_FILE, DeviceEntry, read_device_specs
from epic.errors import InputError
from epic.mqtt import MqttConnectError, MqttSettings, SessionClient
from epic.rundir import AgentSummary, EncodeTimes, RunDir, write_record

__all__ = ["AgentStats", "DeviceAgent", "main"]

log = logging.getLogger("devices.agent")

SAMPLE_RATE_HZ = 1000.0  # the sensor stream's sampling rate (OpenFWI: 1 ms)
STATS_PERIOD_S = 0.5  # while replaying, the stats file is rewritten at most this often


@dataclass
class AgentStats:
    """The agent's running counters (times in seconds); :meth:`summary` is the record
    (:class:`epic.rundir.AgentSummary`) written to ``RUNDIR/agent-device-<n>.json``."""

    device: str
    mode: str
    gathers_published: int = 0
    frames_published: int = 0
    bytes_published: int = 0
    gathers_rejected: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    encode_s: list[float] = field(default_factory=list)
    peak_rss_bytes: int = 0
    backend: str = ""
    start_at_unix_s: float | None = None
    start_lag_s: float | None = None  # streaming began this long after T (> 0: ready late)
    confirmations: int = 0  # central's end-to-end confirmations received
    resent: int = 0  # frames sent again after reconnects (acknowledged, unconfirmed)
    unconfirmed_at_exit: int = 0  # frames central had not confirmed when the agent exited

    def summary(self) -> AgentSummary:
        """The record written to the stats file (encode times as p50, p99 and count)."""
        data = asdict(self)
        enc = np.asarray(self.encode_s)
        data["encode_s"] = (EncodeTimes(p50=float(np.percentile(enc, 50)),
                                        p99=float(np.percentile(enc, 99)), n=int(enc.size))
                            if enc.size else EncodeTimes(n=0))
        return AgentSummary(**data)


class DeviceAgent:
    """One device: its receivers, its encoder (epic mode) and its MQTT session."""

    def __init__(self, device_number: int, topology_path: Path, rundir: Path, mode: str,
                 encoders: Path | None = None, broker_host: str | None = None,
                 broker_port: int | None = None, threads: int = 1) -> None:
        testbed, devices = _devices(topology_path, rundir)
        spec = next((d for d in devices if d.number == device_number), None)
        if spec is None:
            ids = ", ".join(d.id for d in devices)
            raise InputError(f"--device-id {device_number}: not in {topology_path} ({ids})")
        if mode not in ("epic", "raw"):
            raise InputError(f"--mode must be epic or raw, got {mode!r}")
        self.spec, self.testbed, self.mode = spec, testbed, mode
        self.stats = AgentStats(device=spec.id, mode=mode)
        self.runtime = None
        if mode == "epic":
            if encoders is None:
                raise InputError("--encoders (an epic export manifest) is required in epic mode")
            from devices.runtime import EncoderRuntime

            self.runtime = EncoderRuntime.from_manifest(encoders, device_number, threads)
            self.stats.backend = self.runtime.backend
        broker = load_runtime(rundir)
        self.save_interval_s = broker.save_interval_s  # None: the broker saves every change
        self.rundir = rundir
        self._stats_written_s = -math.inf  # monotonic time of the last stats file write
        settings = MqttSettings(host=broker_host or broker.host, port=broker_port or broker.port,
                                client_id=spec.id, username=spec.id,
                                password=broker.password(spec.id), ca_file=broker.ca_file,
                                keep_until_confirmed=True)
        status = wire.topic_for(self.testbed, device_number, wire.Channel.STATUS)
        self.ack_topic = wire.ack_topic(self.testbed, device_number)
        self.client = SessionClient(settings, subscriptions=[self.ack_topic],
                                    on_message=self._on_confirmation, status_topic=status)
        self.status_topic = status

    def _on_confirmation(self, message: object) -> None:  # paho's network thread
        """Central's cumulative confirmation: release the frames of the gathers it is done
        with. A malformed one is logged and ignored (frames stay kept: nothing is lost)."""
        if message.topic != self.ack_topic:
            return
        try:
            confirmed = wire.decode_ack(bytes(message.payload))
        except wire.AckError as exc:
            log.warning("ignored a confirmation on %s: %s", message.topic, exc)
            return
        self.stats.confirmations += 1
        self.client.confirm(confirmed)

    def start(self) -> None:
        self.client.connect()
        self.client.publish(self.status_topic, wire.STATUS_ONLINE, retain=True)

    def _reject(self, reason: str, gather_id: int, detail: str) -> None:
        self.stats.gathers_rejected += 1
        self.stats.rejections[reason] = self.stats.rejections.get(reason, 0) + 1
        log.warning("gather %d rejected (%s): %s", gather_id, reason, detail)

    def publish_gather(self, gather_id: int, gather: np.ndarray, capture_ns: int) -> None:
        """Encode (or chunk) one complete ``(5, 1000, n_rx)`` gather and publish it."""
        n = self.spec.number
        if not np.isfinite(gather).all():
            self._reject("non_finite", gather_id, "NaN or Inf in the stream")
            return
        if self.mode == "epic":
            started = time.perf_counter()
            latent = self.runtime.encode(gather)
            self.stats.encode_s.append(time.perf_counter() - started)
            frames = [wire.Frame(kind=wire.Kind.LATENT, device_id=n, gather_id=gather_id,
                                 dtype=wire.Dtype.INT8, shape=tuple(latent.values.shape),
                                 payload=latent.values.tobytes(), scale=latent.scale,
                                 zero_point=latent.zero_point, capture_ns=capture_ns,
                                 encode_end_ns=(now := time.time_ns()), publish_ns=now)]
            channel = wire.Channel.LATENT
        else:
            now = time.time_ns()
            frames = wire.split_array(wire.Kind.RAW_CHUNK, n, gather_id, gather,
                                      capture_ns=capture_ns, encode_end_ns=now, publish_ns=now)
            channel = wire.Channel.RAW
        topic = wire.topic_for(self.testbed, n, channel)
        key = (channel.value, gather_id)  # what central confirms these frames by
        for frame in frames:
            data = dataclasses.replace(frame, publish_ns=time.time_ns()).encode()
            self.client.publish(topic, data, key=key)
            self.stats.frames_published += 1
            self.stats.bytes_published += len(data)
        self.stats.gathers_published += 1

    def replay(self, data: Path | OpenFWIDataset, gathers: int | None, start: int = 0,
               realtime: bool = False, start_at_unix_s: float | None = None) -> None:
        """Stream gathers ``start .. start + gathers`` of ``data`` (a directory, or the
        dataset already opened) through the encoder.

        ``start_at_unix_s``: the shared start instant T (wall clock, s); the agent sleeps until
        T, and in real time gather k's stream starts at T + k x gather duration.
        """
        ds = (data if isinstance(data, OpenFWIDataset)
              else OpenFWIDataset(data, require_models=False, check_finite=False))
        data_dir = ds.directory
        stop = len(ds) if gathers is None else min(len(ds), start + gathers)
        if start >= stop:
            raise InputError(f"--start {start}: {data_dir} holds {len(ds)} gathers")
        lo, hi = self.spec.receivers
        assembler = GatherAssembler(5, 1000, (lo, hi))
        first, _ = ds[start]  # read before the start instant, not after it
        wall_offset_ns = time.time_ns() - time.monotonic_ns()
        t0_ns = time.time_ns() if start_at_unix_s is None else round(start_at_unix_s * 1e9)
        if (wait_ns := t0_ns - time.time_ns()) > 0:
            time.sleep(wait_ns / 1e9)
        self.stats.start_at_unix_s = t0_ns / 1e9
        self.stats.start_lag_s = (time.time_ns() - t0_ns) / 1e9
        log.info("streaming from T=%.3f (%+.1f ms)", t0_ns / 1e9, self.stats.start_lag_s * 1e3)
        for k, gather_id in enumerate(range(start, stop)):
            full = first if k == 0 else ds[gather_id][0]
            duration_ns = round(full.shape[0] * full.shape[1] * 1e9 / SAMPLE_RATE_HZ)
            for window in replay_gather(full, gather_id, [(self.spec.number, (lo, hi))],
                                        sample_rate_hz=SAMPLE_RATE_HZ, realtime=realtime,
                                        start_ns=t0_ns + k * duration_ns - wall_offset_ns):
                done = assembler.add(window)
                if done is not None:
                    # paced: the last sample's capture time; as fast as possible the stream's
                    # clock runs ahead of the wall clock, so the gather is "captured" now
                    capture_ns = (window.capture_time_ns + wall_offset_ns if realtime
                                  else time.time_ns())
                    self.publish_gather(gather_id, done, capture_ns)
            self._write_stats(every_s=STATS_PERIOD_S)

    def _write_stats(self, every_s: float = 0.0) -> None:
        """Replace RUNDIR/agent-<device>.json; with ``every_s`` > 0, at most once per that
        many seconds (a write costs about 1 ms, as much as an encode)."""
        now_s = time.monotonic()
        if now_s < self._stats_written_s + every_s:
            return
        self._stats_written_s = now_s
        self.stats.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        write_record(RunDir(self.rundir).agent_stats(self.spec.id), self.stats.summary())

    def wait_confirmed(self, timeout_s: float) -> bool:
        """Wait until central has confirmed every frame this agent published (end to end);
        False after ``timeout_s`` (central absent or stalled)."""
        deadline = time.monotonic() + timeout_s
        while (left := self.client.unconfirmed()) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.stats.unconfirmed_at_exit = left
        return left == 0

    def wait_acked(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged and saved every frame (QoS 1; see
        ``SessionClient.flush``), so that exiting now loses none, even if the broker is
        SIGKILLed next. Counting PUBACKs is not enough: births and replayed copies are
        acknowledged too, so a count can be reached with a frame still unacknowledged.

        A broker that saves every ``save_interval_s`` (the testbed's) has saved a frame only
        at its next periodic save: with frames central has not confirmed, the agent then
        also waits one interval and a half (confirmed frames need no save: central has them).
        """
        if not self.client.flush(timeout_s):
            return False
        if self.save_interval_s is not None and self.client.unconfirmed():
            time.sleep(1.5 * self.save_interval_s)
        return True

    def close(self) -> None:
        self.stats.resent = self.client.replayed
        self._write_stats()
        self.client.close()


def _devices(topology_path: Path, rundir: Path) -> tuple[str, tuple[DeviceEntry, ...]]:
    """The testbed name and its devices: from RUNDIR/devices.json when ``topology_path`` is
    the run directory's topology copy it was written from (see :mod:`epic.devicespec`; no
    pydantic or YAML import), else from the topology file itself."""
    specs_path = Path(rundir) / DEVICE_SPECS_FILE
    if specs_path.is_file():
        specs = read_device_specs(specs_path)
        if specs.topology == Path(topology_path).resolve():
            return specs.testbed, specs.devices
    from epic.topology import load_topology  # pydantic + YAML: about 0.2 s of imports

    topology = load_topology(topology_path)
    return topology.testbed, tuple(DeviceEntry(d.id, d.number, tuple(d.receivers))
                                   for d in topology.devices)


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"EPIC_{name}", default)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m devices.agent",
                                description=__doc__.split("\n")[0])
    p.add_argument("--device-id", type=int, default=_env("DEVICE_ID"),
                   required=not _env("DEVICE_ID"))
    p.add_argument("--topology", type=Path, default=_env("TOPOLOGY", "topology.yaml"))
    p.add_argument("--rundir", type=Path, default=_env("RUNDIR"), required=not _env("RUNDIR"))
    p.add_argument("--mode", default=_env("MODE", "epic"), choices=("epic", "raw"))
    p.add_argument("--encoders", type=Path, default=_env("ENCODERS"))
    p.add_argument("--data", type=Path, default=_env("DATA"), required=not _env("DATA"))
    p.add_argument("--gathers", type=int, default=_env("GATHERS"))
    p.add_argument("--start", type=int, default=_env("START", "0"))
    p.add_argument("--rate", choices=("realtime", "max"), default=_env("RATE", "max"))
    p.add_argument("--start-at-unix-s", type=float, default=_env("START_AT_UNIX_S"),
                   help="shared start instant T (wall clock, s): stream from T on")
    p.add_argument("--broker-host", default=_env("BROKER_HOST"))
    p.add_argument("--broker-port", type=int, default=_env("BROKER_PORT"))
    p.add_argument("--threads", type=int, default=_env("THREADS", "1"))
    p.add_argument("--confirm-timeout-s", type=float, default=_env("CONFIRM_TIMEOUT_S", "30"),
                   help="before exiting, wait this long for central to confirm every frame "
                        "(0: do not wait; the broker's acknowledgement and save suffice)")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        # bad data fails before connecting; opened once, without scanning every shard for
        # NaN/Inf: each gather is checked before it is encoded or sent (publish_gather)
        dataset = OpenFWIDataset(args.data, require_models=False, check_finite=False)
        agent = DeviceAgent(int(args.device_id), args.topology, args.rundir, args.mode,
                            args.encoders, args.broker_host, args.broker_port, args.threads)
        agent.start()
        try:
            agent.replay(dataset, None if args.gathers is None else int(args.gathers),
                         args.start, realtime=args.rate == "realtime",
                         start_at_unix_s=None if args.start_at_unix_s is None
                         else float(args.start_at_unix_s))
            confirm_timeout_s = float(args.confirm_timeout_s)
            if confirm_timeout_s > 0 and not agent.wait_confirmed(confirm_timeout_s):
                log.warning("central has not confirmed %d frames within %.0f s; they are "
                            "saved by the broker", agent.stats.unconfirmed_at_exit,
                            confirm_timeout_s)
            if not agent.wait_acked(30.0):
                log.error("not every frame was acknowledged within 30 s")
                return 1
        finally:
            agent.close()
    except InputError as exc:  # bad configuration or data: one line, no traceback
        log.error("%s", exc)
        return 2
    except MqttConnectError as exc:  # broker unreachable or refused us: one line
        log.error("%s", exc)
        return 1
    log.info("done: %s", json.dumps(agent.stats.summary().to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
