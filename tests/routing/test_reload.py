"""Live reload like HAProxy's: SIGHUP re-reads the config file and applies it whole without
dropping an association; an invalid file changes nothing and says why."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading

import pytest

from routing.simulators.synthetic import write_study
from tests.harness import free_port, send_files, wait_for


def _reload(proxy, config: dict, *, expect: str) -> None:
    before = proxy.process.log().count("reload: ")
    proxy.config_path.write_text(json.dumps(config))
    proxy.process.signal(signal.SIGHUP)
    wait_for(lambda: proxy.process.log().count("reload: ") > before and expect in proxy.process.log(),
             timeout=20, what=f"the reload to log {expect!r}")


def test_sighup_applies_the_file_without_dropping_the_transfer_in_flight(cluster, tmp_path):
    a, b = cluster.backend("node-a"), cluster.backend("node-b")
    config = cluster.config([a])
    proxy = cluster.proxy(config)
    _, files = write_study(tmp_path / "s", count=4)

    # A transfer in flight across the reload: node-a takes 3 s to answer each instance.
    a.control(latency_ms=3000)
    in_flight: list = []
    sender = threading.Thread(target=lambda: in_flight.extend(send_files(proxy.port, files[:2], calling_ae="CT01")))
    sender.start()
    wait_for(lambda: "route pool=main" in proxy.process.log(), timeout=10, what="the transfer to start")

    second_port = free_port()
    second = {"Id": "second", "AeTitle": "SECOND", "Host": "127.0.0.1", "Port": second_port,
              "Backends": [b.config()]}
    config["Pools"][0]["AllowedCallingAeTitles"] = ["CT01"]
    config["Pools"].append(second)
    _reload(proxy, config, expect=f"listening pool=second ae=SECOND on 127.0.0.1:{second_port}")
    log = proxy.process.log()
    assert "Pools[main].AllowedCallingAeTitles: [] -> ['CT01']; Pools[second]: added" in log
    sender.join(timeout=60)
    assert [s.status for s in in_flight] == [0, 0]  # the reload dropped nothing
    a.control(latency_ms=0)

    # The allow-list applies to new associations, and the new pool serves.
    with pytest.raises(ConnectionError):
        send_files(proxy.port, files[2:3], calling_ae="ROGUE")
    assert send_files(proxy.port, files[2:3], calling_ae="CT01")[0].status == 0
    _, other = write_study(tmp_path / "t", count=1)
    assert send_files(second_port, other, called_ae="SECOND")[0].status == 0
    assert other and b.holdings()

    # An invalid file changes nothing and says why.
    broken = json.loads(json.dumps(config))
    broken["Pools"][0]["Port"] = "11112"
    _reload(proxy, broken, expect="is invalid, nothing changed")
    assert "Pools[0].Port: expected an integer" in proxy.process.log()
    with pytest.raises(ConnectionError):
        send_files(proxy.port, files[3:], calling_ae="ROGUE")
    assert send_files(second_port, other, called_ae="SECOND")[0].status == 0

    # A pool removed from the file: its listener closes.
    config["Pools"] = config["Pools"][:1]
    _reload(proxy, config, expect="pool=second removed")
    with pytest.raises(ConnectionError):
        send_files(second_port, other, called_ae="SECOND")
    assert send_files(proxy.port, files[3:], calling_ae="CT01")[0].status == 0
    assert proxy.process.proc.poll() is None


def test_with_workers_the_parent_validates_and_syncs_once_and_every_worker_applies(cluster, tmp_path):
    a, b = cluster.backend("node-a"), cluster.backend("node-b")
    config = cluster.config([a])
    second_port = free_port()
    config["Pools"].append({"Id": "second", "AeTitle": "SECOND", "Host": "127.0.0.1", "Port": second_port,
                            "Backends": [b.config()]})
    proxy = cluster.proxy(config, extra_args=["--workers", "2"])
    _, files = write_study(tmp_path / "s", count=1)
    assert send_files(second_port, files, called_ae="SECOND")[0].status == 0
    config["Pools"] = config["Pools"][:1]  # the second pool removed
    config["Pools"][0]["AllowedCallingAeTitles"] = ["CT01"]
    config["Pools"][0]["Backends"][0]["Weight"] = 3
    _reload(proxy, config, expect="Pools[main].Backends[node-a].Weight: 1 -> 3")
    from pools.models import Backend

    assert Backend.objects.get(id="node-a").weight == 3  # synced to the database once, by the parent
    wait_for(lambda: {line.split("[", 1)[1].split("]", 1)[0].split("/")[-1]
                      for line in proxy.process.log().splitlines() if "reload: applied" in line} == {"w0", "w1"},
             timeout=10, what="both workers to apply the file")
    for _ in range(6):  # whichever worker accepts, the allow-list holds
        with pytest.raises(ConnectionError):
            send_files(proxy.port, files, calling_ae="ROGUE")
    assert send_files(proxy.port, files, calling_ae="CT01")[0].status == 0

    def refused() -> bool:  # no process of runproxy's holds the removed pool's port any more
        try:
            socket.create_connection(("127.0.0.1", second_port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refused, timeout=10, what=f"port {second_port} of the removed pool to refuse connections")

    # A pool added: the parent binds it and hands the socket to both running workers.
    third_port = free_port()
    config["Pools"].append({"Id": "third", "AeTitle": "THIRD", "Host": "127.0.0.1", "Port": third_port,
                            "Backends": [b.config()]})
    _reload(proxy, config, expect="Pools[third]: added")
    wait_for(lambda: proxy.process.log().count(f"listening pool=third ae=THIRD on 127.0.0.1:{third_port}") == 2,
             timeout=20, what="both workers to listen on the added pool")
    workers = proxy.worker_pids()
    for serving in workers:  # each worker alone in turn: both accept on the added pool
        others = [pid for pid in workers if pid != serving]
        for pid in others:
            os.kill(pid, signal.SIGSTOP)
        try:
            suid, added = write_study(tmp_path / f"third-{serving}", count=1)
            assert send_files(third_port, added, called_ae="THIRD", calling_ae="CT01")[0].status == 0
        finally:
            for pid in others:
                os.kill(pid, signal.SIGCONT)
        assert suid in b.holdings()


def test_a_reload_changing_a_token_and_a_password_logs_neither_and_files_stay_private(cluster):
    """Secrets in the file: the reload line says the keys changed, never their values; the
    API shows neither; every file runproxy wrote is its owner's alone."""
    import stat

    import requests
    from django.conf import settings

    a = cluster.backend("node-a")
    old = {"Mode": "native", "Url": f"{a.url}/api/health", "Username": "synthiq",
           "Password": "old-password-4ZQ9", "AllowPlainHttpCredentials": True}
    config = cluster.config([a.config(Health=old, CommitmentToken="old-token-7Hk2-long-enough")])
    proxy = cluster.proxy(config, http=True)
    config["Pools"][0]["Backends"][0]["Health"] = old | {"Password": "new-password-8Wd1"}
    config["Pools"][0]["Backends"][0]["CommitmentToken"] = "new-token-3Jx5-long-enough"
    _reload(proxy, config, expect="CommitmentToken: changed")
    log = proxy.process.log()
    assert "Health.Password: changed" in log
    secrets = ("old-password-4ZQ9", "new-password-8Wd1", "old-token-7Hk2-long-enough", "new-token-3Jx5-long-enough")
    for secret in secrets:
        assert secret not in log
    api = requests.get(f"http://127.0.0.1:{proxy.http_port}/readyz", timeout=10).text
    assert "token" not in api.lower() and "password" not in api.lower()
    var = settings.VAR_DIR
    written = [p for p in [*var.rglob("*"), proxy.process.log_path] if p.is_file()]
    assert written
    assert not [p for p in written if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)], "readable by others"


def test_a_reload_names_the_pools_whose_dicom_web_settings_changed_or_moved():
    import copy

    from pools.config import config_parse
    from routing.listeners import dicom_web_changed, web_moved
    from tests.pools.test_config import GOOD, _with_dicom_web

    old = copy.deepcopy(GOOD)
    _with_dicom_web(old)
    same, url, creds, off = (copy.deepcopy(old) for _ in range(4))
    same["Pools"][0]["Backends"][0]["Weight"] = 3  # not a DICOMweb setting
    url["Pools"][0]["Backends"][1]["DicomWebUrl"] = "http://10.0.0.99:8042/dicom-web"
    creds["Pools"][0]["Backends"][0].update(DicomWebUsername="u", DicomWebPassword="p")
    off["Pools"][0].pop("DicomWeb")
    before = config_parse(data=old)
    assert dicom_web_changed(old=before, new=config_parse(data=same)) == []
    for changed in (url, creds, off):
        assert dicom_web_changed(old=before, new=config_parse(data=changed)) == ["main"]
    assert dicom_web_changed(old=config_parse(data=GOOD), new=config_parse(data=GOOD)) == []
    # Only a listener added, moved or removed needs a new socket; a changed one keeps its own.
    moved = copy.deepcopy(old)
    moved["Pools"][0]["DicomWeb"]["Port"] += 1
    assert [web_moved(old=before, new=config_parse(data=c)) for c in (same, url, creds, off, moved)] == [
        [], [], [], ["main"], ["main"]]


def _refused(port: int) -> bool:
    """No process of runproxy's accepts on the port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_applies_changed_dicom_web_settings_and_the_old_port_refuses(cluster, tmp_path, workers):
    """Pools[].DicomWeb moved (port and base path), changed in place (MaxBodyBytes), moved to
    a port in use, then removed, each by SIGHUP: every worker serves the new settings (each
    alone in turn: STOW-RS and QIDO-RS to a real Orthanc with its DICOMweb plugin), the old
    port refuses."""
    import requests

    from tests.harness import orthanc_dicomweb_plugin, start_orthanc
    from tests.routing.test_dicomweb import _stow

    orthanc = start_orthanc(cluster, name="orthanc-web", DicomAet="ORTHANCWEB", Plugins=[orthanc_dicomweb_plugin()])
    backend = {"Id": "node-a", "AeTitle": orthanc.ae_title, "Host": "127.0.0.1", "Port": orthanc.dicom_port,
               "Health": {"Mode": "liveness", "Probe": "echo"}, "DicomWebUrl": f"{orthanc.url}/dicom-web"}
    first, second = free_port(), free_port()
    config = cluster.config([backend], HeartbeatTimeoutSeconds=600, pool={"DicomWeb": {"Port": first}})
    proxy = cluster.proxy(config, extra_args=["--workers", str(workers)])
    suid, paths = write_study(tmp_path / "web", count=1 + 2 * workers, patient_id="RELOADWEB")
    assert _stow(f"http://127.0.0.1:{first}/dicom-web", paths[:1], session=requests.Session()).status_code == 200

    config["Pools"][0]["DicomWeb"] = {"Port": second, "BasePath": "/web"}
    _reload(proxy, config, expect=f"Pools[main].DicomWeb.Port: {first} -> {second}")
    serving = f"DICOMweb for pool main on http://127.0.0.1:{second}/web"
    wait_for(lambda: proxy.process.log().count(serving) == workers, timeout=20, what="every worker on the new port")
    base = f"http://127.0.0.1:{second}/web"
    pids = proxy.worker_pids() if workers > 1 else [proxy.process.proc.pid]
    for n, pid in enumerate(pids):  # each worker alone in turn
        others = [other for other in pids if other != pid]
        for other in others:
            os.kill(other, signal.SIGSTOP)
        try:
            sent = paths[1 + 2 * n:3 + 2 * n]
            answer = _stow(base, sent, session=requests.Session())
            assert answer.status_code == 200, answer.text
            [study] = requests.get(f"{base}/studies?PatientID=RELOADWEB", timeout=10).json()
            assert study["0020000D"]["Value"] == [suid] and study["00201208"]["Value"] == [3 + 2 * n]
        finally:
            for other in others:
                os.kill(other, signal.SIGCONT)
    wait_for(lambda: _refused(first), timeout=10, what=f"the old DICOMweb port {first} to refuse connections")

    # Changed in place: the same port (its socket kept, duplicated), served anew: MaxBodyBytes applies.
    config["Pools"][0]["DicomWeb"]["MaxBodyBytes"] = 2048  # less than one instance
    _reload(proxy, config, expect="Pools[main].DicomWeb.MaxBodyBytes")
    wait_for(lambda: proxy.process.log().count(serving) == 2 * workers, timeout=20, what="every worker served anew")
    for _ in range(4):
        assert _stow(base, paths[:1], session=requests.Session()).status_code == 413

    # Moved to a port another process holds: one error line, the rest applies, the old port refuses.
    with socket.create_server(("127.0.0.1", 0)) as taken:
        held = taken.getsockname()[1]
        config["Pools"][0]["DicomWeb"]["Port"] = held
        _reload(proxy, config, expect=f"DicomWeb.Port: {second} -> {held}")
        wait_for(lambda: f"DICOMweb: cannot listen on 127.0.0.1:{held}" in proxy.process.log(), timeout=10,
                 what="the port in use to be logged")
        wait_for(lambda: _refused(second), timeout=10, what=f"the moved DICOMweb port {second} to refuse connections")

    del config["Pools"][0]["DicomWeb"]
    _reload(proxy, config, expect="Pools[main].DicomWeb: ")
    assert proxy.process.proc.poll() is None
