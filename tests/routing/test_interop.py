"""The interop matrix: real senders × real backends through runproxy.

Senders: pynetdicom (the file's own transfer syntax, its bytes as they are on disk),
DCMTK's storescu with its proposal options, DCMTK's dcmsend, DCMTK's echoscu, GDCM's
gdcmscu, and Orthanc's own C-STORE SCU. Backends: DCMTK's storescp (+B, every syntax it knows), Orthanc, the
pynetdicom backend, and two with awkward max PDUs (storescp at 4096, pynetdicom announcing 0).
Cases: every transfer syntax pydicom's test files carry, a private SOP class, a modality
announcing a 4 KiB max PDU.

Each backend kind runs twice: one twin behind SynthIQ, one sent to directly. A cell passes
when the sender sees the same outcome through SynthIQ as direct and the twin behind SynthIQ
holds the same data set bytes as the twin sent to directly; where the backend keeps the bytes
it received (storescp +B, the pynetdicom backend) and the sender sends the file's own bytes
(pynetdicom), those bytes must also be the file's. So a refusal by the backend itself (DCMTK's
storescp refuses odd-length fragments of a deflated stream, and SOP classes it does not know)
is a pass when SynthIQ returns it just as a direct send does; a backend abort reaches the
sender as 0xA702, as the relay promises. The table is written to bench/results/interop.md
(docs/reliability.md carries it); `make interop` runs this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.harness import (
    ROOT,
    Cluster,
    OrthancHandle,
    clean_database,
    dataset_digest,
    free_port,
    require_tool,
    send_files,
    start_orthanc,
    start_storescp,
)

pytestmark = pytest.mark.slow

SYNTAXES = {
    "Explicit VR LE": "CT_small.dcm",
    "Implicit VR LE": "MR_small_implicit.dcm",
    "Explicit VR BE": "MR_small_bigendian.dcm",
    "Deflated": "image_dfl.dcm",
    "JPEG baseline": "SC_rgb_jpeg_dcmtk.dcm",
    "JPEG extended": "JPGExtended.dcm",
    "JPEG lossless SV1": "SC_rgb_jpeg_gdcm.dcm",
    "JPEG-LS lossless": "MR_small_jpeg_ls_lossless.dcm",
    "JPEG 2000 lossless": "MR_small_jp2klossless.dcm",
    "JPEG 2000": "JPEG2000.dcm",
    "RLE": "MR_small_RLE.dcm",
}
# `make interop` (SYNTHIQ_INTEROP=full) sends pynetdicom's file of every syntax; `make test` a
# few of them (dcmsend sends all eleven files to every backend there as well; the Deflated cells
# wait out Orthanc's silence direct, a minute, so they run in `make interop` only).
FULL = os.environ.get("SYNTHIQ_INTEROP") == "full"
PER_SYNTAX = SYNTAXES if FULL else {k: SYNTAXES[k] for k in ("Explicit VR LE", "Explicit VR BE",
                                                            "JPEG 2000 lossless")}
BACKENDS = ("storescp", "orthanc", "pynetdicom")
AWKWARD = ("storescp max PDU 4096", "pynetdicom max PDU 0")
RESULTS: dict[tuple[str, str, str], str] = {}
HEALTH = {"Mode": "liveness", "Probe": "tcp"}


@dataclass
class Twin:
    """One backend kind started twice: `via` sits behind SynthIQ, `direct` is sent to straight."""

    name: str  # the column in the table; the backend's Id in its pool is backend["Id"]
    keeps_bytes: bool
    direct_port: int
    held: Callable[[str, str], str | None]  # (twin, SOP Instance UID) -> data set digest
    clear: Callable[[], None]
    backend: dict[str, Any]  # the `via` twin's entry in the pool
    proxy_port: int = 0


def _storescp_twin(cluster: Cluster, label: str, name: str, extra: list[str]) -> Twin:
    ports = {twin: start_storescp(cluster, name=f"{name}-{twin}", ae_title="STORESCP", extra=extra)[0]
             for twin in ("via", "direct")}

    def held(twin: str, sop: str) -> str | None:
        for path in (cluster.tmp / f"{name}-{twin}").iterdir():
            if dcmread(path, stop_before_pixels=True).SOPInstanceUID == sop:
                return dataset_digest(path)
        return None

    def clear() -> None:
        for twin in ports:
            for path in (cluster.tmp / f"{name}-{twin}").iterdir():
                path.unlink()

    backend = {"Id": name, "AeTitle": "STORESCP", "Host": "127.0.0.1", "Port": ports["via"], "Health": HEALTH}
    return Twin(label, True, ports["direct"], held, clear, backend)


def _orthanc_twin(cluster: Cluster) -> Twin:
    nodes = {twin: start_orthanc(cluster, name=f"orthanc-{twin}", DicomAet="ORTHANC") for twin in ("via", "direct")}

    def held(twin: str, sop: str) -> str | None:
        node = nodes[twin]
        found = requests.post(f"{node.url}/tools/lookup", data=sop, timeout=10).json()
        if not found:
            return None
        copy = cluster.tmp / f"orthanc-{twin}-{sop}.dcm"
        copy.write_bytes(requests.get(f"{node.url}/instances/{found[0]['ID']}/file", timeout=30).content)
        return dataset_digest(copy)

    def clear() -> None:
        for node in nodes.values():
            for instance in node.rest("GET", "/instances"):
                node.rest("DELETE", f"/instances/{instance}")

    backend = {"Id": "orthanc", "AeTitle": "ORTHANC", "Host": "127.0.0.1", "Port": nodes["via"].dicom_port,
               "Health": HEALTH}
    # Orthanc re-serialises what it receives, so it keeps no sender's bytes: compared twin to twin.
    return Twin("orthanc", False, nodes["direct"].dicom_port, held, clear, backend)


def _pynetdicom_twin(cluster: Cluster, label: str, name: str, **knobs: Any) -> Twin:
    nodes = {twin: cluster.backend(f"{name}-{twin}", **knobs) for twin in ("via", "direct")}

    def held(twin: str, sop: str) -> str | None:
        for sops in nodes[twin].holdings().values():
            if sop in sops:
                return sops[sop]
        return None

    def clear() -> None:
        for node in nodes.values():
            requests.delete(f"{node.url}/api/holdings", timeout=5).raise_for_status()

    backend = nodes["via"].config(Id=name, Health=HEALTH)
    return Twin(label, True, nodes["direct"].port, held, clear, backend)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """Every backend kind twice, and one runproxy with a pool in front of each `via` twin."""
    clean_database()
    cluster = Cluster(tmp=tmp_path_factory.mktemp("interop"), env=dict(os.environ))
    try:
        found = [
            _storescp_twin(cluster, "storescp", "storescp", ["+B", "+xa"]),
            _orthanc_twin(cluster),
            _pynetdicom_twin(cluster, "pynetdicom", "pynetdicom"),
            _storescp_twin(cluster, "storescp max PDU 4096", "storescp4k", ["+B", "+xa", "--max-pdu", "4096"]),
            _pynetdicom_twin(cluster, "pynetdicom max PDU 0", "pynetdicom0", max_pdu=0),
        ]
        kinds = {twin.name: twin for twin in found}
        # One runproxy, one pool per kind (pools sharing one database come from one config file).
        config = cluster.config([], HeartbeatTimeoutSeconds=600, Network={"MaxPduBytes": 1 << 20})
        config["Pools"] = []
        for twin in kinds.values():
            twin.proxy_port = free_port()
            config["Pools"].append({"Id": twin.backend["Id"], "AeTitle": "SYNTHIQ", "Host": "127.0.0.1",
                                    "Port": twin.proxy_port, "Backends": [twin.backend]})
        cluster.proxy(config)
        yield cluster, kinds
    finally:
        cluster.stop_all()
        _write_table()


Send = Callable[[int], str]  # port -> the outcome the sender saw: "success" or what went wrong


def _cell(twin: Twin, sender: str, case: str, send: Send, sources: list[Path], *, exact: bool) -> None:
    """Send direct and through SynthIQ; record and assert the cell."""
    twin.clear()
    direct, via = send(twin.direct_port), send(twin.proxy_port)
    sops = [dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources]
    held = {t: [twin.held(t, sop) for sop in sops] for t in ("direct", "via")}
    problems = []
    if (direct == "success") != (via == "success"):
        problems.append(f"direct: {direct}, through SynthIQ: {via}")
    if held["via"] != held["direct"]:
        problems.append("the twins hold different data sets")
    if exact and twin.keeps_bytes and via == "success" and held["via"] != [dataset_digest(p) for p in sources]:
        problems.append("the backend holds other bytes than the file's")
    if problems:
        outcome = "FAIL: " + "; ".join(problems)
    elif via == "success":
        outcome = "pass"
    else:
        outcome = f"pass (refused alike: direct {direct}; through SynthIQ {via})"
    RESULTS[(sender, twin.name, case)] = outcome
    assert not problems, f"{sender} → {twin.name}, {case}: {outcome}"


def _copy(name: str, folder: Path) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / name
    shutil.copy(get_testdata_file(name), path)
    return path


def _pynetdicom_send(paths: list[Path]) -> Send:
    def send(port: int) -> str:
        try:
            statuses = [s.status for s in send_files(port, paths)]
        except ConnectionError:  # e.g. every presentation context refused
            return "association not established"

        return "success" if set(statuses) == {0} else ", ".join(
            "no response" if s < 0 else f"0x{s:04X}" for s in statuses)
    return send


def _tool_send(argv: list[str], paths: list[Path], *, after: list[str] | None = None) -> Send:
    def send(port: int) -> str:
        result = subprocess.run([*argv, "127.0.0.1", str(port), *(after or [str(p) for p in paths])],
                                capture_output=True, text=True, timeout=60)
        if result.returncode == 0:
            return "success"
        errors = [line for line in result.stderr.splitlines() if line.startswith("E:")]
        return f"exit {result.returncode}" + (f" ({errors[-1][3:].strip()})" if errors else "")
    return send


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("syntax", PER_SYNTAX)
def test_pynetdicom_sender_each_syntax(twins, tmp_path, backend, syntax):
    _, kinds = twins
    path = _copy(SYNTAXES[syntax], tmp_path)
    _cell(kinds[backend], "pynetdicom", syntax, _pynetdicom_send([path]), [path], exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_private_sop_class(twins, tmp_path, backend):
    _, kinds = twins
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.3.6.1.4.1.9590.100.1.2.999"
    path = tmp_path / "private.dcm"
    ds.save_as(path, enforce_file_format=True)
    _cell(kinds[backend], "pynetdicom", "private SOP class", _pynetdicom_send([path]), [path], exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option", ["(default)", "-xe", "-xb", "-xi", "+sd"])
def test_storescu_proposals_for_uncompressed_files(twins, tmp_path, backend, option):
    _, kinds = twins
    storescu = require_tool("storescu", "dcmtk")
    folder = tmp_path / "files"
    paths = [_copy(SYNTAXES[s], folder) for s in ("Explicit VR LE", "Implicit VR LE", "Explicit VR BE")]
    argv = [storescu, "-aet", "STORESCU", "-aec", "SYNTHIQ"] + ([option] if option.startswith("-x") else [])
    after = ["+sd", str(folder)] if option == "+sd" else None
    _cell(kinds[backend], f"storescu {option}", "3 uncompressed files", _tool_send(argv, paths, after=after),
          paths, exact=False)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("option, syntax", [("-xs", "JPEG lossless SV1"), ("-xy", "JPEG baseline"),
                                            ("-xv", "JPEG 2000 lossless"), ("-xr", "RLE")])
def test_storescu_proposing_a_compressed_syntax(twins, tmp_path, backend, option, syntax):
    _, kinds = twins
    storescu = require_tool("storescu", "dcmtk")
    path = _copy(SYNTAXES[syntax], tmp_path)
    argv = [storescu, option, "-aet", "STORESCU", "-aec", "SYNTHIQ"]
    _cell(kinds[backend], f"storescu {option}", syntax, _tool_send(argv, [path]), [path], exact=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dcmsend_every_syntax(twins, tmp_path, backend):
    """dcmsend proposes each file's own syntax (and decompresses where it must): one association."""
    _, kinds = twins
    dcmsend = require_tool("dcmsend", "dcmtk")
    paths = [_copy(name, tmp_path / "files") for name in SYNTAXES.values()]
    argv = [dcmsend, "-aet", "DCMSEND", "-aec", "SYNTHIQ", "--no-halt"]
    _cell(kinds[backend], "dcmsend", f"{len(paths)} files, every syntax", _tool_send(argv, paths), paths,
          exact=False)


def _gdcm_send(paths: list[Path]) -> Send:
    """GDCM's gdcmscu, one file per association. Debian's GDCM 3.0.21 aborts at the end of
    every association it closes (`ProtocolStream as nullptr is invalid`, exit 134, direct as
    well), so the outcome is read from its own per-file report, not its exit code."""
    gdcmscu = require_tool("gdcmscu", "libgdcm-tools")

    def send(port: int) -> str:
        failed = []
        for path in paths:
            result = subprocess.run([gdcmscu, "-D", "--store", "--call", "SYNTHIQ", "--aetitle", "GDCMSCU",
                                     "127.0.0.1", str(port), "-i", str(path)],
                                    capture_output=True, text=True, timeout=60)
            if f"C-Store of file {path} was successful" not in result.stdout + result.stderr:
                failed.append(path.name)
        return "success" if not failed else f"not stored: {', '.join(failed)}"
    return send


@pytest.mark.parametrize("backend", BACKENDS)
def test_gdcmscu_stores(twins, tmp_path, backend):
    _, kinds = twins
    paths = [_copy(name, tmp_path) for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_jp2klossless.dcm")]
    _cell(kinds[backend], "gdcmscu", "CT, MR, MR JPEG 2000 lossless", _gdcm_send(paths), paths, exact=False)


@pytest.mark.parametrize("backend", AWKWARD)
@pytest.mark.parametrize("sender", ["pynetdicom", "storescu"])
def test_a_backend_with_an_awkward_max_pdu(twins, tmp_path, backend, sender):
    _, kinds = twins
    paths = [_copy(name, tmp_path) for name in ("CT_small.dcm", "MR_small_jp2klossless.dcm")]
    if sender == "storescu":
        storescu = require_tool("storescu", "dcmtk")
        send = _tool_send([storescu, "-aec", "SYNTHIQ", "--max-pdu", "131072"], paths[:1])
        _cell(kinds[backend], "storescu", "CT, modality max PDU 128 KiB", send, paths[:1], exact=False)
    else:
        _cell(kinds[backend], "pynetdicom", "CT + JPEG 2000", _pynetdicom_send(paths), paths, exact=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_modality_announcing_a_4k_max_pdu(twins, tmp_path, backend):
    _, kinds = twins
    storescu = require_tool("storescu", "dcmtk")
    path = _copy("CT_small.dcm", tmp_path)
    send = _tool_send([storescu, "-aec", "SYNTHIQ", "--max-pdu", "4096"], [path])
    _cell(kinds[backend], "storescu --max-pdu 4096", "CT", send, [path], exact=False)


def test_echoscu_is_answered(twins):
    _, kinds = twins
    echoscu = require_tool("echoscu", "dcmtk")
    for name, twin in kinds.items():
        result = subprocess.run([echoscu, "-aec", "SYNTHIQ", "127.0.0.1", str(twin.proxy_port)],
                                capture_output=True, text=True, timeout=30)
        RESULTS[("echoscu", name, "C-ECHO")] = "pass" if result.returncode == 0 else "FAIL"
        assert result.returncode == 0, result.stderr


def test_orthanc_as_a_sender(twins):
    """Orthanc's own C-STORE SCU (POST /modalities/{id}/store), through SynthIQ and direct."""
    cluster, kinds = twins
    twin = kinds["pynetdicom"]
    sender: OrthancHandle = start_orthanc(cluster, name="orthanc-sender", DicomAet="ORTHSEND", DicomModalities={
        "synthiq": ["SYNTHIQ", "127.0.0.1", twin.proxy_port],
        "direct": ["PYNETDICOMDIREC", "127.0.0.1", twin.direct_port]})
    paths = [Path(get_testdata_file(SYNTAXES[s])) for s in ("Explicit VR LE", "JPEG 2000 lossless", "RLE")]
    ids = [requests.post(f"{sender.url}/instances", data=p.read_bytes(), timeout=30).json()["ID"] for p in paths]
    ports = {twin.proxy_port: "synthiq", twin.direct_port: "direct"}

    def send(port: int) -> str:
        job = requests.post(f"{sender.url}/modalities/{ports[port]}/store", json={"Resources": ids}, timeout=60)
        return "success" if job.ok else f"HTTP {job.status_code}: {job.text[:200]}"

    _cell(twin, "Orthanc", "3 files", send, paths, exact=False)


def _write_table() -> None:
    if not RESULTS:
        return
    columns = BACKENDS + AWKWARD
    lines = ["| sender | case | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for sender in sorted({s for s, _, _ in RESULTS}):
        for case in sorted({c for s, _, c in RESULTS if s == sender}):
            cells = [RESULTS.get((sender, b, case), "–") for b in columns]
            lines.append(f"| {sender} | {case} | " + " | ".join(cells) + " |")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "interop.md").write_text("\n".join(lines) + "\n")
    (out / "interop.json").write_text(json.dumps({" / ".join(k): v for k, v in sorted(RESULTS.items())}, indent=1))
