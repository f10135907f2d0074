"""Schemathesis against the served OpenAPI schema, in process against the WSGI app:
no generated request may produce a 5xx, and documented responses match the schema."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import HealthCheck, Phase, given, settings

TOKEN_A = "commit-token-node-a-0123456789"
MAX_EXAMPLES = 20  # per operation: bounded, the suite runs on two shared cores


def _seed(tmp_path) -> None:
    from affinity.services import binding_claim, binding_commit
    from pools.config import config_load
    from pools.services import config_sync
    from routing.models import ProxyProcess, RoutingDecision

    backends = [{"Id": f"node-{c}", "AeTitle": f"NODE{c.upper()}", "Host": "127.0.0.1", "Port": 104,
                 "CommitmentToken": f"commit-token-node-{c}-0123456789",
                 "Health": {"Mode": "native", "Url": "http://127.0.0.1:9/api/health"}} for c in "ab"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": 11112,
                                           "Backends": backends}]}))
    config_sync(config=config_load(path=path))
    now = dt.datetime.now(dt.UTC)
    for n in range(5):
        suid = f"1.2.826.0.1.3680043.10.{n}"
        backend = "node-a" if n % 2 else "node-b"
        binding_claim(pool_id="main", study_uid=suid, backend_id=backend, now=now)
        RoutingDecision.objects.create(at_utc=now, pool_id="main", backend_id=backend, study_uid=suid,
                                       reason="least-busy", calling_ae="CT1", modality="CT")
    binding_commit(pool_id="main", study_uid="1.2.826.0.1.3680043.10.1", backend_id="node-a", now=now)
    ProxyProcess.objects.create(id="host:1", started_utc=now, updated_utc=now, counters={
        "counters": {"received": 3, "routed.least-busy": 1, "status.success": 3},
        "backends": {"node-a": {"forwarded": 3}},
        "latency_buckets": [0.1], "latency": {"node-a": [3, 0]}, "cache_size": 1, "db_ok": True,
    }, listeners=[{"pool": "main", "ae_title": "SYNTHIQ", "port": 11112, "accepting": True}])


def _fuzz(op, auth: dict[str, str], calls: list[int]):
    from schemathesis.checks import not_a_server_error, response_schema_conformance

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def check(case):
        response = case.call_wsgi(headers=auth)
        calls.append(response.status_code)
        case.validate_response(response, checks=(not_a_server_error, response_schema_conformance))

    return check


def test_no_generated_request_gets_a_server_error(db, tmp_path):
    import schemathesis

    from synthiq_project.wsgi import application
    from tests.admin.support import api_user

    _seed(tmp_path)
    user_auth = {"Authorization": f"Token {api_user().token}"}
    schema = schemathesis.from_wsgi("/api/schema?format=json", application, headers=user_auth)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.definition.raw["operationId"] for op in operations} >= {
        "status", "pools", "affinity_list", "activity", "commitment_get", "commitment_report",
        "backend_drain", "backend_enable",
    }
    calls: list[int] = []
    for op in operations:
        # Backends report commitment with their own token; everything else is a user's.
        is_report = op.definition.raw["operationId"] == "commitment_report"
        _fuzz(op, {"Authorization": f"Bearer {TOKEN_A}"} if is_report else user_auth, calls)()
    assert len(calls) >= len(operations) * 5, len(calls)
