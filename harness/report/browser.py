"""Open a local HTML file in headless Chromium and report what happened.

Owns: starting one headless Chromium (a fresh user-data-dir, no background networking,
no sandbox when root), talking to it with the Chrome DevTools Protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4: no debugging port is opened at all),
loading one ``file://`` page, and collecting a full-page PNG screenshot, the console
messages with their levels, the uncaught JS exceptions, every request whose URL is not
``file:``/``data:``/``about:``, the page title and its visible text. The browser and every
process it started are killed at the end, also on errors: its own process group, and the
crash handler that detaches from it (found by the fresh profile path it runs with).

Must not: load anything but the given local file, let a request leave the machine (a
proxy on 127.0.0.1:9 that refuses connections and a resolver that finds no host stand
behind the page's requests, which are recorded, not served), or decide what a page
should contain (the caller asserts on the returned `PageCheck`).

    python -m harness.report.browser store/chunks/latest/index.html shot.png
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT_W_PX = 1280
VIEWPORT_H_PX = 900
SCREENSHOT_H_PX_MAX = 8000  # bound the PNG of a long page
SETTLE_MS = 300  # after the load event, for late console messages and timers
TIMEOUT_S = 30.0
MESSAGES_MAX = 1000  # console messages / exceptions / requests kept
TEXT_CHARS_MAX = 200_000
MESSAGE_BYTES_MAX = 64 * 1024 * 1024  # one CDP message (a screenshot is the big one)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--metrics-recording-only",
    "--mute-audio",
    "--allow-file-access-from-files",
    # any request the page makes goes nowhere: refused by a closed loopback port,
    # and no host name resolves
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)
_NOT_NETWORK = ("file:", "data:", "about:", "blob:", "chrome-error:")


class BrowserError(Exception):
    """Chromium is missing, did not start, died, or did not answer in time.

    ``answered`` tells whether the browser had answered over CDP before this happened
    (False: it could not be started here at all)."""

    answered = False


@dataclass
class ConsoleMessage:
    level: str  # error | warning | info | log | debug | verbose
    text: str
    source: str  # console-api or the Log domain's source (network, javascript, security ...)
    url: str = ""


@dataclass
class PageCheck:
    """What one page did in the browser."""

    url: str
    screenshot: Path
    title: str = ""
    text: str = ""
    console: list[ConsoleMessage] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # not file:/data:/about:

    @property
    def console_errors(self) -> list[ConsoleMessage]:
        return [m for m in self.console if m.level == "error"]

    @property
    def clean(self) -> bool:
        return not (self.console_errors or self.exceptions or self.requests)

    def summary(self) -> str:
        lines = [f"{self.url}: title {self.title!r}, screenshot {self.screenshot}"]
        lines += [f"  console {m.level} [{m.source}] {m.text} {m.url}" for m in self.console]
        lines += [f"  exception {e}" for e in self.exceptions]
        lines += [f"  request {r}" for r in self.requests]
        return "\n".join(lines)


def find_chromium() -> str | None:
    """The Chromium executable: $MACHI_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    env = os.environ.get("MACHI_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def check_page(html: Path, screenshot: Path, *, timeout_s: float = TIMEOUT_S,
               chromium: str | None = None, started: list[int] | None = None) -> PageCheck:
    """Load ``html`` (a local file) in a fresh headless Chromium; write ``screenshot``.

    ``started``, when given, gets the browser's pid (also its process group id) as soon as
    it runs, so a caller can verify that nothing of it is left, on errors too."""
    html = Path(html).resolve()
    if not html.is_file():
        raise BrowserError(f"no such file: {html}")
    exe = chromium or find_chromium()
    if exe is None:
        raise BrowserError("chromium not found (Debian: apt-get install chromium; "
                           "or scripts/install-system-deps as root; or set MACHI_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="machi-chromium-",
                                     ignore_cleanup_errors=True) as profile, \
            _Chromium(exe, Path(profile), timeout_s) as cdp:
        if started is not None and cdp.proc is not None:
            started.append(cdp.proc.pid)
        return _load(cdp, html, Path(screenshot))


def _high_fd(fd: int) -> int:
    """A close-on-exec copy of ``fd`` numbered 10 or more (dup2 to 3 and 4 cannot clobber it)."""
    hi = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return hi


def _pids_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text``."""
    needle = text.encode()
    out = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                out.append(int(cmdline.parent.name))
        except (OSError, ValueError):
            continue  # gone meanwhile
    return out


class _Chromium:
    """One Chromium process and its CDP pipe; a context manager that always kills it."""

    def __init__(self, exe: str, profile: Path, timeout_s: float) -> None:
        self.exe = exe
        self.profile = profile
        self.deadline = time.monotonic() + timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.to_fd = -1
        self.from_fd = -1
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.answered = False  # any CDP message came back
        self.stderr_path = profile / "chromium.stderr"

    def __enter__(self) -> _Chromium:
        cmd_r, cmd_w = (_high_fd(fd) for fd in os.pipe())
        res_r, res_w = (_high_fd(fd) for fd in os.pipe())
        argv = [self.exe, *FLAGS, f"--user-data-dir={self.profile / 'profile'}",
                f"--window-size={VIEWPORT_W_PX},{VIEWPORT_H_PX}", "about:blank"]
        try:
            with self.stderr_path.open("wb") as err:
                # CDP over a pipe: the browser reads fd 3 and writes fd 4. Our own fds are
                # close-on-exec (PEP 446), so only 0-4 reach the browser.
                def fds_3_4() -> None:
                    os.dup2(cmd_r, 3)
                    os.dup2(res_w, 4)

                # crashpad's database (and any other per-user file) inside the profile: it
                # names the profile on its command line, which is how __exit__ finds it
                env = {**os.environ, "XDG_CONFIG_HOME": str(self.profile / "config"),
                       "XDG_CACHE_HOME": str(self.profile / "cache")}
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                    env=env, close_fds=False, preexec_fn=fds_3_4, start_new_session=True)
        except OSError as e:
            for fd in (cmd_r, cmd_w, res_r, res_w):
                os.close(fd)
            raise BrowserError(f"cannot start {self.exe}: {e}") from e
        os.close(cmd_r)
        os.close(res_w)
        self.to_fd, self.from_fd = cmd_w, res_r
        return self

    def __exit__(self, *exc: object) -> None:
        # no graceful Browser.close: the profile is thrown away, and killing is quicker
        for fd in (self.to_fd, self.from_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc is not None:
            # the browser's own helpers (zygote, renderer, gpu) share its process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            # chrome_crashpad_handler detaches into its own session; it is ours by the
            # profile path (a fresh temporary directory) on its command line
            for pid in _pids_mentioning(str(self.profile)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def _stderr_tail(self) -> str:
        try:
            return self.stderr_path.read_bytes()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _fail(self, what: str) -> BrowserError:
        code = self.proc.poll() if self.proc else None
        err = BrowserError(f"chromium {what} (exit status {code}); stderr:\n"
                           f"{self._stderr_tail()}")
        err.answered = self.answered
        return err

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        """Send one command and wait for its answer; events met meanwhile are queued."""
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self.to_fd, data):]
        except BrokenPipeError as e:
            raise self._fail(f"closed its pipe before {method}") from e
        while True:
            m = self._read()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise BrowserError(f"{method}: {m['error']}")
                result: dict[str, Any] = m.get("result", {})
                return result
            if "method" in m and len(self.events) < 10 * MESSAGES_MAX:
                self.events.append(m)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        """Wait for the event ``method`` of ``session`` (earlier queued ones count)."""
        for m in self.events:
            if m.get("method") == method and m.get("sessionId") == session:
                return m
        while True:
            m = self._read()
            if "method" in m and len(self.events) < 10 * MESSAGES_MAX:
                self.events.append(m)
            if m.get("method") == method and m.get("sessionId") == session:
                return m

    def pump(self, duration_ms: int) -> None:
        """Collect events for ``duration_ms``."""
        end = min(self.deadline, time.monotonic() + duration_ms / 1000)
        while (left := end - time.monotonic()) > 0:
            if self.buf.find(b"\0") < 0 and not select.select([self.from_fd], [], [], left)[0]:
                return
            m = self._read()
            if "method" in m and len(self.events) < 10 * MESSAGES_MAX:
                self.events.append(m)

    def _read(self) -> dict[str, Any]:
        while (end := self.buf.find(b"\0")) < 0:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise self._fail("did not answer in time")
            if not select.select([self.from_fd], [], [], left)[0]:
                continue
            chunk = os.read(self.from_fd, 1 << 20)
            if not chunk:
                raise self._fail("exited")
            self.buf += chunk
            if len(self.buf) > MESSAGE_BYTES_MAX:
                raise BrowserError("a CDP message is larger than MESSAGE_BYTES_MAX")
        raw, self.buf = self.buf[:end], self.buf[end + 1:]
        out: dict[str, Any] = json.loads(raw)
        self.answered = True
        return out


def _load(cdp: _Chromium, html: Path, screenshot: Path) -> PageCheck:
    targets = cdp.send("Target.getTargets")["targetInfos"]
    page = next((t for t in targets if t.get("type") == "page"), None)
    target_id = page["targetId"] if page else cdp.send(
        "Target.createTarget", {"url": "about:blank"})["targetId"]
    sid = cdp.send("Target.attachToTarget", {"targetId": target_id, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        cdp.send(f"{domain}.enable", session=sid)
    cdp.send("Emulation.setDeviceMetricsOverride", {
        "width": VIEWPORT_W_PX, "height": VIEWPORT_H_PX, "deviceScaleFactor": 1,
        "mobile": False}, session=sid)
    cdp.events.clear()  # about:blank's own
    url = html.as_uri()
    nav = cdp.send("Page.navigate", {"url": url}, session=sid)
    if nav.get("errorText"):
        raise BrowserError(f"navigating to {url}: {nav['errorText']}")
    cdp.wait_event("Page.loadEventFired", sid)
    cdp.pump(SETTLE_MS)
    ev = cdp.send("Runtime.evaluate", {
        "expression": "JSON.stringify([document.title, document.body ? "
                      f"document.body.innerText.slice(0, {TEXT_CHARS_MAX}) : ''])",
        "returnByValue": True}, session=sid)
    title, text = json.loads(ev["result"]["value"])
    metrics = cdp.send("Page.getLayoutMetrics", session=sid)
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": max(VIEWPORT_W_PX, int(size["width"])),
            "height": min(SCREENSHOT_H_PX_MAX, max(1, int(size["height"]))), "scale": 1}
    shot = cdp.send("Page.captureScreenshot", {
        "format": "png", "clip": clip, "captureBeyondViewport": True}, session=sid)
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.write_bytes(base64.b64decode(shot["data"]))
    cdp.pump(50)
    check = PageCheck(url=url, screenshot=screenshot, title=title, text=text)
    _collect(check, [e for e in cdp.events if e.get("sessionId") == sid])
    return check


def _arg_text(arg: dict[str, Any]) -> str:
    if "value" in arg:
        return str(arg["value"])
    return str(arg.get("description") or arg.get("unserializableValue") or arg.get("type"))


def _collect(check: PageCheck, events: list[dict[str, Any]]) -> None:
    for m in events:
        p = m.get("params", {})
        method = m.get("method")
        if method == "Runtime.consoleAPICalled" and len(check.console) < MESSAGES_MAX:
            kind = p.get("type", "log")
            level = {"error": "error", "assert": "error", "warning": "warning",
                     "info": "info", "debug": "debug"}.get(kind, "log")
            text = " ".join(_arg_text(a) for a in p.get("args", []))
            check.console.append(ConsoleMessage(level, text[:4000], "console-api"))
        elif method == "Log.entryAdded" and len(check.console) < MESSAGES_MAX:
            e = p.get("entry", {})
            check.console.append(ConsoleMessage(e.get("level", "info"),
                                                str(e.get("text", ""))[:4000],
                                                e.get("source", "other"), e.get("url", "")))
        elif method == "Runtime.exceptionThrown" and len(check.exceptions) < MESSAGES_MAX:
            d = p.get("exceptionDetails", {})
            exc = d.get("exception") or {}
            check.exceptions.append(str(exc.get("description") or d.get("text"))[:4000])
        elif method == "Network.requestWillBeSent" and len(check.requests) < MESSAGES_MAX:
            url = str(p.get("request", {}).get("url", ""))
            if not url.startswith(_NOT_NETWORK):
                check.requests.append(url[:2000])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m harness.report.browser PAGE.html SHOT.png", file=sys.stderr)
        return 2
    check = check_page(Path(argv[0]), Path(argv[1]))
    print(check.summary())
    return 0 if check.clean else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
