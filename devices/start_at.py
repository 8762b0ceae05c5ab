"""Start the device agent at an instant shared with the other devices of a compose testbed.

``python -m devices.start_at [agent options]`` (the compose device services' entrypoint): the
agents of ``docker compose up`` start independently, so the first to arrive writes
``$EPIC_SYNC_DIR/replay-start.json`` (the ``sync`` volume, the one place the devices share;
default ``$EPIC_RUNDIR``) (created exclusively: exactly one writer) with now +
``$EPIC_START_LEAD_S`` (default 10 s: the others' container start, imports and encoder load),
and every agent, this one included, runs ``python -m devices.agent`` with
``EPIC_START_AT_UNIX_S`` set to it. In real time, gather k then ends at the same instant on every
device, as with ``epic replay``'s shared start. A file older than ``STALE_S`` (an earlier run's)
is replaced. The compose init service removes it on every ``up``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

START_FILE = "replay-start.json"
STALE_S = 120.0


def shared_start(rundir: Path, lead_s: float) -> float:
    """The shared start instant (unix s), creating RUNDIR/replay-start.json if needed."""
    path = rundir / START_FILE
    for _ in range(50):
        try:
            start = float(json.loads(path.read_text())["start_at_unix_s"])
            if start > time.time() - STALE_S:
                return start
            path.unlink(missing_ok=True)  # an earlier run's
        except FileNotFoundError:
            pass
        except (ValueError, KeyError):  # being written by another agent
            time.sleep(0.05)
            continue
        start = time.time() + lead_s
        tmp = rundir / f".{START_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps({"start_at_unix_s": start}))
        try:
            os.link(tmp, path)  # atomic and exclusive: fails if another agent was first
            return start
        except FileExistsError:
            continue
        finally:
            tmp.unlink(missing_ok=True)
    raise RuntimeError(f"cannot agree on a start instant in {path}")


def main() -> None:
    sync_dir = Path(os.environ.get("EPIC_SYNC_DIR") or os.environ["EPIC_RUNDIR"])
    if not os.environ.get("EPIC_START_AT_UNIX_S"):
        lead_s = float(os.environ.get("EPIC_START_LEAD_S", "10"))
        os.environ["EPIC_START_AT_UNIX_S"] = repr(shared_start(sync_dir, lead_s))
    print(f"start_at: shared start instant {os.environ['EPIC_START_AT_UNIX_S']} "
          f"({float(os.environ['EPIC_START_AT_UNIX_S']) - time.time():+.1f} s from now)",
          flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "devices.agent", *sys.argv[1:]])


if __name__ == "__main__":
    main()
