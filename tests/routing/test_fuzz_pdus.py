"""Property-based fuzzing of the PDU grammar against a running runproxy (hypothesis).

Each example opens a connection and sends a sequence the strategies build: a valid
A-ASSOCIATE-RQ or a broken one, then PDUs of any type with wrong lengths, PDVs on
contexts never accepted or mixed within a message, command and data fragments out of
order, messages split across PDVs, release requests in odd places, huge announced item
lengths, truncations. Throughout, a legitimate sender stores an instance every half
second and every one must succeed; at the end runproxy is still up and within its
memory bound. `make chaos` runs 10,000 examples (SYNTHIQ_FUZZ_EXAMPLES), `make test` a
few hundred.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from routing.dicom import commands
from routing.simulators.synthetic import write_study
from tests.harness import send_files

EXAMPLES = int(os.environ.get("SYNTHIQ_FUZZ_EXAMPLES", "200"))

pytestmark = pytest.mark.campaign
CT = "1.2.840.10008.5.1.4.1.1.2"


def _associate_rq(called: str = "SYNTHIQ", contexts: int = 2) -> bytes:
    p = A_ASSOCIATE()
    p.application_context_name = "1.2.840.10008.3.1.1.1"
    p.calling_ae_title, p.called_ae_title = "FUZZER", called
    items = []
    for n in range(contexts):
        cx = build_context(CT if n else "1.2.840.10008.1.1", "1.2.840.10008.1.2.1")
        cx.context_id = 2 * n + 1
        items.append(cx)
    p.presentation_context_definition_list = items
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    p.user_information = [length]
    return A_ASSOCIATE_RQ(p).encode()


STORE_RQ = commands.encode({commands.AFFECTED_SOP_CLASS_UID: CT, commands.COMMAND_FIELD: commands.C_STORE_RQ,
                            commands.MESSAGE_ID: 1, commands.PRIORITY: 0, commands.DATA_SET_TYPE: 0,
                            commands.AFFECTED_SOP_INSTANCE_UID: "1.2.3"})
ECHO_RQ = commands.encode({commands.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.1.1",
                           commands.COMMAND_FIELD: commands.C_ECHO_RQ, commands.MESSAGE_ID: 2,
                           commands.DATA_SET_TYPE: commands.NO_DATA_SET})


def _pdu(kind: int, body: bytes, announced: int | None = None) -> bytes:
    return struct.pack(">BxL", kind, len(body) if announced is None else announced) + body


def _pdv(context: int, control: int, data: bytes, announced: int | None = None) -> bytes:
    return struct.pack(">LBB", len(data) + 2 if announced is None else announced, context, control) + data


pdvs = st.builds(
    _pdv,
    context=st.sampled_from([1, 3, 5, 2, 255, 0]),
    control=st.integers(0, 255),
    data=st.one_of(st.binary(max_size=64), st.just(STORE_RQ), st.just(ECHO_RQ), st.binary(max_size=300)),
    announced=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)
p_data = st.lists(pdvs, min_size=0, max_size=4).map(b"".join).flatmap(
    lambda body: st.builds(_pdu, st.just(4), st.just(body), st.one_of(st.none(), st.integers(0, 2**32 - 1))))
other_pdus = st.builds(_pdu, kind=st.integers(0, 255), body=st.binary(max_size=200),
                       announced=st.one_of(st.none(), st.integers(0, 2**32 - 1)))
release = st.just(_pdu(5, b"\x00" * 4))
openings = st.one_of(
    st.just(_associate_rq()),
    st.just(_associate_rq(contexts=1)),
    st.just(_associate_rq(called="WRONG")),
    st.binary(max_size=100),
    st.builds(lambda rq, n: rq[:n], st.just(_associate_rq()), st.integers(0, 60)),  # truncated
)
sequences = st.tuples(openings, st.lists(st.one_of(p_data, other_pdus, release), max_size=6),
                      st.booleans())


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_pdu_sequences_of_any_shape_never_take_runproxy_down(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], Network={"HandshakeTimeoutSeconds": 2,
                                                              "NetworkTimeoutSeconds": 5}))
    suid, files = write_study(tmp_path / "legit", count=1)
    legit: list[int] = []
    stop = threading.Event()

    def legitimate() -> None:
        while not stop.wait(0.5):
            legit.extend(s.status for s in send_files(proxy.port, files, calling_ae="LEGIT"))

    sender = threading.Thread(target=legitimate, daemon=True)
    sender.start()
    cases = {"n": 0}

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(sequences)
    def one(sequence: tuple[bytes, list[bytes], bool]) -> None:
        opening, pdus, wait_for_answer = sequence
        cases["n"] += 1
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            try:
                sock.sendall(opening)
                if wait_for_answer:
                    sock.settimeout(1)
                    sock.recv(65536)
                for data in pdus:
                    sock.sendall(data)
            except OSError:
                pass  # runproxy closed it: the right answer to most of these

    try:
        one()
    finally:
        stop.set()
        sender.join(timeout=30)
    assert proxy.process.proc.poll() is None, "runproxy exited"
    assert send_files(proxy.port, files)[0].status == 0
    assert legit and all(s == 0 for s in legit), f"a legitimate store failed during fuzzing: {legit}"
    peak = _rss_mb(proxy.process.proc.pid)
    print(f"{cases['n']} fuzz cases; {len(legit)} legitimate stores all succeeded; runproxy RSS {peak:.0f} MB")
    assert peak < 200
    assert "Traceback" not in proxy.process.log() and "unexpected error" not in proxy.process.log()

