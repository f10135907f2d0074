"""Socket reads for pynetdicom associations: bounded and fast.

pynetdicom reads a PDU's 32-bit length and then that many bytes, 4 KiB per recv() and
with no cap, so a peer announcing a 4 GB PDU makes the process buffer whatever it sends.
``install()`` replaces ``AssociationSocket.recv`` (process-wide, like pynetdicom's own
``_config`` flags) with one that refuses PDUs over a limit and reads straight into a
preallocated buffer. A refused read raises OSError, which pynetdicom treats as the
connection closing (its Evt17), so the association ends cleanly.
"""

from __future__ import annotations

import logging

from pynetdicom.transport import AssociationSocket

logger = logging.getLogger("synthiq.routing")

# Far above any PDU a conformant peer sends us (P-DATA is capped by the max PDU length we
# advertise; an A-ASSOCIATE-RQ with 128 contexts is a few tens of KB).
MAX_PDU_BYTES = 16 * 1024 * 1024

_original_recv = AssociationSocket.recv


def _recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    if nr_bytes > MAX_PDU_BYTES:
        peer = getattr(self, "_address", None) or getattr(self.assoc.requestor, "address", "?")
        logger.error(
            "peer %s announced a %d-byte PDU (limit %d): connection closed", peer, nr_bytes, MAX_PDU_BYTES
        )
        raise OSError(f"PDU of {nr_bytes} bytes exceeds the {MAX_PDU_BYTES}-byte limit")
    buf = bytearray(nr_bytes)
    view = memoryview(buf)
    got = 0
    sock = self.socket
    while got < nr_bytes:
        n = sock.recv_into(view[got:], nr_bytes - got)
        if not n:  # the peer closed: return what arrived, as pynetdicom expects
            del view
            return buf[:got]
        got += n
    return buf


def install() -> None:
    AssociationSocket.recv = _recv  # type: ignore[method-assign]
