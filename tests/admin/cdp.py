"""A small client for Chromium's DevTools protocol: enough to drive the dashboard
headless (navigate, run JavaScript, take a screenshot) without a WebDriver."""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import requests
import websocket

from tests.harness import Cluster, Managed, free_port, require_tool, wait_for


class Browser:
    def __init__(self, process: Managed, port: int):
        self.process = process
        self.port = port
        page = wait_for(self._page_target, timeout=30, interval=0.2, what="Chromium's DevTools endpoint")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._next_id = 0
        self.call("Page.enable")
        self.call("Runtime.enable")

    @classmethod
    def start(cls, cluster: Cluster, *, width: int = 1400, height: int = 1000) -> Browser:
        chromium = require_tool("chromium", "chromium")
        port = free_port()
        profile = cluster.tmp / "chromium-profile"
        profile.mkdir(exist_ok=True)
        argv = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", f"--remote-debugging-port={port}",
            "--remote-debugging-address=127.0.0.1", f"--window-size={width},{height}", "--hide-scrollbars",
            "about:blank",
        ]
        process = cluster.process("chromium", argv)
        return cls(process, port)

    def _page_target(self) -> dict[str, Any] | None:
        if self.process.proc and self.process.proc.poll() is not None:
            raise AssertionError(f"chromium exited with {self.process.proc.returncode}:\n{self.process.log()}")
        try:
            targets = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
        except requests.RequestException:
            return None
        return next((t for t in targets if t.get("type") == "page"), None)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        call_id = self._next_id
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:  # anything else is an event we did not ask about
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(0.1)  # let the navigation start before polling readyState
        wait_for(lambda: self.js("document.readyState") == "complete", timeout=20, what=f"{url} to load")

    def wait_js(self, expression: str, *, timeout: float = 20, what: str | None = None) -> Any:
        return wait_for(lambda: self.js(expression), timeout=timeout, interval=0.2, what=what or expression)

    def resize(self, width: int, height: int = 1000) -> None:
        """Lay the page out for a viewport of this size (as a window of that size would)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        wait_for(lambda: self.js("window.innerWidth") == width, timeout=5, interval=0.1, what=f"a {width} px viewport")

    def screenshot(self, path: Path, *, width: int = 1400) -> None:
        height = int(self.js("Math.ceil(document.documentElement.scrollHeight)"))
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        tmp.write_bytes(base64.b64decode(data))
        shutil.move(tmp, path)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, websocket.WebSocketException):
            return  # already gone: the cluster stops the process anyway
        finally:
            self.ws.close()
