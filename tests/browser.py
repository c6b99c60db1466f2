"""Open a page in a real headless Chromium (Debian's `chromium`) and report what it did.

Chromium is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: commands on
fd 3, replies on fd 4, each a JSON message ended by a NUL byte), so no websocket client or
browser-automation package is needed. The report holds every request the page made, every
JavaScript exception and console or log error, the value of a script run on the page once it has
loaded, and a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageReport:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, its own included
    errors: list[str] = field(default_factory=list)  # exceptions, console.error calls, error log entries
    value: object = None  # what `probe` evaluated to
    screenshot: bytes = b""  # PNG of the whole page


class _Pipe:
    def __init__(self, process: subprocess.Popen, to_browser: int, from_browser: int, timeout_s: float):
        self._process, self._out, self._in = process, to_browser, from_browser
        self._buffer, self._next_id, self._deadline = b"", 0, time.monotonic() + timeout_s
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            left = self._deadline - time.monotonic()
            if left <= 0 or self._process.poll() is not None:
                raise TimeoutError("Chromium stopped answering")
            ready, _, _ = select.select([self._in], [], [], left)
            if ready:
                chunk = os.read(self._in, 1 << 20)
                if not chunk:
                    raise TimeoutError("Chromium closed its DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)


def open_page(path: Path, probe: str, settle_s: float = 2.0, timeout_s: float = 120,
              size: tuple[int, int] = (1400, 1000)) -> PageReport:
    """Load `path` (file://), wait for its load event and `settle_s` more, evaluate `probe` (a JS
    expression whose value is JSON), take a full-page screenshot, and close the browser."""
    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (bash tests/install-system-deps.sh)")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    args = ["--headless", "--remote-debugging-pipe", "--no-sandbox", "--no-first-run", "--disable-gpu",
            "--enable-unsafe-swiftshader",  # software WebGL: plotly's parallel coordinates draw with WebGL
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-default-apps", "--no-default-browser-check", f"--user-data-dir={profile}", "about:blank"]
    # bash puts the pipe ends where Chromium expects them (fd 3: commands in, fd 4: replies out).
    process = subprocess.Popen(
        ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', binary, *args],
        pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    os.close(to_browser_r)
    os.close(from_browser_w)
    pipe = _Pipe(process, to_browser_w, from_browser_r, timeout_s)
    report = PageReport()
    try:
        target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        pipe.send("Emulation.setDeviceMetricsOverride", {"width": size[0], "height": size[1],
                                                         "deviceScaleFactor": 1, "mobile": False}, session=session)
        pipe.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        pipe.wait_for("Page.loadEventFired")
        time.sleep(settle_s)
        result = pipe.send("Runtime.evaluate", {"expression": f"JSON.stringify({probe})", "returnByValue": True},
                           session=session)
        report.value = json.loads(result["result"]["value"]) if "value" in result.get("result", {}) else None
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                         session=session)
        report.screenshot = base64.b64decode(shot["data"])
        pipe.send("Browser.close")
    finally:
        if process.poll() is None:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        os.close(to_browser_w)
        os.close(from_browser_r)
        shutil.rmtree(profile, ignore_errors=True)
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            report.requests.append(params["request"]["url"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            report.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            report.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            report.errors.append(params["entry"].get("text", ""))
    return report
