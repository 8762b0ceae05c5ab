"""Start the dashboard beside a running process testbed (``epic testbed up --dashboard``).

The server runs as ``python -m emulation.dashboard`` in its own session, logging to
``RUNDIR/logs/dashboard.log``, and is added to the testbed's roles in testbed.json, so that
``epic testbed down`` stops it with the rest (first, as the last role started). The token,
if any, reaches it through its environment, never its command line (``ps`` shows that).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

from emulation.dashboard.server import DEFAULT_HOST, check_bind
from emulation.runtime.process import load_info, write_info
from emulation.runtime.processes import is_alive, start_ticks
from epic.broker import REPO, free_port
from epic.errors import InputError
from epic.rundir import RoleProcess, RunDir, read_json, write_json

__all__ = ["TOKEN_ENV", "start_detached", "url_of"]

log = logging.getLogger(__name__)

TOKEN_ENV = "EPIC_DASHBOARD_TOKEN"


def url_of(host: str, port: int) -> str:
    """The page's URL for a server bound to ``host:port`` (a wildcard bind: this machine)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"


def _healthy(url: str, token: str | None) -> bool:
    request = urllib.request.Request(url + "healthz")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=1.0) as response:
            return json.loads(response.read()).get("ok") is True
    except (OSError, ValueError, urllib.error.URLError):
        return False


def start_detached(rundir: Path, host: str = DEFAULT_HOST, port: int | None = None,
                   token: str | None = None, timeout_s: float = 30.0) -> tuple[RoleProcess, str]:
    """Start the dashboard of the testbed in ``rundir`` beside it; wait until it answers.

    A process testbed records it as a role in testbed.json; a container testbed (docker.json)
    under its ``dashboard`` key. Either way `epic testbed down` stops it. The server is a host
    process reading the run dir (a container testbed's run dir is a host folder too).

    Returns (its role, the page's URL). Raises InputError if RUNDIR has no testbed
    (testbed.json or docker.json), the bind needs a token (:func:`check_bind`), or the server
    does not answer within ``timeout_s`` (it is then stopped).
    """
    rundir = Path(rundir).resolve()
    check_bind(host, token)
    info = load_info(rundir)
    docker_state = read_json(RunDir(rundir).docker) if RunDir(rundir).docker.is_file() else None
    if info is None and docker_state is None:
        raise InputError(f"no testbed in {rundir} (testbed.json or docker.json missing); run "
                         f"`epic dashboard --dir {rundir}` to watch any run dir")
    port = port or free_port("127.0.0.1" if host in ("0.0.0.0", "::") else host)
    logs = rundir / "logs"
    logs.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    if token:
        env[TOKEN_ENV] = token
    log_path = logs / "dashboard.log"
    with open(log_path, "ab") as handle:
        proc = subprocess.Popen([sys.executable, "-m", "emulation.dashboard", "--dir",
                                 str(rundir), "--host", host, "--port", str(port)],
                                stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=REPO, env=env,
                                start_new_session=True)
    role = RoleProcess("dashboard", proc.pid, start_ticks(proc.pid) or -1, str(log_path))
    url = url_of(host, port)
    deadline = time.monotonic() + timeout_s
    while not _healthy(url, token):
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            tail = " | ".join(log_path.read_text(errors="replace").splitlines()[-4:])
            raise InputError(f"the dashboard did not start on {url} "
                             f"(exit {proc.returncode}): {tail}")
        time.sleep(0.1)
    if info is not None:
        others = tuple(p for p in info.processes if p.role != "dashboard" or is_alive(p))
        write_info(replace(info, processes=(*others, role)))
    else:
        write_json(RunDir(rundir).docker, {**docker_state, "dashboard": role.to_dict()})
    log.info("dashboard: pid %d, %s", proc.pid, url)
    return role, url
