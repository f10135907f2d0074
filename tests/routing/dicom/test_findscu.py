"""SynthIQ's own C-FIND client (routing.dicom.findscu) against real peers over loopback: a
pynetdicom C-FIND SCP (answers, a cap, a failure, a cancel, a rejection) and raw sockets that
misbehave (an oversized PDU, silence). Every failure is an Unreachable naming the backend."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from routing.dicom import findscu, identifiers, sop_classes
from routing.dicom.scu import Peer, Unreachable
from tests.harness import free_port

STUDY_UID, STUDY_DATE, COUNT = 0x0020000D, 0x00080020, 0x00201208
QUERY = [(0x00080052, "CS", "STUDY"), (STUDY_DATE, "DA", ""), (STUDY_UID, "UI", ""), (COUNT, "IS", "")]
WANTED = frozenset({STUDY_UID, STUDY_DATE, COUNT})


class Scp:
    """A pynetdicom C-FIND SCP answering ``matches`` studies, then ``final``."""

    def __init__(self, matches: int, final: int = 0x0000, *, require_calling: str = ""):
        self.matches, self.final = matches, final
        self.cancelled = threading.Event()
        self.asked: list[Dataset] = []
        ae = AE(ae_title="FINDSCP")
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        if require_calling:
            ae.require_calling_aet = [require_calling]
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_FIND, self.handle)])

    def handle(self, event):
        self.asked.append(event.identifier)
        for n in range(self.matches):
            if event.is_cancelled:
                self.cancelled.set()
                yield 0xFE00, None
                return
            ds = Dataset()
            ds.QueryRetrieveLevel = "STUDY"
            ds.StudyDate = "20240101"
            ds.StudyInstanceUID = f"1.2.3.{n}"
            ds.NumberOfStudyRelatedInstances = str(n)
            yield 0xFF00, ds
            time.sleep(0.002)
        yield self.final, None

    def peer(self) -> Peer:
        return Peer("node-x", "FINDSCP", "127.0.0.1", self.port)


@pytest.fixture
def scp_factory():
    made: list[Scp] = []

    def make(*args, **kwargs) -> Scp:
        made.append(Scp(*args, **kwargs))
        return made[-1]
    yield make
    for scp in made:
        scp.server.shutdown()


def _find(peer: Peer, timeout: float = 10.0):
    return findscu.find(peer, calling_ae="SYNTHIQ", model=sop_classes.STUDY_ROOT_FIND, query=QUERY, wanted=WANTED,
                        timeout=timeout)


def test_each_pending_identifier_is_read_with_the_keys_asked_for_then_the_final_status(scp_factory):
    scp = scp_factory(3)
    responses = list(_find(scp.peer()))
    assert [(r.status, r.values) for r in responses] == [
        (0xFF00, {STUDY_UID: f"1.2.3.{n}", STUDY_DATE: "20240101", COUNT: str(n)}) for n in range(3)] + [(0, {})]
    [asked] = scp.asked
    assert (asked.QueryRetrieveLevel, asked.StudyDate, asked.StudyInstanceUID) == ("STUDY", "", "")


def test_a_cap_and_a_failure_end_the_search_with_their_status(scp_factory):
    assert [r.status for r in _find(scp_factory(2, 0xFE00).peer())][-1] == 0xFE00
    assert [r.status for r in _find(scp_factory(1, 0xA700).peer())] == [0xFF00, 0xA700]


def test_a_caller_that_stops_reading_cancels_the_search(scp_factory):
    scp = scp_factory(5000)
    responses = _find(scp.peer())
    assert next(responses).status == 0xFF00
    responses.close()  # C-CANCEL, read to the final response, release
    assert scp.cancelled.wait(10)


def test_a_rejected_association_says_so_and_names_the_backend(scp_factory):
    scp = scp_factory(1, require_calling="SOMEONE")
    with pytest.raises(Unreachable, match=r"node-x .*rejected the association") as caught:
        list(_find(scp.peer()))
    assert caught.value.rejected


def _raw_peer(answer: bytes | None) -> tuple[Peer, socket.socket]:
    """A TCP listener that reads the A-ASSOCIATE-RQ and sends ``answer`` (None: nothing)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            if answer is not None:
                conn.sendall(answer)
            time.sleep(3)
    threading.Thread(target=serve, daemon=True).start()
    return Peer("node-raw", "RAW", "127.0.0.1", listener.getsockname()[1]), listener


def test_an_oversized_pdu_is_refused_before_it_is_read():
    peer, listener = _raw_peer(struct.pack(">BxL", 0x02, 16 * 1024 * 1024) + b"\x00" * 10)
    with listener, pytest.raises(Unreachable, match=r"node-raw .*announced a 16777216-byte PDU"):
        list(_find(peer))


def test_a_silent_backend_times_out():
    peer, listener = _raw_peer(None)
    started = time.monotonic()
    with listener, pytest.raises(Unreachable, match=r"node-raw .*no answer within 0.5 s"):
        list(_find(peer, timeout=0.5))
    assert time.monotonic() - started < 3


def test_the_identifier_decoder_reads_only_what_was_asked_and_refuses_what_it_cannot_follow():
    for implicit in (True, False):
        data = identifiers.encode([(STUDY_UID, "UI", "1.2.3"), (0x00100010, "PN", "X"), (COUNT, "IS", "7")],
                                  implicit=implicit)
        assert identifiers.decode(data, frozenset({STUDY_UID}), implicit=implicit) == {STUDY_UID: "1.2.3"}
    overrun = struct.pack("<HH2sH", 0x0020, 0x1208, b"IS", 100) + b"7 "  # says 100 bytes, has 2
    with pytest.raises(identifiers.IdentifierError, match="overruns"):
        identifiers.decode(overrun, frozenset({COUNT}), implicit=False)
    undefined = struct.pack("<HH2s2xL", 0x0008, 0x1115, b"SQ", 0xFFFFFFFF)
    with pytest.raises(identifiers.IdentifierError, match="undefined length"):
        identifiers.decode(undefined, frozenset({STUDY_UID}), implicit=False)


def test_a_backend_behind_mutual_tls_is_asked_over_tls(tmp_path):
    """A backend with ``Tls`` (its CA, SynthIQ's client certificate) is asked over TLS, the
    certificate presented; the same backend asked in plain TCP gives an Unreachable."""
    import ssl

    from routing.dicom.netopts import ClientTls
    from tests.routing.test_tls import _pki

    pki = _pki(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(pki["pacs.pem"], pki["pacs.key"])
    server_ctx.load_verify_locations(pki["ca.pem"])
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, as many PACS want
    scp = Scp(2)
    scp.server.shutdown()
    ae = AE(ae_title="FINDSCP")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    scp.server = ae.start_server(("127.0.0.1", scp.port), block=False, ssl_context=server_ctx,
                                 evt_handlers=[(evt.EVT_C_FIND, scp.handle)])
    try:
        tls = ClientTls(ca=pki["ca.pem"], certificate=pki["proxy.pem"], key=pki["proxy.key"])
        peer = Peer("node-tls", "FINDSCP", "127.0.0.1", scp.port, tls)
        assert [r.status for r in _find(peer)] == [0xFF00, 0xFF00, 0x0000]
        with pytest.raises(Unreachable, match="node-tls"):
            list(_find(Peer("node-tls", "FINDSCP", "127.0.0.1", scp.port), timeout=3))
    finally:
        scp.server.shutdown()
