"""The dashboard in a real headless Chromium against the running app: log in, route a
study through runproxy, and watch the page update itself."""

from __future__ import annotations

import datetime as dt
import json
import os

import pytest

from routing.simulators.synthetic import write_study
from synthiq_project.version import VERSION
from tests.admin.cdp import Browser
from tests.admin.support import api_user, healthy, study_root
from tests.harness import ROOT, send_files

# `SYNTHIQ_SCREENSHOT=docs/dashboard.png pytest tests/admin/test_dashboard_browser.py`
# refreshes the README's picture; otherwise the screenshot stays in the test's tmp dir.
SCREENSHOT_TO = os.environ.get("SYNTHIQ_SCREENSHOT")


def _text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


def _shows(selector: str, text: str) -> str:
    return f"{_text(selector)} === {json.dumps(text)}"


def test_dashboard_shows_decisions_and_counters_live_without_a_reload(cluster, tmp_path):
    a = cluster.backend("node-a")
    b = cluster.backend("node-b", queue_depth=20)
    c = cluster.backend("node-c")
    config = cluster.config(
        [a, b, c.config(Health={"Mode": "liveness", "Probe": "echo"}, Weight=1)],
        HeartbeatTimeoutSeconds=600,
    )
    # Rates sampled every 2 s rather than 10, so the picture has charts to show.
    proxy = cluster.proxy(config, http=True, extra_env={"SYNTHIQ_RATE_SAMPLE_SECONDS": "2"})
    healthy([a, b, c], loads={"node-a": 0.0, "node-b": 0.4, "node-c": None})
    user = api_user()
    base = f"http://127.0.0.1:{proxy.http_port}"

    browser = Browser.start(cluster)
    try:
        # Logging in: the dashboard sends an anonymous visitor to the admin login form.
        browser.goto(base + "/")
        assert browser.js("location.pathname") == "/admin/login/"
        browser.js(
            f"document.querySelector('#id_username').value = {json.dumps(user.username)};"
            f"document.querySelector('#id_password').value = {json.dumps(user.password)};"
            "document.querySelector('#login-form').submit();"
        )
        browser.wait_js("location.pathname === '/' && !!document.querySelector('tr[data-backend=\"node-a\"]')",
                        what="the dashboard after login")
        browser.js("window.__loadedOnce = true")  # gone if the page reloads
        assert browser.js(_text('tr[data-backend="node-c"] td:nth-child(4)')) == "unknown"
        assert "native" in browser.js(_text('tr[data-backend="node-a"]'))
        assert browser.js(_text('tr[data-backend="node-a"] [data-field="forwarded"]')) == "0"

        # A study through runproxy: its decision pill and node-a's counters appear by themselves.
        root = study_root()
        suid, files = write_study(tmp_path / "s1", count=3, study_uid=f"{root}.1")
        assert [s.status for s in send_files(proxy.port, files)] == [0, 0, 0]
        pill = f'#decisions tr[data-study="{suid}"] .pill'
        browser.wait_js(f"!!document.querySelector({json.dumps(pill)})", what="the decision pill")
        assert browser.js(f"document.querySelector({json.dumps(pill)}).className") == "pill tier-least-busy"
        assert browser.js(_text(pill)) == "least busy"
        assert browser.js(_text(f'#decisions tr[data-study="{suid}"] td:nth-child(5)')) == "node-a"
        browser.wait_js(_shows('tr[data-backend="node-a"] [data-field="forwarded"]', "3"), what="node-a's counter")
        browser.wait_js(_shows('[data-counter="received"]', "3"), what="the received tile")
        assert browser.js(_text('[data-tier="association-cached"] b')) == "2"
        assert browser.js("window.__loadedOnce") is True
        assert browser.js(_text("#version")) == VERSION

        # A modality calling the wrong AE title: rejected, and counted on the page by reason.
        with pytest.raises(ConnectionError):
            send_files(proxy.port, files[:1], called_ae="WRONGAE")
        browser.wait_js(_shows('[data-counter="rejected"]', "1"), what="the rejected tile")
        tile = "document.querySelector('[data-counter=\"rejected\"]').closest('.tile')"
        assert "called-ae 1" in browser.js(tile + ".title")

        # More traffic for the picture: a weighted pick for the liveness node, a late re-send.
        more = [write_study(tmp_path / f"s{n}", count=2, study_uid=f"{root}.{n}")[1] for n in (2, 3, 4)]
        assert all(s.status == 0 for s in send_files(proxy.port, [f for fs in more for f in fs]))
        assert [s.status for s in send_files(proxy.port, files[:1])] == [0]
        browser.wait_js(_shows('[data-counter="received"]', "10"), what="all traffic on the page")
        browser.wait_js("!!document.querySelector('#decisions .tier-affinity-hit')", what="the affinity-hit pill")
        assert browser.js("document.querySelector('#banners').children.length") == 0

        # The Drain button posts with the session's CSRF token (the confirm dialog answered yes).
        browser.js("window.confirm = () => true;"
                   "document.querySelector('tr[data-backend=\"node-b\"] button.action.drain').click()")
        browser.wait_js(_shows('tr[data-backend="node-b"] .tag', "draining"), what="node-b shown draining")
        from pools.models import Backend

        assert Backend.objects.get(id="node-b").draining is True
        assert browser.js("window.__loadedOnce") is True
        screenshot = ROOT / SCREENSHOT_TO if SCREENSHOT_TO else tmp_path / "dashboard.png"
        browser.screenshot(screenshot)
        assert screenshot.stat().st_size > 20_000

        # Banners: a second proxy process that cannot reach the database and sees stale heartbeats.
        from routing.models import ProxyProcess

        now = dt.datetime.now(dt.UTC)
        ProxyProcess.objects.create(
            id="other-host:4242", started_utc=now, updated_utc=now + dt.timedelta(seconds=30), listeners=[],
            counters={"counters": {}, "db_ok": False, "db_error": "OperationalError: database is locked",
                      "heartbeat_stale": True, "pending_bindings": 2},
        )
        browser.wait_js("!!document.querySelector('[data-banner=\"Affinity database unreachable\"]')",
                        what="the database banner")
        browser.wait_js("!!document.querySelector('[data-banner=\"Heartbeats are stale\"]')",
                        what="the stale-heartbeat banner")
        assert "database is locked" in browser.js(_text('[data-banner="Affinity database unreachable"]'))
        ProxyProcess.objects.filter(id="other-host:4242").delete()
        browser.wait_js("document.querySelector('#banners').children.length === 0", what="the banners to clear")
        assert browser.js("window.__loadedOnce") is True
    finally:
        browser.close()
