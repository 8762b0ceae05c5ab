"""``python -m emulation.dashboard --dir RUNDIR [--host H] [--port P]``: what
``epic testbed up --dashboard`` starts in the background (the token, if any, comes from the
``EPIC_DASHBOARD_TOKEN`` environment variable, never the command line)."""

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        serve(args.rundir, args.host, args.port, os.environ.get("EPIC_DASHBOARD_TOKEN"))
    except InputError as exc:
        print(f"dashboard: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
