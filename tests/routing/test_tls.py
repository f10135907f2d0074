"""DICOM TLS on the inbound listener and on outbound connections (DCMTK's storescp +tls)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
import warnings

import pytest
from pydicom import dcmread
from pynetdicom import AE, build_context

from routing.simulators.synthetic import write_study
from tests.harness import require_tool, send_files, start_storescp, wait_for


def _pki(tmp) -> dict[str, str]:
    openssl = require_tool("openssl", "openssl")
    run = lambda *a: subprocess.run([openssl, *a], check=True, capture_output=True, cwd=tmp)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=SynthIQ test CA")
    ext = tmp / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("proxy", "pacs"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", "/CN=127.0.0.1")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", str(ext))
    return {n: str(tmp / n) for n in ("ca.pem", "proxy.pem", "proxy.key", "pacs.pem", "pacs.key")}


def _tls_client(ca: str):
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    return ctx, "127.0.0.1"


def test_tls_in_and_out_and_a_silent_client_does_not_stall_the_listener(cluster, tmp_path):
    pki = _pki(tmp_path)
    pacs_port, _ = start_storescp(cluster, name="pacs", ae_title="PACS",
                                  extra=["+tls", pki["pacs.key"], pki["pacs.pem"], "+cf", pki["ca.pem"]])
    out_dir = cluster.tmp / "pacs"
    config = cluster.config(
        [{"Id": "pacs", "AeTitle": "PACS", "Host": "127.0.0.1", "Port": pacs_port,
          "Health": {"Mode": "liveness", "Probe": "tcp"},
          # storescp requires a client certificate (mutual TLS), as many PACS do.
          "Tls": {"CA": pki["ca.pem"], "Certificate": pki["proxy.pem"], "Key": pki["proxy.key"]}}],
        pool={"Tls": {"Certificate": pki["proxy.pem"], "Key": pki["proxy.key"]}},
    )
    proxy = cluster.proxy(config, http=True)

    # A client that connects and never says a word ...
    silent = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        # ... must not keep a real TLS client waiting.
        suid, [path] = write_study(tmp_path / "s", count=1)
        meta = dcmread(path, stop_before_pixels=True).file_meta
        ae = AE(ae_title="CT01")
        started = time.monotonic()
        assoc = ae.associate("127.0.0.1", proxy.port, ae_title="SYNTHIQ", tls_args=_tls_client(pki["ca.pem"]),
                             contexts=[build_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)])
        assert assoc.is_established and time.monotonic() - started < 5
        status = assoc.send_c_store(dcmread(path))
        assoc.release()
    finally:
        silent.close()
    assert status.Status == 0x0000
    stored = wait_for(lambda: list(out_dir.iterdir()), timeout=10, what="storescp to write the file")
    assert dcmread(stored[0]).StudyInstanceUID == suid

    # Plain DICOM to a TLS listener gets nowhere, and says so in the log and the counters.
    with pytest.raises(ConnectionError):
        send_files(proxy.port, [path])
    wait_for(lambda: "TLS handshake failed (plaintext on the TLS port?)" in proxy.process.log(), timeout=10,
             what="the failed handshake in the log")

    def rejected_plaintext() -> bool:
        import requests

        metrics = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
        return 'reason="tls-plaintext"' in metrics
    wait_for(rejected_plaintext, timeout=15, what="synthiq_associations_rejected{reason=tls-plaintext}")


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes ``sock`` within ``seconds`` (reads until EOF or a reset)."""
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_tls_client_certificates_versions_handshake_deadline_and_pending_bound(cluster, tmp_path, event_loop):
    """The handshake is done by the event loop from the first byte, while the connection counts
    as pending: DCMTK senders whose ClientHello is already waiting at the accept get through;
    a client without a certificate (required here) or offering only TLS 1.1 is refused; the
    connect-to-AC deadline ends a handshake left half-way; the per-address pending bound holds
    for connections still shaking hands. On both event loops runproxy can run on."""
    pki = _pki(tmp_path)
    pacs_port, _ = start_storescp(cluster, name="pacs", ae_title="PACS")
    config = cluster.config(
        [{"Id": "pacs", "AeTitle": "PACS", "Host": "127.0.0.1", "Port": pacs_port,
          "Health": {"Mode": "liveness", "Probe": "tcp"}}],
        pool={"Tls": {"Certificate": pki["proxy.pem"], "Key": pki["proxy.key"], "CA": pki["ca.pem"],
                      "RequireClientCertificate": True}},
        Network={"HandshakeTimeoutSeconds": 1.5, "MaxPendingPerAddress": 8},
    )
    proxy = cluster.proxy(config, http=True, extra_args=["--event-loop", event_loop])
    wait_for(lambda: f"serving on {event_loop}'s event loop" in proxy.process.log(), timeout=10, what="the loop named")
    _, paths = write_study(tmp_path / "s", count=6)
    storescu = require_tool("storescu", "dcmtk")
    senders = [subprocess.Popen([storescu, "-aec", "SYNTHIQ", "-aet", f"CT{i}", "+tls", pki["pacs.key"],
                                 pki["pacs.pem"], "+cf", pki["ca.pem"], "127.0.0.1", str(proxy.port), str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for i, path in enumerate(paths)]
    outputs = [s.communicate(timeout=30)[0] for s in senders]
    assert [s.returncode for s in senders] == [0] * len(senders), outputs
    assert len(wait_for(lambda: len(list((cluster.tmp / "pacs").iterdir())) == 6 or None, timeout=10,
                        what="the six instances at the backend") and list((cluster.tmp / "pacs").iterdir())) == 6

    no_certificate = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca.pem"])
    old = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=pki["ca.pem"])
    old.load_cert_chain(pki["pacs.pem"], pki["pacs.key"])
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    for ctx in (no_certificate, old):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    tls.sendall(b"\x01")  # TLS 1.3 reports a refused client certificate on the first exchange
                    if not tls.recv(1):
                        raise ConnectionError("closed")
    wait_for(lambda: "TLS handshake failed" in proxy.process.log(), timeout=10, what="the refusals in the log")
    # Both refusals counted: their connections have left the pending ones.
    wait_for(lambda: _rejected(proxy, "tls-handshake") == 2, timeout=10, what="the two refusals counted")

    # Eight connections still shaking hands from one address: one sent half a ClientHello, the
    # others nothing. A ninth is closed at once (MaxPendingPerAddress 8); the eight are ended by
    # the deadline, 1.5 s after their accept.
    waiting = [socket.create_connection(("127.0.0.1", proxy.port)) for _ in range(8)]
    waiting[0].sendall(bytes.fromhex("16030100c8010000c40303"))
    time.sleep(0.3)
    ninth = socket.create_connection(("127.0.0.1", proxy.port))
    try:
        assert _closed_within(ninth, 1.0), "a ninth pending connection from one address was kept"
        started = time.monotonic()
        assert all(_closed_within(sock, 5.0) for sock in waiting)
        assert time.monotonic() - started < 3.0
    finally:
        for sock in (*waiting, ninth):
            sock.close()
    # Counted by reason (logged once a minute): the two refused clients and the eight expired.
    wait_for(lambda: _rejected(proxy, "tls-handshake") == 10, timeout=10,
             what="10 in synthiq_associations_rejected{reason=tls-handshake}")


def _rejected(proxy, reason: str) -> float:
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{proxy.http_port}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "synthiq_associations_rejected_total" and sample.labels.get("reason") == reason)
