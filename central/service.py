"""The central node: subscribe -> validate -> assemble per gather (deadline) -> decode -> sink.

``python -m central.service --topology topology.yaml --rundir RUNDIR --checkpoint CKPT``, or
``--decoder artifacts/decoders/flatvel-a/manifest.json`` in place of the checkpoint(s): the
decoders exported by ``epic export-decoders``, run on ONNX Runtime without torch (torch is only
imported on the checkpoint path).
(every option also reads an environment variable, for containers; see ``_ARGS``).

paho's network thread only time-stamps each message and queues it; one worker (the main
thread) validates, assembles, decodes and writes, so the core needs no locks. A message is
acknowledged (PUBACK) once queued; on SIGTERM/SIGINT the worker drains the queue, closes every
open gather, flushes, publishes "offline" and exits 0. Outputs in RUNDIR: ``results.jsonl``
(one line per decoded gather), ``maps/<mode>-<gather>.npy`` ((70, 70) float32 m/s) and
``central-status.json`` (counters, rewritten atomically every second), and ``dropped.jsonl``
(one line per gather closed with no complete device); :mod:`epic.rundir` owns their records
(docs/rundir.md). See the "Central node" section of docs/wire-format.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from central.assembler import MODE_OF_KIND, Assembler, FrameValidator, Gather, RejectionLog
from central.raw import RAW_SHOTS, RAW_TIME_SAMPLES, RawDecoder
from epic.broker import CENTRAL_USER, central_subscriptions, load_runtime
from epic.data.openfwi import OpenFWIDataset
from epic.data.transforms import denormalize_velocity, normalize_velocity
from epic.errors import InputError
from epic.inference.decoders import LatentDecoderRuntime
from epic.metrics import per_sample_fidelity
from epic.mqtt import MqttConnectError, MqttSettings, SessionClient
from epic.rundir import (
    CentralStatus,
    DeliveryCounts,
    DeviceReceipt,
    DroppedGather,
    FrameCounts,
    GatherCounts,
    Result,
    RunDir,
    append_record,
    write_map,
    write_record,
)
from epic.topology import Topology, load_topology
from epic.wire import (
    STATUS_ONLINE,
    Channel,
    FrameError,
    RangeSet,
    ack_topic,
    central_status_topic,
    encode_ack,
    parse_topic,
    result_topic,
    validate_name,
)

__all__ = ["CentralConfig", "CentralService", "LatentDecoder", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CentralConfig:
    """Everything central needs, parsed once. Paths are as given; ``None`` means absent.

    Attributes:
        topology: topology.yaml; rundir: broker runtime dir (credentials) and output dir.
        checkpoint: the latent model ("epic" or another distributed model); None with
            ``decoder``.
        raw_checkpoint: an "inversionnet" checkpoint for raw mode, or None (no raw maps).
        decoder: an ``epic export-decoders`` manifest: both decoders run torch-free on ONNX
            Runtime (raw maps when it has InversionNet); it takes precedence over the
            checkpoints.
        truth: an OpenFWI-layout directory (gather id = sample index) for MAE/RMSE/SSIM.
        threads: decoder intra-op threads (torch or ONNX Runtime).
        broker_host/port, password: override the runtime.
        log_interval_s: a rejection reason is logged at most once per this interval.
        status_interval_s: period of the central-status.json rewrite.
        max_batch: gathers decoded in one model call when several are ready.
        ack_interval_s: end-to-end confirmations are published at most this often (s).
    """

    topology: Path
    rundir: Path
    checkpoint: Path | None = None
    raw_checkpoint: Path | None = None
    decoder: Path | None = None
    truth: Path | None = None
    threads: int = 1
    broker_host: str | None = None
    broker_port: int | None = None
    password: str | None = None
    log_interval_s: float = 5.0
    status_interval_s: float = 1.0
    max_batch: int = 16
    ack_interval_s: float = 0.05


class LatentDecoder:
    """Dequantises latent frames into tokens and runs the distributed model's decoder.

    Args:
        checkpoint: a checkpoint of a model in ``epic.models.DISTRIBUTED`` (run in torch),
            or None with ``decoder``.
        receivers: device id -> receiver range ``(first, last)``; a device's slot in the
            model is ``first // rx_per_device`` and its range must be one slot exactly.
    """

    def __init__(self, checkpoint: Path | None, receivers: Mapping[int, tuple[int, int]],
                 decoder: Path | None = None, threads: int = 1) -> None:
        self.model = self.runtime = None
        if decoder is not None:  # torch-free: the exported decoder on ONNX Runtime
            self.runtime = LatentDecoderRuntime(decoder, threads=threads)
            k, n_devices = self.runtime.rx_per_device, self.runtime.n_devices
            self.latent_shape = self.runtime.latent_shape
            what, source = "epic decoder (onnxruntime)", decoder
        elif checkpoint is None:
            raise InputError("latent mode needs a checkpoint or a decoder manifest")
        else:
            from epic.models.checkpoint import load_checkpoint
            from epic.models.registry import DISTRIBUTED

            self.model, ckpt = load_checkpoint(checkpoint)
            if ckpt["model"] not in DISTRIBUTED:
                raise InputError(f"{checkpoint}: model {ckpt['model']!r} takes no latents; "
                                 f"expected one of {sorted(DISTRIBUTED)}")
            k, n_devices = self.model.rx_per_device, self.model.n_devices
            self.latent_shape = (k, self.model.token_dim)
            what, source = f"{ckpt['model']} model (torch)", checkpoint
        self.slots: dict[int, int] = {}
        for device_id, (first, last) in receivers.items():
            if first % k or last - first != k or first // k >= n_devices:
                raise InputError(f"device-{device_id} receivers [{first}, {last}) are not one "
                                 f"of the model's {n_devices} slots of {k} receivers")
            self.slots[device_id] = first // k
        self.n_devices = n_devices
        log.info("latent mode: %s from %s, latent %s", what, source, self.latent_shape)

    def decode(self, gathers: Sequence[Gather]) -> np.ndarray:
        """``len(gathers)`` maps, ``(B, 70, 70)`` float32 m/s, absent devices masked."""
        tokens = np.zeros((len(gathers), self.n_devices, *self.latent_shape), np.float32)
        present = np.zeros((len(gathers), self.n_devices), bool)
        for row, gather in enumerate(gathers):
            for device_id, parts in gather.devices.items():
                slot = self.slots[device_id]
                tokens[row, slot] = parts.frames[0].dequantized()  # (14, 64)
                present[row, slot] = True
        if self.runtime is not None:
            return self.runtime.decode(tokens, present)  # (B, 70, 70) m/s
        import torch

        with torch.inference_mode():
            y = self.model.decode(torch.from_numpy(tokens), torch.from_numpy(present))
        return denormalize_velocity(y.numpy()[:, 0])  # (B, 70, 70) m/s


class CentralService:
    """The running central node. ``run(stop)`` blocks until ``stop`` is set."""

    def __init__(self, config: CentralConfig, topology: Topology) -> None:
        self.config = config
        self.topology = topology
        self.testbed = validate_name(topology.testbed)
        self.names = {d.number: d.id for d in topology.devices}
        receivers = {d.number: tuple(d.receivers) for d in topology.devices}
        if config.decoder is not None and (config.checkpoint or config.raw_checkpoint):
            log.info("decoder manifest %s given: the torch checkpoints are not used",
                     config.decoder)
        self.latent = LatentDecoder(config.checkpoint, receivers, config.decoder,
                                    config.threads)
        self.raw = RawDecoder(config.raw_checkpoint, receivers, decoder=config.decoder,
                              threads=config.threads)
        self.validator = FrameValidator({n: b - a for n, (a, b) in receivers.items()},
                                        self.latent.latent_shape, RAW_TIME_SAMPLES, RAW_SHOTS)
        self.assembler = Assembler(list(receivers), topology.central.decode_deadline_s)
        self.rejections = RejectionLog(config.log_interval_s)
        self.truth = OpenFWIDataset(config.truth) if config.truth else None
        self.rundir = Path(config.rundir)
        self.files = RunDir(self.rundir)
        self.files.maps.mkdir(parents=True, exist_ok=True)
        self._inbox: queue.SimpleQueue[tuple[str, bytes, int]] = queue.SimpleQueue()
        self.received = self.accepted = self.status_messages = self.decode_errors = 0
        self.decoded = {mode: 0 for mode in MODE_OF_KIND.values()}
        self.partial = 0
        self.device_status: dict[str, str] = {}
        self.last_gather: dict | None = None
        self.started_ns = time.time_ns()
        # end-to-end delivery: device -> mode -> gathers confirmed; devices owed a confirmation
        self.confirmed: dict[int, dict[str, RangeSet]] = {
            n: {mode: RangeSet() for mode in MODE_OF_KIND.values()} for n in self.names}
        self._ack_due: set[int] = set()
        self._ack_sent_s = -float("inf")
        self.acks_sent = 0
        self.deadline_extensions = 0
        self._connects_seen = 0
        self.client = SessionClient(self._mqtt_settings(),
                                    subscriptions=central_subscriptions(self.testbed),
                                    on_message=self._on_message,
                                    status_topic=central_status_topic(self.testbed))

    def _mqtt_settings(self) -> MqttSettings:
        cfg = self.config
        runtime = None
        if cfg.broker_host is None or cfg.broker_port is None or cfg.password is None:
            runtime = load_runtime(cfg.rundir)
            if runtime.testbed != self.testbed:
                raise InputError(f"broker runtime {cfg.rundir} is for testbed "
                                 f"{runtime.testbed!r}, topology {cfg.topology} for "
                                 f"{self.testbed!r}")
        return MqttSettings(
            host=cfg.broker_host or runtime.host, port=cfg.broker_port or runtime.port,
            client_id=CENTRAL_USER, username=CENTRAL_USER,
            password=cfg.password or runtime.password(CENTRAL_USER),
            ca_file=runtime.ca_file if runtime else None, replay_window_s=0)

    def _on_message(self, message: object) -> None:  # paho's network thread
        self._inbox.put((message.topic, bytes(message.payload), time.time_ns()))

    def run(self, stop: threading.Event) -> None:
        """Connect (retrying until ``stop``), serve until ``stop``, then shut down cleanly."""
        while not stop.is_set():
            try:
                self.client.connect(timeout_s=10)
                break
            except MqttConnectError as exc:
                log.warning("%s; retrying in 2 s", exc)
                stop.wait(2)
        log.info("central ready: testbed %s, %d devices, deadline %.3f s", self.testbed,
                 len(self.names), self.assembler.deadline_s)
        next_status_s = 0.0
        while not stop.is_set():
            now_s = time.monotonic()
            if now_s >= next_status_s:
                self.write_status()
                next_status_s = now_s + self.config.status_interval_s
            deadline_s = self.assembler.next_deadline_s()
            wait_s = min(0.2, next_status_s - now_s,
                         deadline_s - now_s if deadline_s is not None else 0.2,
                         self._ack_sent_s + self.config.ack_interval_s - now_s
                         if self._ack_due else 0.2)
            self._step(max(wait_s, 0.0))
        self.shutdown()

    def _step(self, wait_s: float) -> None:
        """Take queued messages (waiting up to ``wait_s`` for the first), decode what is due."""
        ready: list[Gather] = []
        try:
            item = self._inbox.get(timeout=wait_s) if wait_s > 0 else self._inbox.get_nowait()
            ready += self._ingest(*item)
            for _ in range(1000):  # drain a burst so its gathers are decoded in batches
                ready += self._ingest(*self._inbox.get_nowait())
        except queue.Empty:
            pass
        now_s = time.monotonic()
        if self.client.connects > self._connects_seen:  # (re)connected
            if self._connects_seen:  # the broker came back: devices will send again
                self._extend(now_s, None, "central reconnected")
            self._connects_seen = self.client.connects
        ready += self.assembler.expired(now_s)
        for gather in self.assembler.take_dropped():
            self._record_dropped(gather)
        if ready:
            self._decode(ready)
        self._confirm(time.monotonic())

    def _extend(self, now_s: float, device_id: int | None, why: str) -> None:
        """Frames are in flight after a reconnect: move the open gathers' deadlines."""
        moved = self.assembler.extend(now_s, device_id)
        self.deadline_extensions += moved
        if moved:
            log.info("%s: %d open gathers get %.3f s more", why, moved,
                     self.assembler.deadline_s)

    def _confirm(self, now_s: float) -> None:
        """Publish the end-to-end confirmations owed (cumulative, retained, QoS 1)."""
        for device_id, mode, gather_id in self.assembler.take_confirmations():
            if self.confirmed[device_id][mode].add(gather_id):
                self._ack_due.add(device_id)
        if not self._ack_due or now_s < self._ack_sent_s + self.config.ack_interval_s:
            return
        for device_id in sorted(self._ack_due):
            self.client.publish(ack_topic(self.testbed, device_id),
                                encode_ack(self.confirmed[device_id]), retain=True)
            self.acks_sent += 1
        self._ack_due.clear()
        self._ack_sent_s = now_s

    def _record_dropped(self, gather: Gather) -> None:
        """A gather closed with no complete device: one line in RUNDIR/dropped.jsonl."""
        reason = (f"no device complete within the {self.assembler.deadline_s:g} s deadline"
                  + (f" (extended {gather.extended}x)" if gather.extended else ""))
        record = DroppedGather(gather=gather.gather_id, mode=gather.mode, reason=reason,
                               incomplete=tuple(self.names[d] for d in gather.incomplete),
                               wait_s=round(gather.closed_s - gather.first_s, 6),
                               dropped_ns=time.time_ns())
        append_record(self.files.dropped, record)
        log.warning("%s gather %d dropped: %s", gather.mode, gather.gather_id, reason)

    def _ingest(self, topic: str, payload: bytes, receive_ns: int) -> list[Gather]:
        if topic.endswith("/" + Channel.STATUS):
            self.status_messages += 1
            try:
                number = parse_topic(topic).device_id  # None: central's own status
            except FrameError:
                return []
            if number in self.names:
                device = self.names[number]
                self.device_status[device] = payload.decode("ascii", "replace")[:16]
                if payload == STATUS_ONLINE:  # a device (re)connected: it sends again
                    self._extend(time.monotonic(), number, f"{device} connected")
                    # and confirm again what it has: a broker that saves periodically can
                    # have lost the retained confirmation, and a copy of a gather central
                    # already has is never confirmed anew (the device would wait for it)
                    if any(self.confirmed[number].values()):
                        self._ack_due.add(number)
            return []
        self.received += 1
        now_s = time.monotonic()
        try:
            frame = self.validator.validate(topic, payload)
            gather = self.assembler.add(frame, receive_ns, now_s)
        except FrameError as exc:
            self.rejections.reject(exc.reason, str(exc), now_s)
            return []
        except Exception as exc:  # never let garbage take the service down
            self.rejections.reject("internal_error", f"{type(exc).__name__}: {exc}", now_s)
            return []
        self.accepted += 1
        return [gather] if gather is not None else []

    def _decode(self, gathers: list[Gather]) -> None:
        for mode, decoder in (("latent", self.latent), ("raw", self.raw)):
            todo = [g for g in gathers if g.mode == mode]
            for start in range(0, len(todo), self.config.max_batch):
                batch = todo[start:start + self.config.max_batch]
                start_ns = time.time_ns()
                try:
                    maps = decoder.decode(batch) if mode == "latent" or self.raw.available \
                        else [None] * len(batch)
                except Exception as exc:
                    self.decode_errors += 1
                    log.error("decode of %s gathers %s failed: %s: %s", mode,
                              [g.gather_id for g in batch], type(exc).__name__, exc)
                    continue
                end_ns = time.time_ns()
                for gather, velocity in zip(batch, maps, strict=True):
                    self._sink(gather, velocity, start_ns, end_ns, len(batch))

    def _sink(self, gather: Gather, velocity: np.ndarray | None, start_ns: int, end_ns: int,
              batch: int) -> None:
        """Write the map, one results.jsonl line, and the short result on MQTT."""
        map_ref = None
        if velocity is not None:
            map_ref = RunDir.map_ref(gather.mode, gather.gather_id)
            write_map(self.files.map(gather.mode, gather.gather_id), velocity)
        devices = {self.names[d]: DeviceReceipt(**p.stamps_ns, frames=len(p.frames),
                                                wire_bytes=p.wire_bytes)
                   for d, p in gather.devices.items()}
        record = Result(
            gather=gather.gather_id, mode=gather.mode,
            present=tuple(self.names[d] for d in gather.devices),
            absent=tuple(n for d, n in self.names.items() if d not in gather.devices),
            incomplete=tuple(self.names[d] for d in gather.incomplete),
            partial=len(gather.devices) < len(self.names),
            at_deadline=gather.at_deadline, deadline_extended=gather.extended,
            wait_s=round(gather.closed_s - gather.first_s, 6),
            decode_start_ns=start_ns, decode_end_ns=end_ns, decode_batch=batch,
            devices=devices, wire_bytes=sum(d.wire_bytes for d in devices.values()),
            map=map_ref, metrics=self._metrics(gather.gather_id, velocity))
        append_record(self.files.results, record)
        self.decoded[gather.mode] += 1
        self.partial += record.partial
        full = record.to_dict()
        short = {k: full[k] for k in ("gather", "mode", "present", "decode_end_ns", "map",
                                      "metrics")}
        self.last_gather = short
        if self.client.is_connected:
            self.client.publish(result_topic(self.testbed), json.dumps(short).encode())

    def _metrics(self, gather_id: int, velocity: np.ndarray | None) -> dict | None:
        if self.truth is None or velocity is None or gather_id >= len(self.truth):
            return None
        true = self.truth[gather_id][1]
        if true is None:
            return None
        per = per_sample_fidelity(normalize_velocity(velocity)[None, None],
                                  normalize_velocity(true)[None])
        return {k: round(float(v[0]), 6) for k, v in per.items()}

    def status(self) -> CentralStatus:
        """The counters written to central-status.json."""
        return CentralStatus(
            pid=os.getpid(), started_ns=self.started_ns, updated_ns=time.time_ns(),
            testbed=self.testbed, connected=self.client.is_connected,
            connects=self.client.connects,
            frames=FrameCounts(received=self.received, accepted=self.accepted,
                               rejected=dict(sorted(self.rejections.counts.items()))),
            gathers=GatherCounts(decoded=dict(self.decoded), partial=self.partial,
                                 dropped=self.assembler.dropped,
                                 pending=self.assembler.pending,
                                 decode_errors=self.decode_errors),
            delivery=DeliveryCounts(confirmations_sent=self.acks_sent,
                                    deadline_extensions=self.deadline_extensions),
            status_messages=self.status_messages, device_status=dict(self.device_status),
            last_gather=self.last_gather)

    def write_status(self) -> None:
        """Rewrite RUNDIR/central-status.json atomically."""
        write_record(self.files.central_status, self.status())

    def shutdown(self) -> None:
        """Drain, close every open gather, publish "offline", disconnect, final status."""
        log.info("central stopping: draining %d queued messages", self._inbox.qsize())
        self._step(0)
        self._decode(self.assembler.flush(time.monotonic()))
        for gather in self.assembler.take_dropped():
            self._record_dropped(gather)
        self._ack_sent_s = -float("inf")  # confirm what the flush closed before leaving
        self._confirm(time.monotonic())
        self.client.close()  # retained "offline" on epic/<testbed>/central/status
        self._step(0)  # anything that arrived while disconnecting (acknowledged already)
        self._decode(self.assembler.flush(time.monotonic()))
        self.write_status()
        log.info("central stopped: %d frames accepted, %d rejected, %s gathers decoded",
                 self.accepted, self.rejections.total, self.decoded)


_ARGS = (  # flag, environment variable, type, help
    ("--topology", "EPIC_TOPOLOGY", Path, "topology.yaml"),
    ("--rundir", "EPIC_RUNDIR", Path, "broker runtime dir (credentials) and output dir"),
    ("--checkpoint", "EPIC_CHECKPOINT", Path, "latent model checkpoint"),
    ("--raw-checkpoint", "EPIC_RAW_CHECKPOINT", Path, "InversionNet checkpoint (raw mode)"),
    ("--truth", "EPIC_TRUTH", Path, "OpenFWI-layout dir with the true maps"),
    ("--decoder", "EPIC_DECODER", Path,
     "epic export-decoders manifest: torch-free decoders (ONNX Runtime), over the checkpoints"),
    ("--threads", "EPIC_THREADS", int, "decoder threads, torch or ONNX Runtime (default 1)"),
    ("--broker-host", "EPIC_BROKER_HOST", str, "broker host (default: from the runtime)"),
    ("--broker-port", "EPIC_BROKER_PORT", int, "broker port (default: from the runtime)"),
    ("--max-batch", "EPIC_MAX_BATCH", int, "gathers per model call (default 16)"),
)


def parse_config(argv: Sequence[str] | None = None) -> CentralConfig:
    """Command line, falling back to environment variables; raise InputError if incomplete."""
    parser = argparse.ArgumentParser(prog="python -m central.service", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, env, kind, text in _ARGS:
        parser.add_argument(flag, type=kind, default=None, help=f"{text} [${env}]")
    parser.add_argument("--log-level", default=os.environ.get("EPIC_LOG_LEVEL", "INFO"))
    args = vars(parser.parse_args(argv))
    values: dict[str, object] = {}
    for flag, env, kind, _ in _ARGS:
        key = flag[2:].replace("-", "_")
        value = args[key] if args[key] is not None else os.environ.get(env)
        try:
            values[key] = kind(value) if value not in (None, "") else None
        except ValueError:
            raise InputError(f"{flag} / ${env}: cannot read {value!r} as {kind.__name__}"
                             ) from None
    required = ("topology", "rundir") + (("checkpoint",) if values["decoder"] is None else ())
    missing = [f for f in required if values[f] is None]
    if missing:
        raise InputError(f"central needs {', '.join('--' + m for m in missing)} "
                         f"(or $EPIC_{'/$EPIC_'.join(m.upper() for m in missing)})")
    values = {k: v for k, v in values.items() if v is not None}
    level = str(args["log_level"]).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise InputError(f"--log-level / $EPIC_LOG_LEVEL: unknown level {args['log_level']!r}")
    logging.getLogger().setLevel(level)
    return CentralConfig(password=os.environ.get("EPIC_MQTT_PASSWORD") or None, **values)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run central until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad input."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        config = parse_config(argv)
        if config.threads < 1:
            raise InputError(f"--threads must be >= 1, got {config.threads}")
        if config.decoder is None:  # torch only on the checkpoint path
            import torch

            torch.set_num_threads(config.threads)
        service = CentralService(config, load_topology(config.topology))
    except InputError as exc:  # also DataError, TopologyError
        log.error("%s", exc)
        return 2
    service.run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
