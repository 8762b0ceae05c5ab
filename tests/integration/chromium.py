"""A real headless Chromium, driven through its DevTools protocol (a small CDP client).

Used by the dashboard's browser test and by bench/bench_dashboard.py (the README screenshot).
Debian's ``chromium`` package; ``websocket-client`` speaks the protocol. No fixed sleeps:
:meth:`Chromium.wait_for` polls a JavaScript expression until it holds.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

__all__ = ["Chromium", "ChromiumError", "chromium_binary"]


class ChromiumError(RuntimeError):
    """The browser did not start, a DevTools call failed, or a wait ran out."""


def chromium_binary() -> str | None:
    """The Chromium executable on PATH (Debian: ``chromium``), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """One headless Chromium with one page.

    Args:
        profile_dir: an empty directory for the browser profile (e.g. a pytest tmp dir).
        width, height: the window size, CSS pixels.
        start_timeout_s: how long to wait for the DevTools endpoint.
    """

    def __init__(self, profile_dir: Path, width: int = 1400, height: int = 1250,
                 start_timeout_s: float = 60.0) -> None:
        binary = chromium_binary()
        if binary is None:
            raise ChromiumError("no chromium on PATH (apt-get install chromium)")
        self.profile_dir = Path(profile_dir)
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--headless", "--disable-gpu", "--no-first-run",
                "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--remote-debugging-port=0", f"--user-data-dir={self.profile_dir}",
                f"--window-size={width},{height}", "--hide-scrollbars", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses its sandbox as root
        self.log_path = self.profile_dir / "chromium.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self._ids = itertools.count(1)
        try:
            port = self._devtools_port(start_timeout_s)
            targets = json.loads(urllib.request.urlopen(
                f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(t for t in targets if t.get("type") == "page")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30,
                                                  suppress_origin=True)
        except BaseException:
            self.close()
            raise
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _devtools_port(self, timeout_s: float) -> int:
        marker = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-600:]
                raise ChromiumError(f"chromium did not open DevTools (exit "
                                    f"{self.proc.poll()}): {tail}")
            time.sleep(0.05)

    def call(self, method: str, **params) -> dict:
        """One DevTools command; its result (events that arrive meanwhile are dropped)."""
        ident = next(self._ids)
        self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise ChromiumError(f"{method}: {message['error']}")
                return message.get("result", {})

    def navigate(self, url: str) -> None:
        """Open ``url`` in the page."""
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression!r}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout_s: float, what: str):
        """Poll ``expression`` until it is truthy; return its value. ChromiumError (saying
        ``what`` and the last value) after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            with contextlib.suppress(ChromiumError):
                value = self.evaluate(expression)
                if value:
                    return value
            time.sleep(0.05)  # the poll period, not a wait for anything
        raise ChromiumError(f"timed out after {timeout_s:g} s waiting for {what} "
                            f"(last value {value!r})")

    def screenshot(self, path: Path) -> Path:
        """Save the whole page as PNG to ``path``."""
        metrics = self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics.get("contentSize")
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                         clip=clip)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the browser (its whole process group)."""
        with contextlib.suppress(Exception):
            self.call("Browser.close")
        with contextlib.suppress(Exception):
            self.ws.close()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, 9)
                self.proc.wait()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
