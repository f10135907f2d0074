"""The Django admin lists and searches bindings, pools, backends and health."""

from __future__ import annotations

import datetime as dt
import json

import pytest

pytestmark = pytest.mark.postgres  # the selectors' queries run on both databases


@pytest.fixture
def admin_client(db, tmp_path):
    from django.contrib.auth.models import User
    from django.test import Client

    from affinity.services import binding_claim, binding_commit
    from pools.config import config_load
    from pools.services import config_sync
    from tests.admin.support import form_login, healthy

    path = tmp_path / "config.json"
    backends = [{"Id": f"node-{c}", "AeTitle": f"NODE{c.upper()}", "Host": "127.0.0.1", "Port": 104,
                 "CommitmentToken": f"secret-token-never-shown-{c}-0123",
                 "Health": {"Mode": "native", "Url": "http://127.0.0.1:9/api/health"}} for c in "ab"]
    path.write_text(json.dumps({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": 11112,
                                           "Backends": backends}]}))
    config_sync(config=config_load(path=path))
    healthy(["node-a", "node-b"], loads={"node-a": 0.25, "node-b": None})
    now = dt.datetime.now(dt.UTC)
    for suid, backend in (("1.2.3.1", "node-a"), ("1.2.3.11", "node-b"), ("1.2.4.1", "node-a")):
        binding_claim(pool_id="main", study_uid=suid, backend_id=backend, now=now)
    binding_commit(pool_id="main", study_uid="1.2.3.1", backend_id="node-a", now=now)
    username = f"admin-{now.timestamp():.0f}-{id(path)}"
    User.objects.create_superuser(username=username, password="pw-for-tests", email="")
    client = Client(HTTP_HOST="127.0.0.1")
    assert form_login(client, username, "pw-for-tests") == 302
    return client


def _rows(client, url: str) -> str:
    rsp = client.get(url)
    assert rsp.status_code == 200, url
    return rsp.content.decode()


def test_bindings_are_searchable_by_suid_and_filterable_by_pool_backend_and_commitment(admin_client):
    page = _rows(admin_client, "/admin/affinity/binding/?q=1.2.3")
    assert "1.2.3.1" in page and "1.2.3.11" in page and "1.2.4.1" not in page
    page = _rows(admin_client, "/admin/affinity/binding/?committed=yes")
    assert "1.2.3.1" in page and "1.2.3.11" not in page and "1.2.4.1" not in page
    page = _rows(admin_client, "/admin/affinity/binding/?committed=no&backend__id__exact=node-a")
    assert "1.2.4.1" in page and "1.2.3.11" not in page
    assert "1.2.3.1<" not in _rows(admin_client, "/admin/affinity/binding/?pool__id__exact=main&committed=no")


def test_pools_backends_and_health_read_clearly(admin_client):
    backends = _rows(admin_client, "/admin/pools/backend/")
    assert "node-a" in backends and "25%" in backends
    assert "secret-token-never-shown" not in _rows(admin_client, "/admin/pools/backend/node-a/change/")
    assert "node-b" in _rows(admin_client, "/admin/pools/pool/main/change/")
    health = _rows(admin_client, "/admin/health/backendhealth/")
    assert "25%" in health and "unknown" in health
    assert "main" in _rows(admin_client, "/admin/health/heartbeatround/")
    _rows(admin_client, "/admin/routing/routingdecision/?q=1.2")
    _rows(admin_client, "/admin/routing/proxyprocess/")


def test_failures_and_rejections_are_listed_searchable_and_escaped(admin_client):
    from routing.telemetry import Telemetry

    t = Telemetry(process_id="test:1")
    for n, (calling_ae, comment) in enumerate((("CT1", "<b>disk full</b>"), ("MR2", "backend node-b unreachable"))):
        t.store_failed(pool_id="main", calling_ae=calling_ae, source_ip="10.0.0.7", study_uid=f"1.2.9.{n}",
                       sop_instance_uid=f"1.2.9.{n}.1", backend_id="node-a", status=0xA701, comment=comment,
                       by_backend=False)
    t.association_rejected("called-ae", pool_id="main", source_ip="10.0.0.9", calling_ae="US2", called_ae="WRONG",
                           detail="called AE title 'WRONG' is not 'SYNTHIQ'")
    t.publish(extra={}, listeners=[])
    page = _rows(admin_client, "/admin/routing/failedoperation/?q=1.2.9.0")
    assert "0xA701" in page and "CT1" in page and "MR2" not in page
    assert "&lt;b&gt;disk full&lt;/b&gt;" in page and "<b>disk full</b>" not in page
    page = _rows(admin_client, "/admin/routing/rejectedassociation/?q=US2")
    assert "WRONG" in page and "10.0.0.9" in page


def test_the_drain_action_drains_through_the_service(admin_client):
    from pools.models import Backend

    rsp = admin_client.post("/admin/pools/backend/", {"action": "drain", "_selected_action": ["node-b"]})
    assert rsp.status_code == 302
    assert Backend.objects.get(id="node-b").draining is True
    assert Backend.objects.get(id="node-a").draining is False


def test_the_admin_speaks_synthiq_and_plain_english(admin_client):
    index = _rows(admin_client, "/admin/")
    assert "SynthIQ administration" in index and "Runproxy processes" in index and "Proxy processs" not in index
    bindings = _rows(admin_client, "/admin/affinity/binding/")
    assert "Instances received" in bindings
    from django.test import Client

    login = Client(HTTP_HOST="127.0.0.1").get("/admin/login/").content.decode()
    assert "SynthIQ administration" in login and "Django administration" not in login
