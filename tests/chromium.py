"""Drive a headless Chromium from the standard library: the DevTools protocol over
`--remote-debugging-pipe` (JSON messages separated by NUL bytes; Chromium reads fd 3, writes fd 4).

`inspect_page(browser, url, width)` loads a page at a phone's width and returns what a person would
notice: images that did not load, console errors (failed loads included), horizontal scrolling.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]

# What the page reports about itself once loaded: each image's size as decoded, the page's width
# against the viewport's, and the outermost elements that stick out to the right (named in a failure).
PROBE = """const sticksOut = e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5;
const inScrollBox = e => { for (let p = e.parentElement; p && p !== document.body; p = p.parentElement)
  if (getComputedStyle(p).overflowX !== "visible") return true; return false; };
JSON.stringify({
  images: [...document.images].map(i => ({src: i.getAttribute("src"), complete: i.complete, width: i.naturalWidth})),
  innerWidth: window.innerWidth,
  clientWidth: document.documentElement.clientWidth,
  scrollWidth: document.documentElement.scrollWidth,
  wide: [...document.querySelectorAll("body *")]
    .filter(e => sticksOut(e) && !sticksOut(e.parentElement) && !inScrollBox(e))
    .map(e => e.tagName.toLowerCase() + (e.className ? "." + e.className : "")),
})"""


def find_chromium() -> str | None:
    """A Chromium (or Chrome) binary on PATH, else None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


class _Pipe:
    """One DevTools session over the browser's pipe: commands answered by id, events kept."""

    def __init__(self, to_browser: int, from_browser: int):
        self.out, self.inp = to_browser, from_browser
        self.buffer, self.next_id, self.events = b"", 0, []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.inp, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed its DevTools pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def _errors(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and failed loads among the DevTools events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Runtime.exceptionThrown":
            found.append(params.get("exceptionDetails", {}).get("text", "exception"))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            found.append(f"{entry.get('text')} ({entry.get('url', '')})")
    return found


def inspect_page(browser: str, url: str, width: int = 390, height: int = 844, timeout: float = 120) -> dict:
    """Load `url` in a headless Chromium as a phone `width` CSS pixels wide.

    Returns {"images": [{"src", "complete", "width"}], "innerWidth", "scrollWidth", "wide": [elements
    sticking out], "errors": [console errors and failed loads]}."""
    to_read, to_browser = os.pipe()  # the browser reads commands on its fd 3
    from_browser, to_write = os.pipe()  # and writes answers on its fd 4
    profile = tempfile.mkdtemp(prefix="alexnet-chromium-")

    def child_fds():  # in the child, before exec: the two pipe ends as fds 3 and 4, kept open across exec
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_read, to_write)]  # clear of 3 and 4
        for fd, target in zip(high, (3, 4)):
            os.dup2(fd, target)
            os.set_inheritable(target, True)

    process = subprocess.Popen(
        [browser, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=child_fds,
        close_fds=False,
    )
    os.close(to_read)
    os.close(to_write)
    pipe = _Pipe(to_browser, from_browser)
    try:
        targets = pipe.send("Target.getTargets", timeout=timeout)["targetInfos"]
        page = next(t["targetId"] for t in targets if t["type"] == "page")
        session = pipe.send("Target.attachToTarget", {"targetId": page, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            pipe.send(f"{domain}.enable", session=session)
        metrics = {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True}
        pipe.send("Emulation.setDeviceMetricsOverride", metrics, session=session)
        pipe.send("Page.navigate", {"url": url}, session=session)
        pipe.wait_for("Page.loadEventFired", timeout=timeout)
        probe = pipe.send("Runtime.evaluate", {"expression": PROBE, "returnByValue": True}, session=session)
        result = json.loads(probe["result"]["value"])
        result["errors"] = _errors(pipe.events)
        try:
            pipe.send("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError):
            pass
        return result
    finally:
        os.close(to_browser)
        os.close(from_browser)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(profile, ignore_errors=True)
