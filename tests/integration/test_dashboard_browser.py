"""The dashboard as a user sees it: a real headless Chromium (DevTools protocol) on the page
of a live process testbed (`epic testbed up --dashboard`) while it replays.

Asserted in the DOM, by polling (no fixed sleeps): the graph shows the 5 devices, the frame
counters rise during the replay, a decoded map appears after the first gather, and a
``kill-device`` fault marks the device within 2 s. A screenshot is kept as a test artefact
(``<pytest tmp dir>/dashboard.png``; also copied to ``$EPIC_DASHBOARD_SCREENSHOT`` if set).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from tests.integration.chromium import Chromium, chromium_binary
from tests.integration.conftest import requires_mosquitto

pytest.importorskip("starlette", reason="the dashboard extra is not installed "
                    "(pip install -e '.[dashboard]')")
pytest.importorskip("websocket", reason="websocket-client (dev extra) is not installed")

from emulation.replay import replay
from emulation.runtime import ProcessRuntime
from emulation.runtime.process import load_info
from epic_cli import main
from tests.integration.test_testbed import _fast_topology

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    requires_mosquitto,
    pytest.mark.skipif(chromium_binary() is None,
                       reason="chromium is not installed (apt-get install chromium; "
                              "`make setup` does it)"),
]

DEVICES = [f"device-{i}" for i in range(1, 6)]
KILL_MARK_S = 2.0  # the issue's bound: a killed device is marked on the page within 2 s

FRAMES = "+document.getElementById('devices').getAttribute('data-frames-total')"
MAP_GATHER = "document.getElementById('map-latest').getAttribute('data-gather')"


def _device_dead(device: str) -> str:
    return (f"(() => {{ const g = document.querySelector("
            f"'#graph g.device[data-device=\"{device}\"]');"
            f" const r = document.querySelector('#devices tr[data-device=\"{device}\"]');"
            f" return !!g && g.classList.contains('dead') && !!r && r.classList.contains('dead');"
            f" }})()")


@pytest.fixture
def run_dir(tmp_path: Path):
    path = tmp_path / "run"
    yield path
    ProcessRuntime(path).down(timeout_s=5)  # the testbed and its dashboard, whatever happened


def test_dashboard_in_chromium_during_a_replay(tmp_path, run_dir, tiny_dataset, capsys):
    code = main(["testbed", "up", "--topology", str(_fast_topology(tmp_path)), "--dir",
                 str(run_dir), "--truth", str(tiny_dataset), "--dashboard"])
    out = capsys.readouterr().out
    assert code == 0, out
    match = re.search(r"dashboard (http://127\.0\.0\.1:\d+/) \(pid (\d+)", out)
    assert match, out
    url, pid = match.group(1), int(match.group(2))
    assert "dashboard" in {p.role for p in load_info(run_dir).processes}

    replayed: dict = {}

    def run_replay() -> None:
        try:
            replayed["summary"] = replay(run_dir, tiny_dataset, 3, "epic", "max",
                                         timeout_s=120)
        except Exception as exc:  # reported by the assertion after join
            replayed["error"] = exc

    with Chromium(tmp_path / "chromium") as browser:
        browser.navigate(url)
        browser.wait_for("document.querySelectorAll('#graph g.device').length === 5", 60,
                         "the graph's 5 devices")
        shown = browser.evaluate("[...document.querySelectorAll('#graph g.device')]"
                                 ".map(g => g.getAttribute('data-device'))")
        assert shown == DEVICES
        assert browser.evaluate("document.getElementById('conn').textContent") == "live"
        before = browser.evaluate(FRAMES)
        assert before == 0 and browser.evaluate(MAP_GATHER) is None

        worker = threading.Thread(target=run_replay, daemon=True)
        worker.start()
        browser.wait_for(f"{FRAMES} > {before}", 120, "the frame counters to rise")
        gather = browser.wait_for(MAP_GATHER, 120, "the first decoded map")
        assert int(gather) in range(3)
        assert browser.evaluate("document.getElementById('map-truth').parentElement"
                                ".querySelector('figcaption').textContent") == "truth"
        assert "MAE" in browser.evaluate("document.getElementById('map-metrics').textContent")

        worker.join(180)
        assert not worker.is_alive(), "the replay did not finish"
        assert "error" not in replayed, replayed.get("error")
        browser.wait_for(f"{FRAMES} >= {5 * 3}", 30, "every device's 3 frames counted")
        browser.wait_for("document.querySelectorAll('#strip figure').length === 3", 30,
                         "3 maps in the strip")
        assert not browser.evaluate(_device_dead("device-3"))

        code = main(["testbed", "fault", "kill-device", "device-3", "--dir", str(run_dir)])
        assert code == 0
        browser.wait_for(_device_dead("device-3"), KILL_MARK_S,
                         "device-3 marked dead on the page")
        assert browser.evaluate(_device_dead("device-2")) is False
        shot = browser.screenshot(tmp_path / "dashboard.png")
    assert shot.stat().st_size > 10_000
    if target := os.environ.get("EPIC_DASHBOARD_SCREENSHOT"):
        shutil.copyfile(shot, target)
    print(f"screenshot: {shot}")

    stopped = {role: int(pid) for role, pid in
               (s.split() for s in ProcessRuntime(run_dir).down(timeout_s=5))}
    assert stopped.get("dashboard") == pid  # `testbed down` stops the dashboard too
