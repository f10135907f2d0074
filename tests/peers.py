"""Deliberately misbehaving DICOM peers for fault injection, on raw sockets.

Real peers (DCMTK, Orthanc, pynetdicom) behave; these do what a broken modality or PACS
does on purpose: a backend that never answers A-RELEASE-RQ, a modality that aborts in
the middle of an instance. PDUs are built with pynetdicom's PDU classes and SynthIQ's
own PDV and command-set helpers.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from routing.dicom import commands, negotiation, pdu


def read_pdu(sock: socket.socket, buffer: pdu.PduBuffer) -> pdu.Pdu | None:
    """The next PDU from ``sock``; None when the peer closed."""
    while (got := buffer.next()) is None:
        data = sock.recv(65536)
        if not data:
            return None
        buffer.feed(data)
    return got


@dataclass
class SilentReleaseBackend:
    """Accepts any association, answers every C-STORE with Success, and never answers
    A-RELEASE-RQ, except from the calling AE titles in ``answer_release_for`` (runproxy's
    start-up probe calls with the pool's own). Records what it saw ("release-rq",
    "abort", "closed")."""

    ae_title: str = "SILENT"
    answer_release_for: tuple[str, ...] = ()
    port: int = 0
    seen: list[str] = field(default_factory=list)
    stores: int = 0

    def start(self) -> SilentReleaseBackend:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.close()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._association, args=(conn,), daemon=True).start()

    def _association(self, conn: socket.socket) -> None:
        buffer = pdu.PduBuffer(max_length=1 << 24)
        with conn:
            got = read_pdu(conn, buffer)
            if got is None or got.type != pdu.A_ASSOCIATE_RQ:
                return
            rq = negotiation.decode_associate_rq(got.raw)
            accepted = negotiation.accept(rq, ae_title=self.ae_title, max_pdu=65536)
            conn.sendall(accepted.pdu)
            parts: list[bytes] = []
            while (got := read_pdu(conn, buffer)) is not None:
                if got.type == pdu.A_RELEASE_RQ_TYPE:
                    if rq.calling_ae in self.answer_release_for:
                        conn.sendall(pdu.release_rp())
                        return
                    self.seen.append("release-rq")  # ... and say nothing
                    continue
                if got.type == pdu.A_ABORT:
                    self.seen.append("abort")
                    return
                for pdv in pdu.pdvs(got):
                    if pdv.is_command:
                        parts.append(bytes(pdv.data))
                        if pdv.is_last:
                            request = commands.decode(b"".join(parts))
                            parts = []
                    elif pdv.is_last:  # the data set is complete: answer Success
                        self.stores += 1
                        rsp = commands.response(request, 0x0000)
                        conn.sendall(pdu.pdata(pdv.context_id, pdu.MCH_COMMAND | pdu.MCH_LAST, rsp))
            self.seen.append("closed")


def associate(port: int, *, called_ae: str, calling_ae: str, contexts: list[tuple[str, str]],
              max_pdu: int = 16384) -> tuple[socket.socket, pdu.PduBuffer, int]:
    """A raw association to ``port`` (A-ASSOCIATE-RQ by pynetdicom's PDU class); returns
    the socket, its PDU buffer and the peer's max PDU. Raises ConnectionError if rejected."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = negotiation.APPLICATION_CONTEXT
    primitive.calling_ae_title, primitive.called_ae_title = calling_ae, called_ae
    proposed = []
    for n, (abstract, syntax) in enumerate(contexts):
        cx = build_context(abstract, syntax)
        cx.context_id = 2 * n + 1
        proposed.append(cx)
    primitive.presentation_context_definition_list = proposed
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    primitive.user_information = [length]
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(A_ASSOCIATE_RQ(primitive).encode())
    buffer = pdu.PduBuffer(max_length=1 << 20)
    got = read_pdu(sock, buffer)
    if got is None or got.type != pdu.A_ASSOCIATE_AC:
        sock.close()
        raise ConnectionError(f"association not accepted: {None if got is None else got.type}")
    return sock, buffer, negotiation.decode_associate_ac(got.raw).max_pdu
