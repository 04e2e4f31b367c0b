"""The HTML report in a real browser: headless Chromium driven over the DevTools protocol.

Renders a run's report.html, opens it from a file:// URL, takes screenshots (kept
under test-artifacts/report-browser/, paths printed) and asserts on the DOM: one
colour per state, the legend, details panels that open on a click, no script
from the logs ever running, no network fetch.

The run is the all-states fixture, or a real run directory given in
DIB_MATRIX_REPORT_RUN (its results.json is only read; reports go to a copy).
Needs Debian's `chromium` (bindep profile `test`) and `websocket-client`.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from reports import write_all
from reports.htmlview import anchor as _anchor
from reports.legend import build_legend
from reports.styles import STYLES
from results.reader import read_results
from tests.resultfactory import ALL_STATES

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "report-browser"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-port=0", "--window-size=1400,1000",
]
START_TIMEOUT = 60.0
CALL_TIMEOUT = 30.0


class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    def __init__(self, websocket_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(
            websocket_url, timeout=CALL_TIMEOUT, suppress_origin=True
        )
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = CALL_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view first)."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return {x: r.x + Math.min(r.width / 2, 40), y: r.y + r.height / 2}; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box["x"], y=box["y"],
                      button="left", clickCount=1)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["captureBeyondViewport"] = True
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1}
        data = self.call("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        print(f"screenshot: {path}")
        return path

    def close(self) -> None:
        self.ws.close()


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with {proc.returncode}")
        if marker.is_file() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _pages(port: int) -> list[dict]:
    """The browser's pages; retried, as a loaded machine may not be listening yet."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            # A private opener: urlopen's global one keeps whatever proxy the environment
            # had at its first use (another test may have set http_proxy then).
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with direct.open(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                return [t for t in json.load(r) if t["type"] == "page"]
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def browser(tmp_path):
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; bindep -b test)")
    pytest.importorskip("websocket", reason="websocket-client is not installed")
    profile = tmp_path / "profile"
    profile.mkdir()
    log = (tmp_path / "chromium.log").open("wb")
    # Chromium makes scratch directories in /tmp it does not always remove (pointing
    # its TMPDIR elsewhere crashed it): the fixture removes the ones that appear.
    scratch_before = set(Path("/tmp").glob("org.chromium.Chromium.*"))
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        port = _devtools_port(profile, proc)
        pages = _pages(port)
        tools = DevTools(pages[0]["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Network"):
            tools.call(f"{domain}.enable")
        yield tools
        tools.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        for scratch in set(Path("/tmp").glob("org.chromium.Chromium.*")) - scratch_before:
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def run_dir(tmp_path):
    source = Path(os.environ.get("DIB_MATRIX_REPORT_RUN") or ALL_STATES)
    results = read_results(source)
    target = tmp_path / "out" / results.run_id
    target.mkdir(parents=True)
    shutil.copy2(source / "results.json", target / "results.json")
    if (source / "logs").is_dir():
        shutil.copytree(source / "logs", target / "logs")
    write_all(target, results, history_dir=target.parent)
    return target


def rgb(colour: str) -> str:
    red, green, blue = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({red}, {green}, {blue})"


def test_report_in_headless_chromium(browser, run_dir):
    results = read_results(run_dir)
    legend = build_legend(results)
    url = (run_dir / "report.html").as_uri()
    browser.call("Page.navigate", url=url)
    browser.wait_event("Page.loadEventFired")
    assert browser.js("document.title") == f"dib-matrix run {results.run_id}"
    shots = ARTIFACTS / results.run_id
    browser.screenshot(shots / "report-full.png", full_page=True)

    # The grid: one cell per result, painted with its state's colour.
    cells = browser.js(
        "[...document.querySelectorAll('table.matrix td.cell')].map(td => ({"
        " id: td.dataset.cell, text: td.querySelector('a').textContent,"
        " bg: getComputedStyle(td).backgroundColor, cls: td.className}))"
    )
    assert len(cells) == len(results.cells)
    for cell in cells:
        state = next(s for s in STYLES.values() if s.css_class in cell["cls"].split())
        assert cell["bg"] == rgb(state.background), cell
    headers = browser.js("[...document.querySelectorAll('table.matrix thead th')]"
                         ".map(th => th.textContent)")
    assert headers == ["target \\ host", *results.hosts]

    # The legend: every footnote, numbered as in the text table.
    footnotes = browser.js("[...document.querySelectorAll('#footnotes li')]"
                           ".map(li => li.textContent.replace(/\\s+/g, ' ').trim())")
    assert len(footnotes) == len(legend.entries)
    for shown, entry in zip(footnotes, legend.entries):
        assert shown.startswith(f"{entry.label}{entry.text}"), (shown, entry)
    assert browser.js("document.querySelectorAll('#state-key tr').length") >= len(STYLES)

    # A details panel opens on a real click on its summary.
    failing = next(c for c in results.cells if c.state.is_failure)
    panel = browser.js(f"document.getElementById('cell-' + {json.dumps(failing.id)}) !== null")
    assert panel
    selector = f"details[id='{_anchor(failing.id)}'] > summary"
    assert browser.js(f"document.querySelector({json.dumps(selector)}).parentElement.open") is False
    browser.click(selector)
    state = browser.js(
        f"(() => {{ const d = document.querySelector({json.dumps(selector)}).parentElement;"
        " const b = d.querySelector('.body'); return {open: d.open, height: b.offsetHeight,"
        " text: b.innerText}; })()"
    )
    assert state["open"] is True and state["height"] > 0
    assert failing.id in state["text"]
    browser.screenshot(shots / "report-details.png")

    # A click on a grid cell opens and shows that cell's panel.
    other = next(c for c in reversed(results.cells) if c.id != failing.id)
    browser.click(f"td[data-cell='{_anchor(other.id)}'] a")
    opened = browser.js(
        f"(() => {{ const d = document.getElementById({json.dumps(_anchor(other.id))});"
        " const r = d.getBoundingClientRect();"
        " return {open: d.open, visible: r.top < innerHeight && r.bottom > 0,"
        " hash: location.hash}; })()"
    )
    assert opened == {"open": True, "visible": True, "hash": f"#{_anchor(other.id)}"}
    browser.screenshot(shots / "report-cell-link.png")

    # Untrusted text stayed text: only the report's own script, no dialog, no fetch.
    assert browser.js("document.scripts.length") == 1
    assert not [e for e in browser.events if e["method"] == "Page.javascriptDialogOpening"]
    requests = [e["params"]["request"]["url"] for e in browser.events
                if e["method"] == "Network.requestWillBeSent"]
    assert requests and all(u.startswith("file://") for u in requests), requests
    if not os.environ.get("DIB_MATRIX_REPORT_RUN"):
        evidence = browser.js("document.getElementById('uncategorized').innerText")
        assert '<script>alert("pwned")</script>' in evidence


def test_history_index_in_headless_chromium(browser, run_dir):
    browser.call("Page.navigate", url=(run_dir.parent / "index.html").as_uri())
    browser.wait_event("Page.loadEventFired")
    links = browser.js("[...document.querySelectorAll('#runs a')].map(a => a.href)")
    assert links == [(run_dir / "report.html").as_uri()]
    browser.screenshot(ARTIFACTS / read_results(run_dir).run_id / "index.png")
