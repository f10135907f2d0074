"""The dashboard's operator views in a real headless Chromium: a down backend's row, the
rate charts, the study lookup and the calling AE table, fed by real C-STOREs routed
through runproxy, and a layout that stays inside its cards at desktop and narrow widths."""

from __future__ import annotations

import json

from routing.simulators.synthetic import write_study
from tests.admin.cdp import Browser
from tests.admin.support import Api, api_user, study_root
from tests.harness import send_files, wait_for

# Every element of a card lies within the card; one inside a scrolling (or clipping) box
# is checked through that box. Returns the offenders as text.
OVERFLOWING = """(() => {
  const out = [];
  for (const card of document.querySelectorAll(".card")) {
    const c = card.getBoundingClientRect();
    for (const node of card.querySelectorAll("*")) {
      let clipped = false;
      for (let up = node.parentElement; up && up !== card; up = up.parentElement) {
        if (getComputedStyle(up).overflowX !== "visible") { clipped = true; break; }
      }
      const r = node.getBoundingClientRect();
      if (clipped || (r.width === 0 && r.height === 0)) continue;
      if (r.left < c.left - 0.5 || r.right > c.right + 0.5 || r.top < c.top - 0.5 || r.bottom > c.bottom + 0.5) {
        out.push(node.tagName + "." + node.className + " [" + Math.round(r.left) + "," + Math.round(r.right) +
                 "] outside card [" + Math.round(c.left) + "," + Math.round(c.right) + "]: " +
                 (node.textContent || "").slice(0, 40));
      }
    }
  }
  if (document.documentElement.scrollWidth > window.innerWidth) {
    out.push("page wider than the viewport: " + document.documentElement.scrollWidth);
  }
  return out;
})()"""


def _text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


def _log_in(browser: Browser, base: str) -> None:
    user = api_user()
    browser.goto(base + "/admin/login/?next=/")
    browser.js(
        f"document.querySelector('#id_username').value = {json.dumps(user.username)};"
        f"document.querySelector('#id_password').value = {json.dumps(user.password)};"
        "document.querySelector('#login-form').submit();"
    )
    browser.wait_js("location.pathname === '/' && !!document.querySelector('tr[data-backend]')",
                    what="the dashboard after login")


def _assert_fits(browser: Browser) -> None:
    for width in (1400, 800):
        browser.resize(width)
        browser.wait_js("new Promise((ok) => requestAnimationFrame(() => requestAnimationFrame(() => ok(true))))")
        assert browser.js(OVERFLOWING) == [], f"at {width} px"


def test_a_down_backend_row_is_red_and_says_why_and_for_how_long(cluster):
    a = cluster.backend("node-a")
    b = cluster.backend("node-b")
    proxy = cluster.proxy(cluster.config([a, b]), http=True)
    browser = Browser.start(cluster)
    try:
        _log_in(browser, f"http://127.0.0.1:{proxy.http_port}")
        row = 'tr[data-backend="node-b"]'
        browser.wait_js(f"{_text(row + ' .tag')} === 'in service'", what="node-b in service")

        b.process.stop()  # the heartbeats find it gone
        browser.wait_js(f"document.querySelector({json.dumps(row)}).classList.contains('down')",
                        what="node-b's row shown down")
        assert browser.js(_text(row + " .tag")) == "out of service"
        assert browser.js(f"getComputedStyle(document.querySelector('{row} td')).backgroundColor") == \
            "rgb(253, 236, 236)"
        reason = browser.js(_text(row + ' [data-field="down-reason"]'))
        from health.models import BackendHealth

        last_error = BackendHealth.objects.get(backend_id="node-b").last_error
        assert last_error and reason == last_error
        assert browser.js(_text(row + ' [data-field="down-since"]')).startswith("down for ")
        assert "down" not in browser.js("document.querySelector('tr[data-backend=\"node-a\"]').className")
        _assert_fits(browser)
    finally:
        browser.close()


def test_rates_lookup_and_calling_aes_follow_real_traffic_and_fit_their_cards(cluster, tmp_path):
    a = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([a]), http=True, extra_env={"SYNTHIQ_RATE_SAMPLE_SECONDS": "1"})
    api = Api(proxy.http_port, api_user().token)
    root = study_root()
    studies = [write_study(tmp_path / n, count=3, study_uid=f"{root}.{n}") for n in ("1", "2")]

    def busy_points() -> list[dict]:
        return [p for p in api.json("/api/status")["rates"]["points"] if p["instances_per_s"] > 0]

    # Two bursts in two different sampling slots: two points with traffic.
    for n, (_suid, files) in enumerate(studies, start=1):
        assert [s.status for s in send_files(proxy.port, files, calling_ae="CT-ROOM-7")] == [0, 0, 0]
        wait_for(lambda n=n: len(busy_points()) >= n, timeout=15, interval=0.3, what=f"burst {n} in the rates")
    points = busy_points()
    assert all(p["mb_per_s"] > 0 and p["backends"]["node-a"]["instances_per_s"] > 0 for p in points)
    assert sum(p["failures_per_s"] for p in points) == 0

    browser = Browser.start(cluster)
    try:
        _log_in(browser, f"http://127.0.0.1:{proxy.http_port}")
        # The total instances line, drawn with at least two points above the baseline.
        line = "document.querySelector('[data-chart=\"Instances\"] polyline[data-series=\"total\"]')"
        browser.wait_js(f"!!{line}", what="the instances chart")
        xy = [tuple(map(float, p.split(","))) for p in browser.js(f"{line}.getAttribute('points')").split()]
        assert len(xy) >= 2 and sum(1 for _, y in xy if y < 90) >= 2, xy
        assert browser.js("!!document.querySelector('[data-chart=\"Relayed\"] polyline[data-series=\"node-a\"]')")

        # Who sent them: the calling AE, its two studies, its backend.
        ae = 'tr[data-calling-ae="CT-ROOM-7"]'
        browser.wait_js(f"!!document.querySelector({json.dumps(ae)})", what="the calling AE row")
        assert browser.js(_text(ae + " td:nth-child(2)")) == "2"
        assert browser.js(_text(ae + " td:nth-child(4)")) == "node-a"

        # The lookup finds a study just routed (its instance count is written behind, ~1 s).
        suid = studies[0][0]
        wait_for(lambda: api.json("/api/affinity", search=suid)["results"][0]["instance_count"] == 3,
                 timeout=10, interval=0.3, what="the binding's instance count")
        browser.js(f"document.querySelector('#study-uid').value = {json.dumps(suid)};"
                   "document.querySelector('#study-lookup button').click()")
        found = f'#study-result tr[data-study="{suid}"]'
        browser.wait_js(f"!!document.querySelector({json.dumps(found)})", what="the study found")
        assert browser.js(_text(found + ' [data-field="backend"]')) == "node-a"
        assert browser.js(_text(found + ' [data-field="instances"]')) == "3"
        assert browser.js(_text(found + ' [data-field="commitment"]')) == "not committed"
        browser.js(f"document.querySelector('#study-uid').value = '{root}.999';"
                   "document.querySelector('#study-lookup button').click()")
        browser.wait_js("!!document.querySelector('[data-lookup=\"not-found\"]')", what="not found shown")
        browser.js(f"document.querySelector('#study-uid').value = {json.dumps(suid)};"
                   "document.querySelector('#study-lookup button').click()")
        browser.wait_js(f"!!document.querySelector({json.dumps(found)})", what="the study found again")
        _assert_fits(browser)
    finally:
        browser.close()
