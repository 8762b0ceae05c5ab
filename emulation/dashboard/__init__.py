"""The live dashboard of a run directory: a web page (server-sent events) and ``/metrics``.

``epic dashboard --dir RUNDIR`` serves it (:func:`serve`); ``epic testbed up --dashboard``
starts it beside the testbed (:func:`start_detached`). It reads the run directory through
:mod:`emulation.dashboard.source` and never writes it. See docs/dashboard.md.
"""

from emulation.dashboard.launch import start_detached
from emulation.dashboard.server import DEFAULT_HOST, DEFAULT_PORT, check_bind, create_app, serve
from emulation.dashboard.state import DashboardState

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DashboardState", "check_bind", "create_app", "serve",
           "start_detached"]
