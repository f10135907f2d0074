"""The study ledger on the dashboard, against real verdicts: studies sent through a running
runproxy to two simulated backends, one then losing an instance (``missing``), one getting an
instance on the other backend (``split``), one left alone (``whole``) and one not verified yet,
each verdict reached by ``manage.py verify`` asking the backends with C-FIND. In headless
Chromium at 1400 and 800 px: the study lookup shows the verdict, acknowledged and held; the
"Studies not whole" card lists the split and missing ones, and only those.

One cluster serves the module: the verdicts are made once, then each test reads them.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass

import pytest
import requests
from django.core.management import call_command

from routing.simulators.synthetic import write_study
from tests.admin.cdp import Browser
from tests.admin.support import Api, ApiUser, api_user, clean_database, study_root
from tests.harness import BackendHandle, Cluster, ProxyHandle, binding_of, send_files, wait_for

pytestmark = pytest.mark.postgres


@dataclass
class Scene:
    cluster: Cluster
    proxy: ProxyHandle
    user: ApiUser
    base: str
    studies: dict[str, str]  # verdict -> study UID
    bound: dict[str, str]  # study UID -> backend


def _acknowledged(study_uid: str) -> int:
    from affinity import selectors

    return len(selectors.study_acknowledged(pool_id="main", study_uid=study_uid))


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Scene:
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("dashboard-ledger"), env=dict(os.environ))
    try:
        yield _make_verdicts(cluster)
    finally:
        cluster.stop_all()


def _make_verdicts(cluster: Cluster) -> Scene:
    nodes: dict[str, BackendHandle] = {n: cluster.backend(n) for n in ("node-a", "node-b")}
    # The background verifier waits an hour: every verdict here is the verify command's.
    config = cluster.config(list(nodes.values()), Reconciliation={"QuietSeconds": 3600})
    proxy = cluster.proxy(config, http=True)
    user = api_user()
    api = Api(proxy.http_port, user.token)
    wait_for(lambda: all(b["health"]["state"] == "healthy" for p in api.json("/api/pools") for b in p["backends"]),
             timeout=30, interval=0.3, what="both backends healthy by their heartbeats")

    root = study_root()
    studies, bound, files = {}, {}, {}
    for n, verdict in enumerate(("whole", "missing", "split", "unverified"), start=1):
        suid, paths = write_study(cluster.tmp / verdict, count=2, study_uid=f"{root}.{n}")
        assert [s.status for s in send_files(proxy.port, paths)] == [0, 0]
        studies[verdict], files[verdict], bound[suid] = suid, paths, binding_of(suid)
    for suid in studies.values():
        wait_for(lambda suid=suid: _acknowledged(suid) == 2, timeout=20, what=f"both instances of {suid} acknowledged")

    from pydicom import dcmread

    # missing: the bound backend loses one instance.
    lost = dcmread(files["missing"][1], stop_before_pixels=True)
    node = nodes[bound[studies["missing"]]]
    requests.delete(f"{node.url}/api/instances/{lost.SOPInstanceUID}", timeout=5).raise_for_status()
    # split: the other backend holds an instance the bound one lacks (as an old balancer left it).
    split = studies["split"]
    other = next(b for n, b in nodes.items() if n != bound[split])
    one = dcmread(files["split"][0], stop_before_pixels=True)
    requests.post(f"{other.url}/api/instances", timeout=5, json=[{
        "StudyInstanceUID": split, "SeriesInstanceUID": str(one.SeriesInstanceUID),
        "SOPInstanceUID": f"{split}.99.1", "StudyDate": str(one.get("StudyDate", ""))}]).raise_for_status()

    out = io.StringIO()
    call_command("verify", "--pool", "main", studies["whole"], studies["missing"], split, stdout=out)
    report = out.getvalue()
    for verdict in ("whole", "missing", "split"):
        assert f"{studies[verdict]}" in report and verdict in report, report
    return Scene(cluster, proxy, user, f"http://127.0.0.1:{proxy.http_port}", studies, bound)


@pytest.fixture(scope="module")
def api(scene) -> Api:
    return Api(scene.proxy.http_port, scene.user.token)


def test_the_api_the_page_reads_has_the_verdicts(scene, api):
    verdicts = {v: api.json(f"/api/studies/{uid}")["pools"][0] for v, uid in scene.studies.items()}
    assert {v: e["verdict"] for v, e in verdicts.items()} == {
        "whole": "whole", "missing": "missing", "split": "split", "unverified": "unverified"}
    assert verdicts["missing"]["held"] == {scene.bound[scene.studies["missing"]]: 1}
    assert sorted(verdicts["split"]["held"].values()) == [1, 2]
    assert verdicts["unverified"]["held"] == {} and verdicts["unverified"]["verified_utc"] is None
    listed = api.json("/api/studies")
    assert [(s["study_uid"], s["verdict"]) for s in listed["results"]] == sorted(
        [(scene.studies["missing"], "missing"), (scene.studies["split"], "split")])


# -- the page --------------------------------------------------------------------------------


def _text(selector: str) -> str:
    return f"(document.querySelector({json.dumps(selector)}) || {{}}).textContent"


@pytest.fixture(scope="module")
def page(scene, api):
    browser = Browser.start(scene.cluster)
    try:
        browser.goto(scene.base + "/")
        browser.js(
            f"document.querySelector('#id_username').value = {json.dumps(scene.user.username)};"
            f"document.querySelector('#id_password').value = {json.dumps(scene.user.password)};"
            "document.querySelector('#login-form').submit();"
        )
        browser.wait_js("location.pathname === '/' && document.querySelectorAll('#not-whole tr[data-study]').length"
                        " === 2", what="the dashboard with the studies not whole")
        yield browser
    finally:
        browser.close()


def _look_up(browser: Browser, study_uid: str) -> str:
    row = f'#study-result tr[data-study="{study_uid}"]'
    browser.js(f"document.querySelector('#study-result').replaceChildren();"
               f"document.querySelector('#study-uid').value = {json.dumps(study_uid)};"
               "document.querySelector('#study-lookup').requestSubmit();")
    browser.wait_js(f"!!document.querySelector({json.dumps(row + ' [data-field=verdict]')})",
                    what=f"the lookup of {study_uid}")
    return row


def _shows_the_ledger(browser: Browser, scene: Scene) -> None:
    studies, bound = scene.studies, scene.bound
    # The card: the split and the missing study, with their verdict, backend and counts; nothing else.
    card = {browser.js(f"[...document.querySelectorAll('#not-whole tr[data-study]')][{i}].dataset.study"):
            browser.js(f"[...document.querySelectorAll('#not-whole tr[data-study]')][{i}].dataset.verdict")
            for i in range(2)}
    assert card == {studies["missing"]: "missing", studies["split"]: "split"}
    missing = f'#not-whole tr[data-study="{studies["missing"]}"]'
    assert browser.js(_text(f'{missing} [data-field="verdict"]')) == "missing"
    assert browser.js(_text(f'{missing} [data-field="backend"]')) == bound[studies["missing"]]
    assert browser.js(_text(f'{missing} [data-field="acknowledged"]')) == "2"
    assert browser.js(_text(f'{missing} [data-field="held"]')) == f"{bound[studies['missing']]} 1"
    split = f'#not-whole tr[data-study="{studies["split"]}"]'
    other = next(n for n in ("node-a", "node-b") if n != bound[studies["split"]])
    assert browser.js(_text(f'{split} [data-field="held"]')) == ", ".join(
        sorted([f"{bound[studies['split']]} 2", f"{other} 1"]))
    assert "2 studies" in browser.js(_text("#not-whole-hint"))

    # The lookup: the verdict of each study with what was acknowledged and where it is held.
    for verdict, uid in studies.items():
        row = _look_up(browser, uid)
        assert browser.js(_text(f'{row} [data-field="verdict"] [data-verdict]')) == verdict
        assert browser.js(_text(f'{row} [data-field="backend"]')) == bound[uid]
        assert browser.js(_text(f'{row} [data-field="acknowledged"]')) == "2"
    assert browser.js(_text('#study-result [data-field="held"]')) == "–"  # unverified: nothing held known yet
    row = _look_up(browser, studies["whole"])
    assert browser.js(_text(f'{row} [data-field="held"]')) == f"{bound[studies['whole']]} 2"

    # Nothing wider than the window: wide tables scroll inside their cards.
    assert browser.js("document.documentElement.scrollWidth <= window.innerWidth") is True


def test_dashboard_at_1400_px_shows_the_verdicts_and_the_studies_not_whole(scene, page):
    page.resize(1400)
    _shows_the_ledger(page, scene)


def test_dashboard_at_800_px_shows_the_same(scene, page):
    page.resize(800)
    _shows_the_ledger(page, scene)
