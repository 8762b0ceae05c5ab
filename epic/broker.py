"""Prepare and run the testbed's own Mosquitto broker.

``prepare_runtime`` fills RUNDIR (never committed) with: ``passwd`` (one random credential per
device, ``device-<id>``, one for ``central`` and one for the read-only ``observer``, hashed by
``mosquitto_passwd``),
``credentials.json`` (the plain passwords, mode 0600), ``acl`` and ``mosquitto.conf`` (from the
templates in ``broker/``), ``persistence/``, and with ``tls=True`` a self-signed CA and server
certificate made with the ``openssl`` CLI. ``BrokerProcess`` runs ``mosquitto -c`` on it.

The broker uses each client's username as its client id (``use_username_as_clientid``), so
every client connects with client id == username (``epic.mqtt.MqttSettings`` insists), and
two connections with one username displace each other: a tool that watches a running testbed
logs in as ``observer``, never as ``central``.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from paho.mqtt.subscribeoptions import SubscribeOptions

from epic.errors import InputError
from epic.rundir import RunDir
from epic.wire import MAX_FRAME_BYTES, Channel, central_filter, device_name, validate_name

__all__ = [
    "CENTRAL_USER",
    "DEFAULT_ACL_TEMPLATE",
    "DEFAULT_CONF_TEMPLATE",
    "OBSERVER_USER",
    "BrokerError",
    "BrokerProcess",
    "BrokerRuntime",
    "central_subscriptions",
    "free_port",
    "load_runtime",
    "prepare_runtime",
]

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONF_TEMPLATE = REPO / "broker" / "mosquitto.conf"
DEFAULT_ACL_TEMPLATE = REPO / "broker" / "acl.template"
CENTRAL_USER = "central"
OBSERVER_USER = "observer"  # read-only: results and status (broker/acl.template)
CREDENTIALS_FILE = RunDir.CREDENTIALS
_PACKET_OVERHEAD_BYTES = 4096  # fixed header, topic and v5 properties around a frame


class BrokerError(RuntimeError):
    """The broker (or a tool it needs: mosquitto, mosquitto_passwd, openssl) failed."""


@dataclass(frozen=True)
class BrokerRuntime:
    """A prepared runtime directory.

    Attributes:
        rundir: the directory; conf_path is rundir/mosquitto.conf.
        testbed: the testbed name used in topics and the ACL.
        host, port: where the listener binds (clients connect to host:port).
        passwords: username -> password ("central", "observer", "device-<id>").
        ca_file: the CA certificate clients must trust, or None without TLS.
        save_interval_s: None: the broker saves its database after every change; else every
            that many seconds (a SIGKILL loses the changes of the last interval).
    """

    rundir: Path
    testbed: str
    host: str
    port: int
    passwords: dict[str, str] = field(repr=False)
    ca_file: Path | None = None
    save_interval_s: int | None = None

    @property
    def conf_path(self) -> Path:
        return RunDir(self.rundir).broker_conf

    def password(self, username: str) -> str:
        """The password of ``username``; raise InputError if there is no such user."""
        try:
            return self.passwords[username]
        except KeyError:
            raise InputError(f"no user {username!r} in {self.rundir / CREDENTIALS_FILE}") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def central_subscriptions(testbed: str) -> list[tuple[str, SubscribeOptions]]:
    """Central's topic filters (QoS 1): every device's latent, raw and status topics.

    Frames are subscribed with retain handling 2, so the broker never hands central a frame
    that a device published with the retain flag (it would be delivered to every new
    subscription, in later runs too); status topics keep their retained birth / last will.
    """
    no_retained = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
    return [(central_filter(testbed, Channel.LATENT), no_retained),
            (central_filter(testbed, Channel.RAW), no_retained),
            (central_filter(testbed, Channel.STATUS), SubscribeOptions(qos=1))]


def _tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                  else None)
    if path is None:
        raise BrokerError(f"{name} not found on PATH (install the mosquitto package)")
    return path


def _run(args: Sequence[str], what: str) -> None:
    result = subprocess.run(list(args), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"{what} failed ({result.returncode}): {result.stderr.strip()}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _make_tls(rundir: Path, host: str) -> tuple[Path, str]:
    """Self-signed CA + server certificate for ``host``; returns (ca_file, conf lines)."""
    openssl = _tool("openssl")
    tls_dir = rundir / RunDir.TLS
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    ca_key, ca_crt = tls_dir / "ca.key", tls_dir / "ca.crt"
    key, csr, crt = tls_dir / "server.key", tls_dir / "server.csr", tls_dir / "server.crt"
    ec_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _run([openssl, "req", "-x509", *ec_key, "-days", "2", "-subj", "/CN=EPIC testbed CA",
          "-keyout", str(ca_key), "-out", str(ca_crt)], "openssl CA")
    _run([openssl, "req", *ec_key, "-subj", f"/CN={host}", "-keyout", str(key),
          "-out", str(csr)], "openssl server request")
    ext = tls_dir / "san.ext"
    ext.write_text(f"subjectAltName=IP:{host},DNS:localhost\n" if host[0].isdigit()
                   else f"subjectAltName=DNS:{host},DNS:localhost\n")
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_crt), "-CAkey", str(ca_key),
          "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(crt)],
         "openssl sign")
    for path in (ca_key, key):
        os.chmod(path, 0o600)
    return ca_crt, f"cafile {ca_crt}\ncertfile {crt}\nkeyfile {key}\ntls_version tlsv1.2"


def prepare_runtime(rundir: Path, *, testbed: str, device_ids: Sequence[int], port: int,
                    host: str = "127.0.0.1", bind_address: str | None = None,
                    tls: bool = False, conf_template: Path = DEFAULT_CONF_TEMPLATE,
                    acl_template: Path = DEFAULT_ACL_TEMPLATE,
                    user: str | None = None,
                    save_interval_s: int | None = None) -> BrokerRuntime:
    """Write credentials, ACL and a concrete mosquitto.conf into ``rundir``.

    Args:
        rundir: created if missing (mode 0700); existing generated files are replaced,
            the persistence directory is kept (so a restarted broker resumes).
        testbed: topic level ``epic/<testbed>/...`` ([A-Za-z0-9_.-], no / + #).
        device_ids: integer ids from the topology; users are ``device-<id>``.
        port: listener port (1..65535).
        host: address clients use; bind_address defaults to it.
        tls: also make a self-signed CA and server certificate and listen with TLS.
        user: OS user mosquitto switches to when started as root (default: current user).
        save_interval_s: None (default): the broker saves its database after every change, so
            a SIGKILL loses at most its last event-loop pass, whatever the clients do; an int
            N >= 1: every N seconds, far cheaper, for clients that recover the last N seconds
            themselves (the testbed's devices keep every frame until central confirms it).
    """
    validate_name(testbed)
    if save_interval_s is not None and (not isinstance(save_interval_s, int)
                                        or save_interval_s < 1):
        raise InputError(f"save_interval_s must be None or an int >= 1, got "
                         f"{save_interval_s!r} (prepare_runtime)")
    if not 1 <= port <= 65535:
        raise InputError(f"broker port {port} not in 1..65535 (prepare_runtime)")
    names = [device_name(i) for i in device_ids]
    if len(set(names)) != len(names):
        raise InputError(f"device ids {list(device_ids)} contain duplicates (prepare_runtime)")
    rundir = Path(rundir).resolve()
    rundir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(rundir, 0o700)
    files = RunDir(rundir)
    persistence = files.persistence
    persistence.mkdir(exist_ok=True)
    passwords = {name: secrets.token_urlsafe(24)
                 for name in [CENTRAL_USER, OBSERVER_USER, *names]}
    passwd_file = files.passwd
    passwd_file.unlink(missing_ok=True)
    mosquitto_passwd = _tool("mosquitto_passwd")
    for index, (name, password) in enumerate(passwords.items()):
        create = ["-c"] if index == 0 else []
        _run([mosquitto_passwd, *create, "-b", str(passwd_file), name, password],
             f"mosquitto_passwd for {name}")
    os.chmod(passwd_file, 0o600)
    ca_file, tls_lines = _make_tls(rundir, host) if tls else (None, "")
    acl_text = Template(Path(acl_template).read_text()).substitute(testbed=testbed)
    _write_private(files.acl, acl_text)
    conf_text = Template(Path(conf_template).read_text()).substitute(
        port=port, bind_address=bind_address or host, persistence_dir=f"{persistence}/",
        password_file=passwd_file, acl_file=files.acl, user=user or getpass.getuser(),
        max_packet_bytes=MAX_FRAME_BYTES + _PACKET_OVERHEAD_BYTES, tls=tls_lines,
        autosave_on_changes="true" if save_interval_s is None else "false",
        autosave_interval=1 if save_interval_s is None else save_interval_s)
    _write_private(files.broker_conf, conf_text)
    runtime = BrokerRuntime(rundir, testbed, host, port, passwords, ca_file, save_interval_s)
    _write_private(rundir / CREDENTIALS_FILE, json.dumps({
        "testbed": testbed, "host": host, "port": port,
        "ca_file": str(ca_file) if ca_file else None, "passwords": passwords,
        "save_interval_s": save_interval_s}, indent=2))
    log.info("broker runtime in %s: port %d, users %s, tls %s", rundir, port,
             sorted(passwords), tls)
    return runtime


def load_runtime(rundir: Path) -> BrokerRuntime:
    """Read ``rundir/credentials.json`` written by prepare_runtime."""
    path = Path(rundir) / CREDENTIALS_FILE
    try:
        data = json.loads(path.read_text())
        save = data.get("save_interval_s")
        return BrokerRuntime(Path(rundir).resolve(), data["testbed"], data["host"],
                             int(data["port"]), dict(data["passwords"]),
                             Path(data["ca_file"]) if data["ca_file"] else None,
                             None if save is None else int(save))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"cannot read broker credentials {path}: {exc}") from exc


class BrokerProcess:
    """``mosquitto -c RUNDIR/mosquitto.conf`` as a subprocess; restartable.

    The one broker lifecycle: tests run it in-process, and the process-mode testbed
    (:mod:`emulation.runtime.process`) starts its broker with it, detached.

    Args:
        runtime: the prepared runtime (conf, host, port).
        log_path: where the broker's output is appended (default RUNDIR/mosquitto.log).
        binary: the mosquitto program (default: found on PATH or in /usr/sbin).
        detached: start it in a session of its own, so that it outlives this process and
            its process group can be signalled (the testbed's roles are started so).
    """

    def __init__(self, runtime: BrokerRuntime, *, log_path: Path | None = None,
                 binary: str | None = None, detached: bool = False) -> None:
        self.runtime = runtime
        self.log_path = log_path or runtime.rundir / "mosquitto.log"
        self.binary = binary
        self.detached = detached
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, timeout_s: float = 10.0) -> BrokerProcess:
        """Start the broker and wait until its port accepts TCP connections.

        Raise BrokerError (with the log's tail) if it exits or does not listen in time.
        """
        if self.running:
            raise BrokerError(f"broker already running (pid {self.pid})")
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(
                [self.binary or _tool("mosquitto"), "-c", str(self.runtime.conf_path)],
                stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=REPO, start_new_session=self.detached)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(f"mosquitto exited with {self._proc.returncode}: "
                                  f"{self.log_tail()}")
            try:
                with socket.create_connection((self.runtime.host, self.runtime.port), 0.2):
                    log.info("mosquitto pid %d listening on %s:%d", self._proc.pid,
                             self.runtime.host, self.runtime.port)
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop(signal.SIGKILL)
        raise BrokerError(f"mosquitto not listening on port {self.runtime.port} after "
                          f"{timeout_s} s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> int | None:
        """Send ``sig`` (SIGTERM saves the database; SIGKILL does not) and wait for the exit.

        Escalates to SIGKILL after ``timeout_s``. Returns the exit status (None if not started).
        """
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(sig)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mosquitto pid %d ignored signal %s; killing", self._proc.pid, sig)
                self._proc.kill()
                self._proc.wait()
        return self._proc.returncode

    def restart(self, sig: int = signal.SIGTERM, timeout_s: float = 10.0) -> BrokerProcess:
        """Stop with ``sig`` and start again on the same port and persistence."""
        self.stop(sig)
        return self.start(timeout_s)

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the broker log."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> BrokerProcess:
        return self.start() if not self.running else self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
