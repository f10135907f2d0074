"""The health probe's credentials reach the configured Url and nothing else: a redirect is a
failed heartbeat that names where it pointed, and credentials over plain http:// are not
sent unless the backend's Health section allows it."""

from __future__ import annotations

import json

import pytest

from tests.harness import free_port
from tests.health.helpers import HealthEndpoint, config_apply, health_row

PASSWORD = "probe-password-not-for-redirects"
GOOD_BODY = json.dumps({"status": "ok", "queue_depth": 1, "capacity": 10}).encode()


@pytest.fixture
def servers():
    made: list[HealthEndpoint] = []

    def make(*, redirect_to: str | None = None) -> HealthEndpoint:
        """A real endpoint that records the Authorization header of every GET and answers a
        good certified body, or a redirect to ``redirect_to``."""
        made.append(HealthEndpoint())
        if redirect_to:
            made[-1].serve(raw=b"", status=302, headers={"Location": redirect_to})
        else:
            made[-1].serve(raw=GOOD_BODY)
        return made[-1]

    yield make
    for s in made:
        s.close()


def _health(url: str, **extra) -> dict:
    return {"Mode": "certified", "Url": url, "Username": "synthiq", "Password": PASSWORD} | extra


def test_a_redirect_fails_the_heartbeat_by_name_and_the_credentials_never_reach_its_target(db, servers):
    from health.services import HeartbeatPolicy, heartbeat_round

    elsewhere = servers()
    redirector = servers(redirect_to=elsewhere.url)
    config_apply({"HeartbeatIntervalSeconds": 1, "HeartbeatTimeoutSeconds": 3,
                  "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                             "Backends": [{"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1",
                                           "Port": free_port(),
                                           "Health": _health(redirector.url, AllowPlainHttpCredentials=True)}]}]})

    result = heartbeat_round(pool_id="main", policy=HeartbeatPolicy(1.0, 3.0, 96), runner="test")

    assert result == {"node-a": False}
    assert f"redirect to {elsewhere.url!r} not followed" in health_row("node-a").last_error
    assert len(redirector.authorizations) == 1 and redirector.authorizations[0].startswith("Basic ")
    assert elsewhere.authorizations == []  # not even asked, let alone with the credentials


def test_credentials_over_plain_http_are_not_sent_without_the_allowance(servers):
    """A Health section stored before the config check existed is refused at the probe too."""
    from health.probes import ProbeError, Target, probe_run
    from pools.config import HealthConfig

    endpoint = servers()
    target = Target(backend_id="node-a", pool_ae_title="SYNTHIQ", ae_title="NODEA", host="127.0.0.1",
                    port=free_port(), health=HealthConfig.model_validate(_health(endpoint.url)))
    with pytest.raises(ProbeError, match="not sent over plain http://"):
        probe_run(target=target, timeout=2.0)
    assert endpoint.authorizations == []

    allowed = HealthConfig.model_validate(_health(endpoint.url, AllowPlainHttpCredentials=True))
    reading = probe_run(target=Target(**{**target.__dict__, "health": allowed}), timeout=2.0)
    assert reading.load == pytest.approx(0.1)
    assert endpoint.authorizations and endpoint.authorizations[0].startswith("Basic ")
