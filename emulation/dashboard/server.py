"""The dashboard's HTTP server: one page, one event stream, ``/metrics``; Starlette on uvicorn.

Routes (nothing else is served: no file from the run dir, no static directory):

- ``GET /``: the page, with its script and style inlined (the Content-Security-Policy names
  their hashes; nothing comes from another origin, so it works offline);
- ``GET /events``: server-sent events. ``state`` carries the whole view (JSON) whenever it
  changed; ``map`` carries one decoded map (and its truth) once. A new connection gets the
  view and the last few maps at once;
- ``GET /metrics``: Prometheus text format (:mod:`emulation.dashboard.metrics`);
- ``GET /api/state``: the view as JSON (for scripts); ``GET /healthz``: liveness.

One background task refreshes :class:`~emulation.dashboard.state.DashboardState` every
``refresh_s`` (stat calls; files are re-read only when they changed) and wakes the streams.
The browser never polls.

Safety: the server binds to loopback unless told otherwise, and then also refuses requests
whose ``Host`` is not a loopback name (a web page elsewhere cannot read it through DNS
rebinding). Any other bind address needs a token (:func:`check_bind`); with a token, every
request, the event stream included, must carry it (``Authorization: Bearer <token>`` or
``?token=<token>``). The view carries no credentials: it is built field by field from
status records that hold none, and credentials.json is never opened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from emulation.dashboard.metrics import CONTENT_TYPE, render
from emulation.dashboard.state import DashboardState
from epic.errors import InputError

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Dashboard", "check_bind", "create_app", "serve"]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050
MIN_TOKEN_CHARS = 16
_KEEPALIVE_S = 15.0
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address or name) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to serve beyond loopback without a token.

    Raises InputError if ``host`` is not a loopback address and ``token`` is missing or has
    fewer than :data:`MIN_TOKEN_CHARS` characters.
    """
    if is_loopback(host):
        return
    if not token:
        raise InputError(f"--host {host} serves beyond this machine: give --token (at least "
                         f"{MIN_TOKEN_CHARS} characters; every request must then carry it)")
    if len(token) < MIN_TOKEN_CHARS:
        raise InputError(f"--token must have at least {MIN_TOKEN_CHARS} characters, got "
                         f"{len(token)}")


class _Guard:
    """ASGI middleware: the Host check (loopback binds) and the token (when one is set)."""

    def __init__(self, app, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.loopback_only = loopback_only

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", ())}
        if self.loopback_only:
            host = headers.get("host", "")
            name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
            if name.lower() not in _LOOPBACK_NAMES:
                await PlainTextResponse("Host not allowed\n", 403)(scope, receive, send)
                return
        if self.token is not None and not self._authorised(scope, headers):
            await PlainTextResponse("token required\n", 401, headers={
                "WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorised(self, scope, headers: dict[str, str]) -> bool:
        given = ""
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            given = (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), self.token)


def _asset(name: str) -> str:
    return resources.files("emulation.dashboard").joinpath("static", name).read_text("utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


class Dashboard:
    """The server's state: the folded run dir, the serialised view, and the wake-up event.

    Args:
        rundir: the run directory (read only).
        refresh_s: how often the run dir is checked for changes, seconds (> 0).
        predict: run the SimPy model when the last replay has no prediction.
        truth: the true maps' directory where the run dir names none, or None.
    """

    def __init__(self, rundir: Path, refresh_s: float = 0.25, predict: bool = True,
                 truth: Path | None = None) -> None:
        if refresh_s <= 0:
            raise InputError(f"refresh_s must be > 0, got {refresh_s}")
        self.state = DashboardState(Path(rundir), predict=predict, truth=truth)
        self.refresh_s = refresh_s
        self.payload = "{}"
        self._changed = asyncio.Event()
        script, style = _asset("app.js"), _asset("style.css")
        self.page = (_asset("index.html").replace("/*STYLE*/", style)
                     .replace("/*SCRIPT*/", script))
        self.csp = (f"default-src 'none'; script-src {_sha256(script)}; style-src "
                    f"{_sha256(style)}; connect-src 'self'; img-src 'self' data:; "
                    f"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

    async def refresh_once(self) -> None:
        """Check the run dir once; serialise and wake the streams if anything changed."""
        changed = await asyncio.to_thread(self.state.refresh)
        if changed or self.payload == "{}":
            self.payload = json.dumps(self.state.view, separators=(",", ":"), default=str)
            event, self._changed = self._changed, asyncio.Event()
            event.set()

    async def run(self) -> None:
        """Refresh forever (the server's background task)."""
        while True:
            try:
                await self.refresh_once()
            except Exception:  # a bug in one refresh must not stop the page: log, go on
                log.exception("dashboard refresh failed")
            await asyncio.sleep(self.refresh_s)

    async def stream(self) -> AsyncIterator[str]:
        """The event stream of one client: the view on every change, each map once."""
        yield "retry: 1000\n\n"
        version, sent_seq = -1, 0
        while True:
            waiter = self._changed
            if self.state.version != version:
                version = self.state.version
                for entry in list(self.state.maps):
                    if entry.seq > sent_seq:
                        sent_seq = entry.seq
                        yield f"event: map\ndata: {json.dumps(entry.payload)}\n\n"
                yield f"event: state\ndata: {self.payload}\n\n"
            try:
                await asyncio.wait_for(waiter.wait(), _KEEPALIVE_S)
            except TimeoutError:
                yield ": keepalive\n\n"


def create_app(rundir: Path, *, token: str | None = None, loopback_only: bool = True,
               refresh_s: float = 0.25, predict: bool = True, truth: Path | None = None):
    """The ASGI app for ``rundir`` (wrapped in the Host/token guard)."""
    dash = Dashboard(rundir, refresh_s=refresh_s, predict=predict, truth=truth)
    security = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}

    async def index(request: Request) -> Response:
        return HTMLResponse(dash.page, headers={**security,
                                                "Content-Security-Policy": dash.csp})

    async def events(request: Request) -> Response:
        return StreamingResponse(dash.stream(), media_type="text/event-stream",
                                 headers={**security, "X-Accel-Buffering": "no"})

    async def metrics(request: Request) -> Response:
        return Response(render(dash.state), media_type=CONTENT_TYPE, headers=security)

    async def api_state(request: Request) -> Response:
        return Response(dash.payload, media_type="application/json", headers=security)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True, "version": dash.state.version}, headers=security)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await dash.refresh_once()
        task = asyncio.create_task(dash.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = Starlette(routes=[Route("/", index), Route("/events", events),
                            Route("/metrics", metrics), Route("/api/state", api_state),
                            Route("/healthz", healthz)], lifespan=lifespan)
    app.state.dashboard = dash
    return _Guard(app, token, loopback_only)


def serve(rundir: Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, refresh_s: float = 0.25,
          truth: Path | None = None) -> None:
    """Serve the dashboard of ``rundir`` until interrupted (uvicorn, one process).

    Raises InputError for a non-loopback ``host`` without a token (see :func:`check_bind`).
    """
    import uvicorn

    check_bind(host, token)
    app = create_app(Path(rundir), token=token, loopback_only=is_loopback(host),
                     refresh_s=refresh_s, truth=truth)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning",
                            access_log=False, lifespan="on", timeout_graceful_shutdown=1)
    uvicorn.Server(config).run()
