"""Who failed and why, on the dashboard and its API, against real failures made through a
running runproxy: a backend that answers a failure, a stopped backend (0xA701 from SynthIQ,
the backend down, its load unknown, the pool degraded), a modality calling the wrong AE title
(A-ASSOCIATE-RJ) and one asking for a service the pool does not pass (its presentation
context refused). Seen in headless Chromium at 1400 and 800 px, and through the token API.

One cluster serves the module: the failures are made once, then each test reads them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import requests
from pydicom import dcmread

from routing.simulators.synthetic import write_study
from tests.admin.cdp import Browser
from tests.admin.support import Api, ApiUser, api_user, clean_database, study_root
from tests.harness import (
    BackendHandle,
    Cluster,
    ProxyHandle,
    binding_of,
    free_port,
    send_files,
    start_storescp,
    wait_for,
)

# The browser's time zone: an hour or two from UTC, so its local time cannot pass for UTC.
TIMEZONE = "Europe/Paris"
# A backend's Error Comment is the peer's text: it must show as text, never as markup.
HOSTILE_COMMENT = '<img src=x onerror="window.__owned=1">disk full'
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"

pytestmark = pytest.mark.postgres


@dataclass
class Scene:
    cluster: Cluster
    proxy: ProxyHandle
    archive_port: int
    node_a: BackendHandle
    node_b: BackendHandle
    user: ApiUser
    base: str
    refused_study: str  # node-a answered 0xC000 for it
    held_study: str  # bound to node-a, then failed with SynthIQ's 0xA701 once node-a stopped
    held_sop: str  # its instance that failed


def _pools_json(api: Api) -> dict:
    return {p["id"]: p for p in api.json("/api/pools")}


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("dashboard-failures"), env=dict(os.environ))
    try:
        yield _make_failures(cluster)
    finally:
        cluster.stop_all()


def _make_failures(cluster: Cluster) -> Scene:
    tmp: Path = cluster.tmp
    a = cluster.backend("node-a")
    b = cluster.backend("node-b", queue_depth=20)  # busier: new studies go to node-a
    storescp_port, _ = start_storescp(cluster, ae_title="ARCHIVE1")
    config = cluster.config(
        [a, b],
        pool={"Services": {"Find": False}},
        Network={"BoundBackendHoldSeconds": 0},  # a stopped backend's study fails at once
    )
    archive_port = free_port()
    # A second pool whose only backend (DCMTK's storescp) offers storage alone: nothing else to pass.
    config["Pools"].append({
        "Id": "archive", "AeTitle": "ARCHIVE", "Host": "127.0.0.1", "Port": archive_port,
        "Backends": [{"Id": "archive-1", "AeTitle": "ARCHIVE1", "Host": "127.0.0.1", "Port": storescp_port,
                      "Health": {"Mode": "liveness", "Probe": "echo"}}],
    })
    proxy = cluster.proxy(config, http=True)
    user = api_user()
    api = Api(proxy.http_port, user.token)
    wait_for(lambda: all(bk["health"]["state"] == "healthy" for p in api.json("/api/pools") for bk in p["backends"]),
             timeout=30, interval=0.3, what="every backend healthy by its heartbeats")

    root = study_root()
    held_study, held_files = write_study(tmp / "held", count=3, study_uid=f"{root}.1")
    assert [s.status for s in send_files(proxy.port, held_files[:2], calling_ae="CT_ROOM_3")] == [0, 0]
    assert binding_of(held_study) == "node-a"

    # node-a answers one study with a failure and a comment of its own.
    a.control(status=0xC000, error_comment=HOSTILE_COMMENT)
    refused_study, refused_files = write_study(tmp / "refused", count=1, study_uid=f"{root}.2")
    sent = send_files(proxy.port, refused_files, calling_ae="MR_ROOM_1")
    assert [s.status for s in sent] == [0xC000]
    a.control(status=0, error_comment="")

    # node-a stops: the rest of its bound study fails with SynthIQ's 0xA701, at once.
    a.process.stop()
    sent = send_files(proxy.port, held_files[2:], calling_ae="CT_ROOM_3")
    assert [s.status for s in sent] == [0xA701] and "node-a" in sent[0].comment

    # A modality set up with the wrong called AE title, twice: rejected (A-ASSOCIATE-RJ).
    for _ in range(2):
        with pytest.raises(ConnectionError):
            send_files(proxy.port, held_files[:1], called_ae="WRONG_AE", calling_ae="US_CART_2")

    # A workstation asking to query where the pool does not pass C-FIND: its context refused.
    from pynetdicom import AE

    ae = AE(ae_title="WORKSTATION7")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification, so the association itself is accepted
    assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ")
    assert assoc.is_established
    assert [cx.abstract_syntax for cx in assoc.rejected_contexts] == [STUDY_ROOT_FIND]
    assoc.release()

    return Scene(cluster, proxy, archive_port, a, b, user, f"http://127.0.0.1:{proxy.http_port}",
                 refused_study, held_study, str(dcmread(held_files[2], stop_before_pixels=True).SOPInstanceUID))


@pytest.fixture(scope="module")
def api(scene) -> Api:
    api = Api(scene.proxy.http_port, scene.user.token)
    # Everything recorded, node-a seen down by its heartbeats (published every ~2 s).
    wait_for(lambda: len(api.json("/api/failures")["results"]) == 2
             and {r["reason"] for r in api.json("/api/rejections")["results"]} == {"called-ae", "presentation-context"}
             and _pools_json(api)["main"]["degraded"],
             timeout=30, interval=0.3, what="the failures, rejections and node-a down to be published")
    return api


# -- the API --------------------------------------------------------------------------------


def test_failures_api_says_who_sent_what_where_and_what_the_status_means(scene, api):
    held, refused = api.json("/api/failures")["results"]  # newest first
    assert held["study_uid"] == scene.held_study and refused["study_uid"] == scene.refused_study
    assert (held["calling_ae"], held["source_ip"], held["backend"], held["pool"]) == (
        "CT_ROOM_3", "127.0.0.1", "node-a", "main")
    assert (held["status"], held["status_hex"], held["meaning"], held["origin"]) == (
        0xA701, "0xA701", "Refused: Out of resources", "synthiq")
    assert "unreachable" in held["cause"] and "node-a" in held["comment"]
    assert held["sop_instance_uid"] == scene.held_sop
    assert (refused["calling_ae"], refused["backend"], refused["status_hex"], refused["meaning"]) == (
        "MR_ROOM_1", "node-a", "0xC000", "Error: Cannot understand")
    assert refused["origin"] == "backend" and refused["cause"] == ""
    assert refused["comment"] == HOSTILE_COMMENT  # stored as sent; the page shows it as text

    only_backend = api.json("/api/failures", backend="node-b")["results"]
    assert only_backend == []
    assert [f["status"] for f in api.json("/api/failures", limit=1)["results"]] == [0xA701]
    assert api.get("/api/failures", limit=0).status_code == 400


def test_rejections_api_says_who_from_where_why_and_how_often(scene, api):
    rows = {r["reason"]: r for r in api.json("/api/rejections")["results"]}
    wrong = rows["called-ae"]
    assert (wrong["calling_ae"], wrong["called_ae"], wrong["source_ip"], wrong["count"], wrong["rejected"]) == (
        "US_CART_2", "WRONG_AE", "127.0.0.1", 2, True)
    assert "'WRONG_AE' is not 'SYNTHIQ'" in wrong["detail"]
    assert wrong["first_seen_utc"] <= wrong["last_seen_utc"]
    query = rows["presentation-context"]
    assert (query["calling_ae"], query["called_ae"], query["count"], query["rejected"]) == (
        "WORKSTATION7", "SYNTHIQ", 1, False)
    assert "StudyRootQueryRetrieveInformationModelFind" in query["detail"]
    # The A-ASSOCIATE-RJ counter counts the rejections only, not the refused context.
    assert api.json("/api/status")["counters"]["rejected"] == {"called-ae": 2}
    # The rejected caller is among the calling AE titles too, though nothing of it was routed.
    callers = {c["calling_ae"]: c for c in api.json("/api/status")["calling_aes"]}
    assert (callers["US_CART_2"]["studies"], callers["US_CART_2"]["rejected"]) == (0, 2)
    assert callers["US_CART_2"]["last_seen_utc"] == callers["US_CART_2"]["rejected_last_utc"] == wrong["last_seen_utc"]
    assert (callers["CT_ROOM_3"]["studies"], callers["CT_ROOM_3"]["rejected"]) == (1, 0)
    assert "WORKSTATION7" not in callers  # accepted; only a service it asked for was refused


def test_pools_api_shows_services_offered_or_why_not_and_the_degraded_pool(scene, api):
    pools = _pools_json(api)
    main = {s["service"]: s for s in pools["main"]["services"]}
    assert main["find"]["offered"] is False and main["find"]["why"] == "switched off in Pools[main].Services"
    archive = {s["service"]: s for s in pools["archive"]["services"]}
    assert all(s["known"] and not s["offered"] for s in archive.values())
    assert archive["find"]["why"] == "no backend offers C-FIND"
    assert archive["storage_commitment"]["why"] == "no backend offers Storage commitment"

    node_a = next(b for b in pools["main"]["backends"] if b["id"] == "node-a")
    assert node_a["health"]["state"] in ("unhealthy", "stale")  # down, whether its heartbeat failed or is late
    assert node_a["health"]["load"] is None and node_a["health"]["queue_depth"] is None  # unknown, not 0
    node_b = next(b for b in pools["main"]["backends"] if b["id"] == "node-b")
    assert node_b["health"]["load"] == pytest.approx(0.4)
    assert any(r.startswith("backend node-a is down") for r in pools["main"]["degraded"])
    assert pools["archive"]["degraded"] == []


def test_a_pool_is_degraded_too_when_a_proxy_cannot_reach_the_database_or_sees_stale_heartbeats(scene, api):
    from routing.models import ProxyProcess

    now = dt.datetime.now(dt.UTC)
    # A second runproxy process, elsewhere, as it publishes when its database and heartbeats fail.
    ProxyProcess.objects.create(
        id="other-host:4242", started_utc=now, updated_utc=now + dt.timedelta(seconds=30), listeners=[],
        counters={"counters": {}, "db_ok": False, "db_error": "OperationalError: connection refused",
                  "heartbeat_stale": True},
    )
    try:
        pools = _pools_json(api)
        for pool_id in ("main", "archive"):
            assert "the database is unreachable" in pools[pool_id]["degraded"]
            assert any(r.startswith("heartbeats are stale") for r in pools[pool_id]["degraded"])
    finally:
        ProxyProcess.objects.filter(id="other-host:4242").delete()
    assert _pools_json(api)["archive"]["degraded"] == []


def test_failure_and_rejection_apis_need_a_token(scene, api):
    for path in ("/api/failures", "/api/rejections"):
        assert requests.get(scene.base + path, timeout=10).status_code in (401, 403)
        bad = requests.get(scene.base + path, headers={"Authorization": "Token not-a-token"}, timeout=10)
        assert bad.status_code in (401, 403)
        assert api.get(path).status_code == 200
    schema = api.get("/api/schema").text
    assert "/api/failures" in schema and "/api/rejections" in schema


# -- the page --------------------------------------------------------------------------------


def _text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


@pytest.fixture(scope="module")
def page(scene, api):
    browser = Browser.start(scene.cluster)
    try:
        browser.call("Emulation.setTimezoneOverride", timezoneId=TIMEZONE)
        browser.goto(scene.base + "/")
        browser.js(
            f"document.querySelector('#id_username').value = {json.dumps(scene.user.username)};"
            f"document.querySelector('#id_password').value = {json.dumps(scene.user.password)};"
            "document.querySelector('#login-form').submit();"
        )
        browser.wait_js("location.pathname === '/' && document.querySelectorAll('#failures tr[data-failure]').length"
                        " === 2 && !!document.querySelector('[data-banner=\"Pool main degraded\"]')",
                        what="the dashboard with the failures and the degraded banner")
        yield browser
    finally:
        browser.close()


def _shows_everything(browser: Browser, scene: Scene, api: Api) -> None:
    """What a PACS administrator must read off the page, at any width."""
    # Recent failures: time (UTC and local), sender AE and address, study, backend, status and meaning, comment.
    held = api.json("/api/failures")["results"][0]
    row = '#failures tr[data-status="0xA701"]'
    assert browser.js(_text(f'{row} [data-field="sender"] b')) == "CT_ROOM_3"
    assert browser.js(_text(f'{row} [data-field="sender"] .sub')) == "127.0.0.1"
    assert browser.js(_text(f'{row} [data-field="study"]')).startswith(scene.held_study)
    assert browser.js(_text(f'{row} [data-field="backend"] b')) == "node-a"
    assert browser.js(_text(f'{row} [data-field="status"] b')) == "0xA701"
    assert browser.js(_text(f'{row} [data-field="meaning"]')) == "Refused: Out of resources"
    origin = browser.js(_text(f'{row} [data-field="origin"]'))
    assert "answered by SynthIQ: the study's backend is unreachable" in origin
    assert "node-a" in browser.js(_text(f'{row} [data-field="comment"]'))
    at = dt.datetime.fromisoformat(held["at_utc"].replace("Z", "+00:00"))
    assert browser.js(_text(f'{row} [data-field="utc"]')) == at.strftime("%H:%M:%S") + " UTC"
    local = at.astimezone(ZoneInfo(TIMEZONE))
    assert local.strftime("%H:%M:%S") in browser.js(_text(f'{row} [data-field="local"]'))
    assert TIMEZONE in browser.js(_text("#updated")) and " UTC · " in browser.js(_text("#updated"))

    backend_row = '#failures tr[data-status="0xC000"]'
    assert browser.js(_text(f'{backend_row} [data-field="meaning"]')) == "Error: Cannot understand"
    assert browser.js(_text(f'{backend_row} [data-field="origin"]')) == "answered by the backend"
    assert browser.js(_text(f'{backend_row} [data-field="comment"]')) == HOSTILE_COMMENT
    assert browser.js("document.querySelectorAll('#failures img').length") == 0  # text, never markup
    assert browser.js("window.__owned === undefined") is True

    # The Failed and Rejected tiles lead to the cards that say who and why.
    assert browser.js("document.querySelector('[data-counter=\"failed\"]').closest('a.tile').hash") == "#failures-card"
    assert browser.js("document.querySelector('[data-counter=\"rejected\"]').closest('a.tile').hash") == (
        "#rejections-card")

    # Rejected associations: who, from where, why, how often.
    wrong = '#rejections tr[data-reason="called-ae"]'
    assert browser.js(_text(f'{wrong} [data-field="who"]')) == "US_CART_2 → WRONG_AE"
    assert browser.js(_text(f'{wrong} [data-field="from"]')) == "127.0.0.1"
    assert browser.js(_text(f'{wrong} [data-field="why"] b')) == "called AE title not this pool's"
    assert browser.js(_text(f'{wrong} [data-field="count"]')) == "2"
    query = '#rejections tr[data-reason="presentation-context"]'
    assert browser.js(_text(f'{query} [data-field="who"]')) == "WORKSTATION7 → SYNTHIQ"
    assert "StudyRootQueryRetrieveInformationModelFind" in browser.js(_text(f'{query} [data-field="detail"]'))
    caller = 'tr[data-calling-ae="US_CART_2"]'
    assert browser.js(_text(f'{caller} [data-field="rejected"]')) == "2"

    # Services: not offered, and why; never "none yet".
    find = '#services [data-pool="main"] [data-service="find"]'
    assert browser.js(f"document.querySelector({json.dumps(find)}).dataset.offered") == "false"
    assert browser.js(_text(f'{find} [data-field="why"]')) == "— switched off in Pools[main].Services"
    get = '#services [data-pool="archive"] [data-service="get"]'
    assert browser.js(_text(f'{get} [data-field="why"]')) == "— no backend offers C-GET"
    assert "none yet" not in browser.js("document.body.textContent")

    # The stopped backend: down, its load unknown (not 0%), the pool degraded in a banner and the strip.
    assert browser.js(_text('tr[data-backend="node-a"] [data-field="load"]')) == "unknown"
    assert "%" in browser.js(_text('tr[data-backend="node-b"] [data-field="load"]'))
    assert "out of service" in browser.js(_text('tr[data-backend="node-a"]'))
    banner = browser.js(_text('[data-banner="Pool main degraded"]'))
    assert "backend node-a is down" in banner
    assert browser.js("!!document.querySelector('[data-banner=\"Pool archive degraded\"]')") is False
    assert "Pool main degraded" in browser.js(_text("#strip .item.bad"))

    # Nothing wider than the window: wide tables scroll inside their cards.
    assert browser.js("document.documentElement.scrollWidth <= window.innerWidth") is True


def _tile_rows(browser: Browser) -> list[int]:
    """How many tiles lie on each row, top to bottom."""
    tops = browser.js("[...document.querySelectorAll('#tiles .tile')].map((t) => t.getBoundingClientRect().top)")
    rows: dict[int, int] = {}
    for top in tops:
        rows[round(top)] = rows.get(round(top), 0) + 1
    return [rows[t] for t in sorted(rows)]


def test_dashboard_at_1400_px_shows_who_failed_and_why_with_the_tiles_on_one_row(scene, api, page):
    page.resize(1400)
    _shows_everything(page, scene, api)
    assert _tile_rows(page) == [10]


def test_dashboard_at_800_px_shows_the_same_and_no_tile_is_left_alone_on_a_row(scene, api, page):
    page.resize(800)
    _shows_everything(page, scene, api)
    rows = _tile_rows(page)
    assert sum(rows) == 10 and len(rows) > 1 and min(rows) >= 2, rows
