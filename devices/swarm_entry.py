"""A device task of docker-stack.yml (Docker Swarm): credential, data, shared start, agent.

``python -m devices.swarm_entry [agent options]``, the device services' entrypoint in the
stack (emulation/swarm.py). On a Swarm node of its own, a device shares no volume with the
manager, so it:

1. copies its Swarm secret (``$EPIC_CREDENTIALS``, /run/secrets/credentials: the broker
   address and this device's password only) to ``$EPIC_RUNDIR/credentials.json``, the file
   the agent reads; the run dir is a tmpfs private to the task;
2. finds its gathers in ``$EPIC_SOURCE_DATA`` (bind-mounted from the node): an OpenFWI-layout
   directory is used as it is, a packed demo set (data.npy.xz, as docker/demo) is unpacked to
   ``$EPIC_RUNDIR/data`` (the first ``$EPIC_GATHERS``);
3. asks the stack's start gate (``$EPIC_START_GATE``, host:port) for the shared start instant,
   retrying until the gate answers: it answers only once central is connected and every link
   proxy is up, so this is the device's wait for the testbed (compose's ``depends_on``);
4. runs ``python -m devices.agent`` with ``EPIC_START_AT_UNIX_S`` set to that instant.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np

PACKED_DATA, PACKED_MODEL = "data.npy.xz", "model.npy.xz"


def _say(message: str) -> None:
    print(f"swarm_entry: {message}", flush=True)


def install_credentials(source: Path, rundir: Path) -> Path:
    rundir.mkdir(parents=True, exist_ok=True)
    target = rundir / "credentials.json"
    shutil.copyfile(source, target)
    os.chmod(target, 0o600)
    return target


def local_data(source: Path, rundir: Path, gathers: int | None) -> Path:
    """The directory the agent reads: ``source`` itself, or its packed gathers unpacked."""
    if not (source / PACKED_DATA).is_file():
        return source
    with lzma.open(source / PACKED_DATA) as handle:
        data = np.load(handle, allow_pickle=False)
    if gathers is not None:
        data = data[:gathers]
    dest = rundir / "data"
    dest.mkdir(parents=True, exist_ok=True)
    np.save(dest / "data0.npy", np.ascontiguousarray(data, dtype=np.float32))
    return dest


def ask_gate(address: str, who: str, timeout_s: float, poll_s: float = 0.5) -> float:
    """The shared start instant from the gate at host:port, polling until it answers."""
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    said = False
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=5.0) as conn:
                conn.sendall(f"{who}\n".encode())
                line = conn.makefile("rb").readline(200)
            return float(json.loads(line)["start_at_unix_s"])
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the start gate {address} did not answer within "
                                   f"{timeout_s:.0f} s") from None
            if not said:
                _say(f"waiting for the start gate {address} (central and link proxies)")
                said = True
            time.sleep(poll_s)


def main() -> None:
    rundir = Path(os.environ["EPIC_RUNDIR"])
    who = f"device-{os.environ.get('EPIC_DEVICE_ID', '?')}"
    install_credentials(Path(os.environ["EPIC_CREDENTIALS"]), rundir)
    gathers = os.environ.get("EPIC_GATHERS")
    data = local_data(Path(os.environ["EPIC_SOURCE_DATA"]), rundir,
                      int(gathers) if gathers else None)
    os.environ["EPIC_DATA"] = str(data)
    if not os.environ.get("EPIC_START_AT_UNIX_S"):
        start = ask_gate(os.environ["EPIC_START_GATE"], who,
                         float(os.environ.get("EPIC_GATE_TIMEOUT_S", "900")))
        os.environ["EPIC_START_AT_UNIX_S"] = repr(start)
    _say(f"{who}: data {data}, shared start {os.environ['EPIC_START_AT_UNIX_S']} "
         f"({float(os.environ['EPIC_START_AT_UNIX_S']) - time.time():+.1f} s from now)")
    os.execv(sys.executable, [sys.executable, "-m", "devices.agent", *sys.argv[1:]])


if __name__ == "__main__":
    main()
