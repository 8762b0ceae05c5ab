"""Live link shaping: one TCP proxy per device between its MQTT client and the broker.

All the devices of a topology are served by ONE process and one asyncio event loop, each on
its own listening port: a shared medium is one `emulation.network.Medium` that every proxy
on it books, which needs no locks or IPC when they share a loop. Per device:

- device -> broker: the byte stream is cut into whole MQTT packets (`MqttFramer`); each goes
  through `LinkShaper.uplink` (the model's segmentation, loss rounds with ``rto_s``,
  serialisation on the link or the shared medium, propagation and jitter) and is written to
  the broker when it arrives. Bytes are never dropped or reordered: loss is extra delay.
- broker -> device (CONNACK, PUBACK, ...): `LinkShaper.downlink`, on the same link.
- every ``status_every_s`` (1 s) RUNDIR/proxy-<device>.json is replaced atomically: ports,
  link, counters, tx/rx seconds, energy by radio state, the last reload and its error (an
  :class:`epic.rundir.ProxyStatus`).
- hot reload: the topology file is polled (mtime and size, every ``poll_s``); a changed,
  valid file re-links the devices whose link or radio changed, from their next packet on;
  an invalid one keeps the running topology, logs why and puts it in the status files.
- ``--follow FILE`` (the compose testbed: the user's ./topology.yaml, mounted read-only):
  when FILE changes, its text is copied over the watched topology file, so editing the
  user's topology hot-reloads the running proxies as editing the run dir's copy does (an
  edit of FILE replaces a fault's edit of the copy; an invalid FILE is reported the same way).
- SIGTERM or SIGINT: stop listening, close the connections, write the final status, exit 0.

CLI::

    python -m emulation.proxy --topology topology.yaml --rundir RUNDIR \\
        --broker-host H --broker-port Q --listen-port P [--device device-1 ...]

Without ``--device`` every device of the topology is proxied. One ``--listen-port`` is a
base (the k-th device listens on P + k); otherwise give one port per ``--device``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from emulation.network import Medium
from emulation.shaper import LinkShaper, MqttFramer, PacketType, packet_type
from epic.errors import InputError
from epic.rundir import (
    Endpoint,
    ProxyStatus,
    RadioEnergy,
    ReloadState,
    RunDir,
    write_atomic,
    write_record,
)
from epic.topology import Topology, load_topology, reload_topology

__all__ = ["LinkProxy", "ProxySettings", "main"]

log = logging.getLogger(__name__)
_READ_BYTES = 1 << 16

@dataclass(frozen=True)
class ProxySettings:
    """Where the proxies listen and forward, and how often they look and report.

    Attributes:
        topology_path: the topology file (watched for changes).
        rundir: directory of the status files (created if missing).
        broker_host, broker_port: the real broker.
        ports: device id -> listening port, in the order to serve them.
        listen_host: address the proxies bind.
        seed: seed of the loss and jitter streams (as `NetworkModel`'s).
        poll_s: topology file poll period, seconds.
        status_every_s: status file period, seconds.
        follow_path: a file whose changes are copied over ``topology_path``, or None.
    """

    topology_path: Path
    rundir: Path
    broker_host: str
    broker_port: int
    ports: dict[str, int]
    listen_host: str = "127.0.0.1"
    seed: int = 0
    poll_s: float = 0.5
    status_every_s: float = 1.0
    follow_path: Path | None = None


class LinkProxy:
    """The link proxies of the devices in ``settings.ports``, in one event loop."""

    def __init__(self, settings: ProxySettings, topology: Topology | None = None) -> None:
        self.settings = settings
        self.topology = topology or load_topology(settings.topology_path)
        known = {d.id for d in self.topology.devices}
        unknown = sorted(set(settings.ports) - known)
        if unknown:
            raise InputError(f"devices {unknown} are not in {settings.topology_path} "
                             f"(known: {sorted(known)})")
        self._loop_start_s = time.monotonic()
        self._media: dict[str, Medium] = {}
        self.shapers: dict[str, LinkShaper] = {}
        self.reloads = 0
        self.reload_error: str | None = None
        self.reloaded_unix_s: float | None = None
        self._started_unix_s = time.time()
        self._connections: set[asyncio.Task] = set()
        self._open = 0
        for index, device in enumerate(self.topology.devices):
            if device.id in settings.ports:
                self.shapers[device.id] = LinkShaper(
                    index, device, self.topology.link_of(device), self._medium_for(device.link),
                    settings.seed, 0.0)

    # -- clock, media, reload --------------------------------------------------------------
    def _now(self) -> float:
        return time.monotonic() - self._loop_start_s

    def _medium_for(self, link_name: str, topology: Topology | None = None) -> Medium | None:
        """The shared medium of ``link_name`` (made once per name), None if dedicated."""
        if (topology or self.topology).links[link_name].kind != "shared":
            return None
        return self._media.setdefault(link_name, Medium())

    def apply(self, new: Topology) -> list[str]:
        """Make ``new`` the running topology; re-link the devices whose link or radio changed
        (from their next packet on). Returns their ids."""
        changed = []
        by_id = {d.id: d for d in new.devices}
        old_by_id = {d.id: d for d in self.topology.devices}
        for device_id, shaper in self.shapers.items():
            device = by_id.get(device_id)
            if device is None:
                log.warning("%s is gone from the topology; keeping its old link", device_id)
                continue
            old = old_by_id[device_id]
            new_link = new.link_of(device)
            if (device.link, new_link, device.energy, device.radio_idle_state) != (
                    old.link, shaper.link, old.energy, old.radio_idle_state):
                shaper.relink(self._now(), device, new_link, self._medium_for(device.link, new))
                changed.append(device_id)
                log.info("%s: link %s now %s", device_id, device.link,
                         new_link.model_dump(exclude_defaults=False))
        self.topology = new
        return changed

    def check_reload(self) -> bool:
        """Reload the topology file; True if a new topology took effect."""
        result = reload_topology(self.settings.topology_path, self.topology)
        if result.error is not None:
            self.reload_error = str(result.error)
            log.error("topology reload failed, keeping the running links: %s", result.error)
            return False
        self.reload_error = None
        if not result.changed:
            return False
        self.reloads += 1
        self.reloaded_unix_s = time.time()
        self.apply(result.topology)
        return True

    # -- status -----------------------------------------------------------------------------
    def status(self, device_id: str, state: str = "running") -> ProxyStatus:
        """The status of one device's proxy (RUNDIR/proxy-<device>.json)."""
        shaper, now_s = self.shapers[device_id], self._now()
        device = next(d for d in self.topology.devices if d.id == device_id)
        link = shaper.status(now_s)  # counters, tx_s, rx_s, energy_j
        return ProxyStatus(
            device=device_id, state=state, pid=os.getpid(),
            listen=Endpoint(host=self.settings.listen_host,
                            port=self.settings.ports[device_id]),
            broker=Endpoint(host=self.settings.broker_host, port=self.settings.broker_port),
            topology=str(self.settings.topology_path), link=device.link,
            link_spec=shaper.link.model_dump(), connections_open=self._open,
            started_unix_s=self._started_unix_s, updated_unix_s=time.time(), uptime_s=now_s,
            reload=ReloadState(count=self.reloads, last_unix_s=self.reloaded_unix_s,
                               error=self.reload_error),
            **{**link, "energy_j": RadioEnergy(**link["energy_j"])})

    def write_status(self, state: str = "running") -> None:
        """Replace every RUNDIR/proxy-<device>.json (atomically)."""
        files = RunDir(self.settings.rundir)
        for device_id in self.shapers:
            write_record(files.proxy_status(device_id), self.status(device_id, state))

    # -- the connections --------------------------------------------------------------------
    async def _sleep_until(self, t_s: float) -> None:
        delay = t_s - self._now()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _shape_up(self, device_id: str, reader: asyncio.StreamReader,
                        queue: asyncio.Queue) -> None:
        framer, partial_s = MqttFramer(), 0.0
        while data := await reader.read(_READ_BYTES):
            # a packet is ready when its first byte is read (the device's stack would have
            # started sending it then), not when its last one is
            now_s = self._now()
            started_s = partial_s if framer.buffered_bytes else now_s
            packets = framer.feed(data)
            partial_s = now_s if packets else started_s
            for k, packet in enumerate(packets):
                ready_s = started_s if k == 0 else now_s
                shaper = self.shapers[device_id]  # looked up per packet: reloads apply next
                steps = shaper.uplink(ready_s, len(packet),
                                      packet_type(packet) == PacketType.PUBLISH)
                try:
                    while True:
                        await self._sleep_until(next(steps))
                except StopIteration as done:
                    queue.put_nowait((done.value, packet))
        queue.put_nowait(None)

    async def _shape_down(self, device_id: str, reader: asyncio.StreamReader,
                          queue: asyncio.Queue) -> None:
        framer = MqttFramer()
        while data := await reader.read(_READ_BYTES):
            for packet in framer.feed(data):
                queue.put_nowait((self.shapers[device_id].downlink(self._now(), len(packet)),
                                  packet))
        queue.put_nowait(None)

    async def _deliver(self, queue: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
        """Write each packet at its arrival time, in order; half-close at the end."""
        while (item := await queue.get()) is not None:
            arrival_s, packet = item
            await self._sleep_until(arrival_s)
            writer.write(packet)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def _handle(self, device_id: str, dev_reader: asyncio.StreamReader,
                      dev_writer: asyncio.StreamWriter) -> None:
        s = self.settings
        try:
            broker_reader, broker_writer = await asyncio.open_connection(s.broker_host,
                                                                         s.broker_port)
        except OSError as exc:
            log.error("%s: cannot reach the broker %s:%d: %s", device_id, s.broker_host,
                      s.broker_port, exc)
            dev_writer.close()
            return
        self._open += 1
        up_q: asyncio.Queue = asyncio.Queue()
        down_q: asyncio.Queue = asyncio.Queue()
        tasks = [asyncio.create_task(c) for c in (
            self._shape_up(device_id, dev_reader, up_q), self._deliver(up_q, broker_writer),
            self._shape_down(device_id, broker_reader, down_q),
            self._deliver(down_q, dev_writer))]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.info("%s: connection ends: %r", device_id, task.exception())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in (broker_writer, dev_writer):
                writer.close()
            self._open -= 1

    def _track(self, device_id: str, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._handle(device_id, reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    # -- the loop ---------------------------------------------------------------------------
    async def _watch(self) -> None:
        path, follow = self.settings.topology_path, self.settings.follow_path

        def stamp(of: Path | None) -> tuple[int, int] | None:
            with contextlib.suppress(OSError):
                st = of.stat() if of is not None else None
                return (st.st_mtime_ns, st.st_size) if st else None
            return None

        seen, followed = stamp(path), stamp(follow)
        while True:
            await asyncio.sleep(self.settings.poll_s)
            if follow is not None and (now := stamp(follow)) != followed:
                followed = now
                self.follow_once()
            now = stamp(path)
            if now != seen:
                seen = now
                self.check_reload()
                self.write_status()

    def follow_once(self) -> bool:
        """Copy ``follow_path``'s text over the watched topology file if it differs."""
        follow = self.settings.follow_path
        try:
            text = follow.read_bytes()
            if text == self.settings.topology_path.read_bytes():
                return False
        except OSError as exc:
            log.error("cannot follow %s: %s", follow, exc)
            return False
        write_atomic(self.settings.topology_path, text)
        log.info("%s changed: copied over %s (reloaded next)", follow,
                 self.settings.topology_path)
        return True

    async def _report(self) -> None:
        while True:
            self.write_status()
            await asyncio.sleep(self.settings.status_every_s)

    async def serve(self, stop: asyncio.Event) -> None:
        """Listen on every device's port until ``stop`` is set, then shut down cleanly."""
        self.settings.rundir.mkdir(parents=True, exist_ok=True)
        servers = []
        for device_id, port in self.settings.ports.items():
            servers.append(await asyncio.start_server(
                lambda r, w, d=device_id: self._track(d, r, w), self.settings.listen_host,
                port))
            log.info("%s: listening on %s:%d -> broker %s:%d (link %s)", device_id,
                     self.settings.listen_host, port, self.settings.broker_host,
                     self.settings.broker_port, self.shapers[device_id].link)
        workers = [asyncio.create_task(self._watch()), asyncio.create_task(self._report())]
        try:
            await stop.wait()
        finally:
            log.info("link proxy stopping: %d connections open", len(self._connections))
            for server in servers:
                server.close()
            for task in [*workers, *self._connections]:
                task.cancel()
            await asyncio.gather(*workers, *self._connections, return_exceptions=True)
            self.write_status("stopped")


async def _run(settings: ProxySettings) -> None:
    proxy = LinkProxy(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await proxy.serve(stop)


def main(argv: list[str] | None = None) -> int:
    """The CLI (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m emulation.proxy",
                                     description="Shape devices' MQTT traffic with the link "
                                                 "model of a topology (hot-reloaded).")
    parser.add_argument("--topology", type=Path, required=True)
    parser.add_argument("--rundir", type=Path, required=True)
    parser.add_argument("--device", action="append", default=[],
                        help="device id to proxy (repeat; default: all)")
    parser.add_argument("--listen-port", type=int, action="append", required=True,
                        help="one base port, or one per --device")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--broker-host", default=None)
    parser.add_argument("--broker-port", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--poll-s", type=float, default=0.5)
    parser.add_argument("--follow", type=Path, default=None,
                        help="copy this file over --topology whenever it changes")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    topology = load_topology(args.topology)
    devices = args.device or [d.id for d in topology.devices]
    if len(args.listen_port) == 1:
        ports = {d: args.listen_port[0] + k for k, d in enumerate(devices)}
    elif len(args.listen_port) == len(devices):
        ports = dict(zip(devices, args.listen_port, strict=True))
    else:
        parser.error(f"give one --listen-port or one per --device, got {len(args.listen_port)} "
                     f"for {len(devices)} devices")
    settings = ProxySettings(args.topology, args.rundir, args.broker_host or topology.broker.host,
                             args.broker_port or topology.broker.port, ports, args.listen_host,
                             args.seed, args.poll_s, follow_path=args.follow)
    try:
        asyncio.run(_run(settings))
    except InputError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
