"""DICOM TLS on the inbound listener and on outbound connections (DCMTK's storescp +tls)."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

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
