"""The DICOM front door: real DCMTK peers, AE title checks, configuration errors."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from routing.simulators.synthetic import write_study
from tests.harness import PYTHON, ROOT, placement, require_tool, send_files, wait_for


def test_dcmtk_storescu_and_echoscu_work_against_runproxy(cluster, tmp_path):
    storescu = require_tool("storescu", "dcmtk")
    echoscu = require_tool("echoscu", "dcmtk")
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]))

    echo = subprocess.run([echoscu, "-aec", "SYNTHIQ", "127.0.0.1", str(proxy.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr

    suid, files = write_study(tmp_path / "study", count=3)
    store = subprocess.run([storescu, "-aet", "CT01", "-aec", "SYNTHIQ", "+sd", "127.0.0.1",
                            str(proxy.port), str(tmp_path / "study")],
                           capture_output=True, text=True, timeout=60)
    assert store.returncode == 0, store.stderr
    assert len(backend.holdings()[suid]) == 3
    assert "calling_ae=CT01" in proxy.process.log()


def _rejected(http_port: int) -> dict[str, float]:
    """synthiq_associations_rejected_total by reason, as a scraper reads it: the reasons that
    happened (every known reason is exported, at zero until it does)."""
    text = requests.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
    return {s.labels["reason"]: s.value for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == "synthiq_associations_rejected_total" and s.value}


def test_a_wrong_called_ae_title_is_rejected_at_association_logged_and_counted(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]), http=True)
    _, files = write_study(tmp_path, count=1)
    with pytest.raises(ConnectionError):
        send_files(proxy.port, files, called_ae="NOTSYNTHIQ", calling_ae="CT07")
    assert send_files(proxy.port, files)[0].status == 0
    assert ("association rejected pool=main calling_ae=CT07 called_ae=NOTSYNTHIQ source_ip=127.0.0.1 "
            "reason=called-ae") in proxy.process.log()
    wait_for(lambda: _rejected(proxy.http_port) == {"called-ae": 1}, timeout=15, what="the rejection in /metrics")


def test_a_calling_ae_outside_the_allow_list_is_rejected_logged_and_counted(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], pool={"AllowedCallingAeTitles": ["CT01", "MR02"]}), http=True)
    _, files = write_study(tmp_path, count=1)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            send_files(proxy.port, files, calling_ae="ROGUE")
    assert send_files(proxy.port, files, calling_ae="MR02")[0].status == 0
    assert placement([backend])
    assert "calling_ae=ROGUE called_ae=SYNTHIQ source_ip=127.0.0.1 reason=calling-ae" in proxy.process.log()
    wait_for(lambda: _rejected(proxy.http_port) == {"calling-ae": 2}, timeout=15, what="the rejections in /metrics")


def _loadconfig(path) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([PYTHON, "manage.py", "loadconfig", str(path)], cwd=ROOT, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)


def _loaded_two_backend_config(cluster, tmp_path):
    """A valid two-backend config file, already loaded into the database."""
    config = cluster.config([
        {"Id": "node-a", "AeTitle": "NODEA", "Host": "127.0.0.1", "Port": 104},
        {"Id": "node-b", "AeTitle": "NODEB", "Host": "127.0.0.1", "Port": 105},
    ])
    path = tmp_path / "synthiq.json"
    path.write_text(json.dumps(config))
    assert _loadconfig(path).returncode == 0
    return config, path


def test_an_invalid_config_changes_nothing_and_names_the_key_path(cluster, tmp_path):
    from pools.models import Backend

    good, path = _loaded_two_backend_config(cluster, tmp_path)
    before = list(Backend.objects.values_list("id", "port", "enabled").order_by("id"))

    bad = json.loads(json.dumps(good))
    bad["Pools"][0]["Backends"][0]["Port"] = 2104  # a valid change that must not be applied ...
    bad["Pools"][0]["Backends"][1]["Port"] = 70000  # ... because this one is invalid
    path.write_text(json.dumps(bad))
    result = _loadconfig(path)
    assert result.returncode != 0
    assert "Pools[0].Backends[1].Port: must be 1-65535" in result.stderr
    assert list(Backend.objects.values_list("id", "port", "enabled").order_by("id")) == before


def test_runproxy_refuses_an_invalid_config_with_the_key_path(cluster, tmp_path):
    import os

    config = cluster.config([{"Id": "node-a", "AeTitle": "A-TITLE-LONGER-THAN-16", "Host": "h", "Port": 1}])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([PYTHON, "manage.py", "runproxy", "--config", str(path)], cwd=ROOT,
                            env=dict(os.environ), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "Pools[0].Backends[0].AeTitle" in result.stderr


def test_a_backend_removed_from_the_file_is_disabled_not_deleted(cluster, tmp_path):
    from pools.models import Backend

    config, path = _loaded_two_backend_config(cluster, tmp_path)
    config["Pools"][0]["Backends"].pop()
    path.write_text(json.dumps(config))
    assert _loadconfig(path).returncode == 0
    assert dict(Backend.objects.values_list("id", "enabled")) == {"node-a": True, "node-b": False}


def test_a_peer_announcing_a_4_gb_pdu_is_cut_off_and_the_listener_keeps_serving(cluster, tmp_path):
    import socket
    import struct

    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as evil:
        evil.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 65536)
        evil.settimeout(10)
        # PS3.8 AA-1: an A-ABORT from the service provider (source 2), then the connection closes.
        answer = b""
        while chunk := evil.recv(64):
            answer += chunk
        assert answer[:1] == b"\x07" and answer[8] == 2 and len(answer) == 10
    # Log lines go out through a queue: the abort may reach the peer before its line is written.
    wait_for(lambda: "announced a 4294967280-byte PDU" in proxy.process.log(), timeout=10, what="the log line")
    _, files = write_study(tmp_path, count=1)
    assert send_files(proxy.port, files)[0].status == 0


def test_loadconfig_check_says_what_would_change_and_changes_nothing(cluster, tmp_path):
    from pools.models import Backend

    good, path = _loaded_two_backend_config(cluster, tmp_path)
    changed = json.loads(json.dumps(good))
    changed["Pools"][0]["Backends"][0]["Weight"] = 4
    changed["Pools"][0]["Backends"].pop()  # node-b leaves the file
    path.write_text(json.dumps(changed))
    result = subprocess.run([PYTHON, "manage.py", "loadconfig", "--check", str(path)], cwd=ROOT,
                            env=cluster.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "would change Pools[main].Backends[node-a].Weight: 1 -> 4" in result.stdout
    assert "would change Pools[main].Backends[node-b].Enabled: True -> False" in result.stdout
    assert Backend.objects.get(id="node-a").weight == 1 and Backend.objects.get(id="node-b").enabled
    path.write_text(json.dumps(good))
    again = subprocess.run([PYTHON, "manage.py", "loadconfig", "--check", str(path)], cwd=ROOT,
                           env=cluster.env, capture_output=True, text=True, timeout=60)
    assert "no change against the database" in again.stdout


@pytest.mark.parametrize("accepted, calls, ok", [
    ([], "ANY-SCP", False),  # storescu without -aec: refused by default, and logged
    (["*"], "ANY-SCP", True),
    (["PACS01", "ANY-SCP"], "ANY-SCP", True),
    (["PACS01"], "PACS01", True),
    (["PACS01"], "PACS02", False),
])
def test_modalities_calling_an_old_ae_title_are_accepted_as_the_pool_says(cluster, tmp_path, accepted, calls, ok):
    """A drop-in for a PACS VIP: modalities keep the called AE title they were set up with."""
    storescu = require_tool("storescu", "dcmtk")
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], pool={"AcceptedCalledAeTitles": accepted}))
    suid, _ = write_study(tmp_path / "study", count=2)
    argv = [storescu, "-aet", "CT01", *([] if calls == "ANY-SCP" else ["-aec", calls]), "+sd", "127.0.0.1",
            str(proxy.port), str(tmp_path / "study")]
    store = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert (store.returncode == 0) == ok, store.stderr
    assert (suid in backend.holdings()) == ok
    if not ok:
        assert f"called_ae={calls} source_ip=127.0.0.1 reason=called-ae" in proxy.process.log()


def test_refused_presentation_contexts_are_named_in_the_log(cluster):
    """A query to a pool whose backends offer no C-FIND: the modality only sees its context
    refused; the log says which SOP class and why."""
    findscu = require_tool("findscu", "dcmtk")
    backend = cluster.backend("node-a", services="none")  # it stores and answers C-ECHO only
    proxy = cluster.proxy(cluster.config([backend]))
    found = subprocess.run([findscu, "-S", "-aec", "SYNTHIQ", "-k", "QueryRetrieveLevel=STUDY",
                            "-k", "StudyInstanceUID", "127.0.0.1", str(proxy.port)],
                           capture_output=True, text=True, timeout=30)
    assert found.returncode != 0
    wait_for(lambda: "presentation contexts refused" in proxy.process.log(), timeout=10, what="the refusal")
    assert "StudyRootQueryRetrieveInformationModelFind (1.2.840.10008.5.1.4.1.2.2.1)" in proxy.process.log()
