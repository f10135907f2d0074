"""Whole-file validation of the JSON configuration with key-path errors."""

from __future__ import annotations

import copy

import pytest

from pools.config import ConfigError, config_parse

GOOD = {
    "Pools": [{
        "Id": "main", "AeTitle": "SYNTHIQ", "Port": 11112,
        "Backends": [
            {"Id": "node-a", "AeTitle": "NODEA", "Host": "10.0.0.11", "Port": 104,
             "Health": {"Mode": "native", "Url": "http://10.0.0.11:8080/api/health"}},
            {"Id": "node-b", "AeTitle": "NODEB", "Host": "10.0.0.12", "Port": 104, "Weight": 2},
        ],
    }],
}


def _errors(mutate) -> list[str]:
    data = copy.deepcopy(GOOD)
    mutate(data)
    with pytest.raises(ConfigError) as exc:
        config_parse(data=data)
    return exc.value.errors


def test_defaults_are_filled_in():
    cfg = config_parse(data=GOOD)
    assert cfg.study_cache_window_hours == 96
    assert cfg.heartbeat_interval_seconds == 5 and cfg.heartbeat_timeout_seconds == 15
    assert (cfg.pools[0].backends[1].health.mode, cfg.pools[0].backends[1].health.probe) == ("liveness", "echo")
    assert cfg.network.max_associations > 0
    assert cfg.pools[0].accepted_called_ae_titles == () and cfg.pools[0].commitment_requesters == ()


def test_commitment_requesters_are_read_trimmed():
    data = copy.deepcopy(GOOD)
    data["Pools"][0]["CommitmentRequesters"] = [{"AeTitle": " CT1 ", "Host": "ct1.example", "Port": 104}]
    [requester] = config_parse(data=data).pools[0].commitment_requesters
    assert (requester.ae_title, requester.host, requester.port) == ("CT1", "ct1.example", 104)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["Pools"][0]["Backends"][1].update(Port=0), "Pools[0].Backends[1].Port: must be 1-65535"),
    (lambda d: d["Pools"][0].update(AeTitle="X" * 17), "Pools[0].AeTitle: must be 1-16 ASCII"),
    (lambda d: d["Pools"][0]["Backends"][0]["Health"].pop("Url"), "Pools[0].Backends[0].Health.Url: required"),
    (lambda d: d["Pools"][0]["Backends"][0].update(Wieght=3), "Pools[0].Backends[0].Wieght: unknown key"),
    (lambda d: d["Pools"][0]["Backends"][1].update(Id="node-a"), "Pools[0].Backends[1].Id: duplicate backend id"),
    (lambda d: d.update(HeartbeatTimeoutSeconds=1), "HeartbeatTimeoutSeconds: must be >= HeartbeatIntervalSeconds"),
    (lambda d: d.update(Pools=[]), "Pools:"),
    (lambda d: d.pop("Pools"), "Pools: required"),
    (lambda d: d["Pools"][0]["Backends"][0]["Health"].update(Mode="psychic"),
     "Pools[0].Backends[0].Health.Mode: must be one of"),
    (lambda d: d["Pools"][0].update(CommitmentRequesters=[{"AeTitle": "CT1", "Host": "ct1", "Port": 104}] * 2),
     "Pools[0].CommitmentRequesters[1].AeTitle: 'CT1' listed twice"),
    (lambda d: d["Pools"][0].update(CommitmentRequesters=[{"AeTitle": "CT1", "Host": "ct1"}]),
     "Pools[0].CommitmentRequesters[0].Port: required"),
])
def test_each_error_names_its_key_path(mutate, expected):
    errors = _errors(mutate)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_error_in_the_file_is_reported_at_once():
    def two_errors(d):
        d["Pools"][0]["Port"] = "eleven"
        d["Pools"][0]["Backends"][0]["Port"] = 99999
    errors = _errors(two_errors)
    assert any(e.startswith("Pools[0].Port") for e in errors)
    assert any(e.startswith("Pools[0].Backends[0].Port") for e in errors)


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["Pools"][0].update(Port="11202"), "Pools[0].Port: expected an integer, got the string '11202'"),
    (lambda d: d["Pools"][0]["Backends"][1].update(Weight=2.5),
     "Pools[0].Backends[1].Weight: expected an integer, got the number 2.5"),
    (lambda d: d["Pools"][0]["Backends"][1].update(Enabled="yes"),
     "Pools[0].Backends[1].Enabled: expected true or false, got the string 'yes'"),
    (lambda d: d["Pools"][0]["Backends"][1].update(Port=True),
     "Pools[0].Backends[1].Port: expected an integer, got the boolean true"),
    (lambda d: d.update(HeartbeatIntervalSeconds="5"),
     "HeartbeatIntervalSeconds: expected a number, got the string '5'"),
    (lambda d: d["Pools"][0].update(AllowedCallingAeTitles="CT01"),
     "Pools[0].AllowedCallingAeTitles: expected a list, got the string 'CT01'"),
    (lambda d: d["Pools"][0]["Backends"][0].update(Health="native"),
     "Pools[0].Backends[0].Health: expected an object, got the string 'native'"),
])
def test_a_value_of_the_wrong_type_is_named_not_converted(mutate, expected):
    assert expected in _errors(mutate)


def test_the_code_reads_attributes_and_keys_in_snake_case_are_not_accepted():
    data = copy.deepcopy(GOOD)
    data["Pools"][0]["ae_title"] = data["Pools"][0].pop("AeTitle")
    errors = _errors(lambda d: d.update(data))
    assert "Pools[0].ae_title: unknown key" in errors and "Pools[0].AeTitle: required" in errors


def test_audit_is_off_without_its_block_and_its_port_follows_the_transport(tmp_path):
    assert config_parse(data=GOOD).audit is None
    ca = tmp_path / "ca.pem"
    ca.write_text("-")
    tls = config_parse(data=GOOD | {"Audit": {"Host": "arr.example", "Tls": {"CA": str(ca)}, "SiteId": "H1"}}).audit
    assert tls is not None and (tls.transport, tls.effective_port, tls.site_id) == ("tls", 6514, "H1")
    udp = config_parse(data=GOOD | {"Audit": {"Host": "arr.example", "Transport": "udp"}}).audit
    assert udp is not None and udp.effective_port == 514
    assert config_parse(data=GOOD | {"Audit": {"Host": "a", "Transport": "udp", "Port": 5514}}).audit.effective_port \
        == 5514


@pytest.mark.parametrize("audit, expected", [
    ({"Transport": "tls"}, "Audit.Host: required"),
    ({"Host": "arr"}, "Audit.Tls: required for the tls transport (its CA at least)"),
    ({"Host": "arr", "Transport": "udp", "Tls": {"CA": "/nonexistent"}}, "Audit.Tls.CA: file not found: /nonexistent"),
    ({"Host": "arr", "Transport": "syslog"}, "Audit.Transport: must be one of 'tls' or 'udp', got the string 'syslog'"),
    ({"Host": "arr", "Tls": {"Ca": "x"}}, "Audit.Tls.Ca: unknown key"),
    ({"Host": "arr", "Port": 70000, "Transport": "udp"}, "Audit.Port: must be 1-65535"),
])
def test_an_invalid_audit_block_names_its_key(audit, expected):
    assert expected in _errors(lambda d: d.update(Audit=audit))


# -- DICOMweb ------------------------------------------------------------------------------

def _with_dicom_web(data, **dicom_web):
    data["Pools"][0]["DicomWeb"] = {"Port": 8080} | dicom_web
    for n, backend in enumerate(data["Pools"][0]["Backends"]):
        backend["DicomWebUrl"] = f"http://10.0.0.1{n + 1}:8042/dicom-web"


def test_dicom_web_is_off_unless_configured_and_takes_its_defaults_from_the_pool():
    assert config_parse(data=GOOD).pools[0].dicom_web is None
    data = copy.deepcopy(GOOD)
    data["Pools"][0]["Host"] = "10.0.0.5"
    _with_dicom_web(data)
    pool = config_parse(data=data).pools[0]
    assert (pool.dicom_web.port, pool.dicom_web.base_path, pool.dicom_web.tls) == (8080, "/dicom-web", None)
    assert pool.dicom_web.max_body_bytes == 8 << 30
    assert pool.dicom_web_host == "10.0.0.5"
    assert pool.backends[0].dicom_web_url == "http://10.0.0.11:8042/dicom-web"


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: (_with_dicom_web(d), d["Pools"][0]["Backends"][1].pop("DicomWebUrl")),
     "Pools[0].Backends[1].DicomWebUrl: required (the pool has DicomWeb)"),
    (lambda d: (_with_dicom_web(d), d["Pools"][0]["DicomWeb"].pop("Port")), "Pools[0].DicomWeb.Port: required"),
    (lambda d: _with_dicom_web(d, Port=11112), "Pools[0].DicomWeb.Port: port 11112 used by another listener"),
    (lambda d: _with_dicom_web(d, BasePath="dicom-web/"), "Pools[0].DicomWeb.BasePath: must be an absolute path"),
    (lambda d: _with_dicom_web(d, Tls={"Certificate": "/nonexistent.pem"}),
     "Pools[0].DicomWeb.Tls.Certificate: file not found"),
    (lambda d: d["Pools"][0]["Backends"][0].update(DicomWebUrl="ftp://x/dicom-web"),
     "Pools[0].Backends[0].DicomWebUrl: must be an http:// or https:// URL"),
    (lambda d: d["Pools"][0]["Backends"][0].update(DicomWebUrl="http://u:p@x:8042/dicom-web"),
     "Pools[0].Backends[0].DicomWebUrl: credentials inside the URL"),
    (lambda d: d["Pools"][0]["Backends"][0].update(DicomWebUsername="synthiq"),
     "Pools[0].Backends[0].DicomWebUsername: DicomWebUsername and DicomWebPassword go together"),
])
def test_dicom_web_errors_name_their_key(mutate, expected):
    assert any(e.startswith(expected) for e in _errors(mutate)), _errors(mutate)


def test_a_dicom_web_password_is_never_echoed():
    errors = _errors(lambda d: d["Pools"][0]["Backends"][0].update(DicomWebPassword=12345678))
    assert errors == ["Pools[0].Backends[0].DicomWebPassword: expected a string, got a number"]
    old = copy.deepcopy(GOOD)
    old["Pools"][0]["Backends"][0].update(DicomWebUsername="synthiq", DicomWebPassword="hunter2-old")
    new = copy.deepcopy(old)
    new["Pools"][0]["Backends"][0]["DicomWebPassword"] = "hunter2-new"
    from pools.config import differences

    assert differences(config_parse(data=old), config_parse(data=new)) == [
        "Pools[main].Backends[node-a].DicomWebPassword: changed"]
