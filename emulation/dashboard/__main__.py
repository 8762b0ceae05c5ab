"""``python -m emulation.dashboard --dir RUNDIR [--host H] [--port P] [--token-file F]
[--truth DIR] [--url-host H]``: what ``epic testbed up --dashboard`` starts in the background,
and the compose testbed's ``dashboard`` service. The token, if any, comes from the
``EPIC_DASHBOARD_TOKEN`` environment variable or from ``--token-file`` (the compose init
writes one into the run volume), never from the command line. ``--truth``: the true maps' dir
where no testbed.json names it (compose). ``--url-host``: print the page's URL, token
included, for this host name (compose publishes the port on the host's loopback)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from emulation.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, serve
from epic.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emulation.dashboard")
    parser.add_argument("--dir", dest="rundir", required=True, type=Path)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token-file", type=Path, default=None)
    parser.add_argument("--truth", type=Path, default=None)
    parser.add_argument("--url-host", default=None)
    parser.add_argument("--url-port", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        token = os.environ.get("EPIC_DASHBOARD_TOKEN")
        if args.token_file is not None:
            try:
                token = args.token_file.read_text().strip()
            except OSError as exc:
                raise InputError(f"--token-file {args.token_file}: {exc}") from None
        if args.url_host:
            query = f"/?token={token}" if token else "/"
            print(f"dashboard: open http://{args.url_host}:{args.url_port or args.port}{query}",
                  flush=True)
        serve(args.rundir, args.host, args.port, token, truth=args.truth)
    except InputError as exc:
        print(f"dashboard: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
