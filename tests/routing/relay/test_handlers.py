"""The DIMSE handlers' decisions, driven byte by byte through a real InboundAssociation.

No socket and no process: the association's connection is given an in-memory transport, the
modality's PDUs are fed to it as bytes, and what SynthIQ writes back is read as PDUs and
command sets. Every decision here is taken before any routing: the placement refuses to
be asked, so a test that reached a backend would fail.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable

import pytest
from pydicom import uid
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import build_context

from routing.dicom import commands, negotiation, pdu, status
from routing.relay.connection import PduConnection
from routing.relay.context import Context
from routing.relay.handlers import HANDLERS, Service
from routing.relay.inbound import InboundAssociation
from routing.relay.server import NetworkSettings, PoolListener, PoolOffer, Relay
from routing.relay.stream import COMMAND_LIMIT
from routing.telemetry import Telemetry

# UIDs that are no UIDs, a value longer than its VR allows: the point of some cases; pydicom warns as it writes them.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
              pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length")]

CT = "1.2.840.10008.5.1.4.1.1.2"
MPPS = "1.2.840.10008.3.1.2.3.3"  # Modality Performed Procedure Step: an N-CREATE/N-SET service
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STORAGE_COMMITMENT = "1.2.840.10008.1.20.1"
VERIFICATION_CONTEXT, CT_CONTEXT, MPPS_CONTEXT, FIND_CONTEXT, COMMITMENT_CONTEXT = 1, 3, 5, 7, 9
NETWORK = NetworkSettings(
    acse_timeout_seconds=5, dimse_timeout_seconds=5, network_timeout_seconds=5, connect_timeout_seconds=5,
    max_associations=10, max_associations_per_address=None, idle_timeout_seconds=5, max_pdu_bytes=65536,
    handshake_timeout_seconds=5, max_pending_associations=10, max_pending_per_address=10,
    release_timeout_seconds=1, outbound_idle_seconds=5, header_hold_bytes=64 * 1024, bound_backend_hold_seconds=0,
    max_held_associations=0)


class MemoryTransport(asyncio.Transport):
    """A transport whose peer is the test: what SynthIQ writes is kept to be read back."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("192.0.2.7", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class NoRouting:
    """The placement of a relay whose every decision must come before routing."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the placement was asked ({name}): the decision should not need a backend")


def _associate_rq() -> bytes:
    p = A_ASSOCIATE()
    p.application_context_name = negotiation.APPLICATION_CONTEXT
    p.calling_ae_title, p.called_ae_title = "CT01", "SYNTHIQ"
    contexts = []
    for context_id, abstract in ((VERIFICATION_CONTEXT, negotiation.VERIFICATION), (CT_CONTEXT, CT),
                                 (MPPS_CONTEXT, MPPS), (FIND_CONTEXT, STUDY_ROOT_FIND),
                                 (COMMITMENT_CONTEXT, STORAGE_COMMITMENT)):
        cx = build_context(abstract, [uid.ImplicitVRLittleEndian])
        cx.context_id = context_id
        contexts.append(cx)
    p.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16384
    p.user_information = [length]
    return bytes(A_ASSOCIATE_RQ(p).encode())


def _data_set(**elements: str) -> bytes:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, ds)
    return bytes(buffer.getvalue())


def _request(field: int, sop_class: str, *, message_id: int = 7, has_data_set: bool = False,
             instance: str | None = None) -> bytes:
    normalized = field in (commands.N_ACTION_RQ, commands.N_GET_RQ)  # they name the Requested SOP, not the Affected
    elements: dict[int, int | str | bytes | list[int]] = {
        commands.REQUESTED_SOP_CLASS_UID if normalized else commands.AFFECTED_SOP_CLASS_UID: sop_class,
        commands.COMMAND_FIELD: field,
        commands.MESSAGE_ID: message_id, commands.DATA_SET_TYPE: 0x0000 if has_data_set else 0x0101}
    if instance is not None:
        elements[commands.REQUESTED_SOP_INSTANCE_UID if normalized else commands.AFFECTED_SOP_INSTANCE_UID] = instance
    if field == commands.N_ACTION_RQ:
        elements[commands.ACTION_TYPE_ID] = 1
    if field == commands.C_STORE_RQ:
        elements[commands.PRIORITY] = 0
    return commands.encode(elements)


class Modality:
    """The test's side of one association: PDUs in as bytes, SynthIQ's messages out."""

    def __init__(self, conn: PduConnection, transport: MemoryTransport):
        self.conn, self.transport = conn, transport
        self.framer = pdu.PduBuffer(max_length=1 << 20)
        self.read = 0

    def send(self, data: bytes) -> None:
        self.conn.data_received(data)

    def send_message(self, context_id: int, command: bytes, data: bytes | None = None) -> None:
        frames = pdu.fragments(context_id, command, command=True, last=True, max_pdu=16384)
        if data is not None:
            frames += pdu.fragments(context_id, data, command=False, last=True, max_pdu=16384)
        self.send(b"".join(frames))

    async def next_pdu(self) -> pdu.Pdu:
        for _ in range(200):  # a few event-loop turns; nothing here waits on a clock
            self.framer.feed(bytes(self.transport.written[self.read:]))
            self.read = len(self.transport.written)
            got = self.framer.next()
            if got is not None:
                return got
            await asyncio.sleep(0)
        raise AssertionError("SynthIQ wrote nothing more")

    async def next_command(self) -> tuple[int, commands.Command]:
        got = await self.next_pdu()
        assert got.type == pdu.P_DATA_TF, f"PDU 0x{got.type:02X} where a response was due"
        (pdv,) = list(pdu.pdvs(got))
        assert pdv.is_command and pdv.is_last
        return pdv.context_id, commands.decode(bytes(pdv.data))

    async def quiet(self) -> bool:
        """Whether SynthIQ wrote nothing more while the loop ran a while."""
        for _ in range(50):
            await asyncio.sleep(0)
        return len(self.transport.written) == self.read


Scenario = Callable[[Modality], Awaitable[None]]


def _run(scenario: Scenario, handlers: dict[int, Service] | None = None, *, release: bool = True) -> Telemetry:
    """Associate as a modality, play ``scenario``, release (unless the scenario ended the
    association); the association's telemetry."""
    telemetry = Telemetry(process_id="test")

    async def main() -> None:
        listener = PoolListener(id="main", ae_title="SYNTHIQ", host="127.0.0.1", port=0)
        offer = PoolOffer("main", services=(negotiation.VERIFICATION, MPPS, STUDY_ROOT_FIND, STORAGE_COMMITMENT))
        relay = Relay(pools=[listener], network=NETWORK, placement=NoRouting(),  # type: ignore[arg-type]
                      telemetry=telemetry, offers={"main": offer}, handlers=handlers or HANDLERS)
        conn = PduConnection(name="pool main inbound", max_length=1 << 20)
        transport = MemoryTransport()
        conn.connection_made(transport)
        assoc = InboundAssociation(relay, listener, conn)
        task = asyncio.get_running_loop().create_task(assoc.run(asyncio.get_running_loop().time() + 5))
        modality = Modality(conn, transport)
        modality.send(_associate_rq())
        assert (await modality.next_pdu()).type == pdu.A_ASSOCIATE_AC
        await scenario(modality)
        if release:
            modality.send(pdu.release_rq())
            assert (await modality.next_pdu()).type == pdu.A_RELEASE_RP_TYPE
        conn.connection_lost(None)
        await task

    asyncio.run(main())
    return telemetry


def test_a_c_echo_is_answered_success_by_synthiq_itself():
    async def scenario(modality: Modality) -> None:
        modality.send_message(VERIFICATION_CONTEXT, _request(commands.C_ECHO_RQ, negotiation.VERIFICATION))
        context_id, answer = await modality.next_command()
        assert (context_id, answer.field, answer.status, answer.responded_to) == (
            VERIFICATION_CONTEXT, commands.C_ECHO_RSP, status.SUCCESS, 7)

    _run(scenario)


@pytest.mark.parametrize("study", [None, "1.2.3.abc"], ids=["absent", "not a UID"])
def test_a_c_store_without_a_valid_study_instance_uid_is_refused_0xc000_naming_it_before_any_routing(study):
    sop = "1.2.826.0.1.3680043.8.498.1"
    header = {"PatientID": "P1", "SOPInstanceUID": sop} | ({"StudyInstanceUID": study} if study else {})

    async def scenario(modality: Modality) -> None:
        modality.send_message(CT_CONTEXT, _request(commands.C_STORE_RQ, CT, has_data_set=True, instance=sop),
                              _data_set(**header))
        _, answer = await modality.next_command()
        assert (answer.field, answer.status, answer.sop_instance_uid) == (
            commands.C_STORE_RSP, status.CANNOT_UNDERSTAND, sop)
        assert "Study Instance UID" in answer.text(commands.ERROR_COMMENT)
        assert answer.values[commands.OFFENDING_ELEMENT] == struct.pack("<HH", 0x0020, 0x000D)

    telemetry = _run(scenario)
    assert (telemetry.counters["received"], telemetry.counters["failed"]) == (1, 1)


@pytest.mark.parametrize(("context_id", "request_", "data"), [
    pytest.param(VERIFICATION_CONTEXT, _request(commands.N_GET_RQ, negotiation.VERIFICATION, instance="1.2.3"), None,
                 id="N-GET, no service of the relay's"),
    pytest.param(CT_CONTEXT, _request(commands.C_STORE_RQ, CT, instance="1.2.3"), None,
                 id="C-STORE without a data set"),
    pytest.param(MPPS_CONTEXT, _request(commands.N_CREATE_RQ, MPPS, has_data_set=True, instance="1.2.3"),
                 _data_set(PerformedProcedureStepStatus="IN PROGRESS"), id="N-CREATE, its handler not registered"),
])
def test_a_request_no_handler_takes_is_answered_0x0211_unrecognized_operation(context_id, request_, data):
    async def scenario(modality: Modality) -> None:
        modality.send_message(context_id, request_, data)
        _, answer = await modality.next_command()
        assert (answer.field, answer.status) == (commands.decode(request_).field | 0x8000,
                                                 status.UNRECOGNIZED_OPERATION)
        assert await modality.quiet()  # and nothing else: its data set was read and dropped

    _run(scenario)


def test_a_response_answering_nothing_in_flight_is_dropped_unanswered():
    async def scenario(modality: Modality) -> None:
        stray = commands.encode({commands.AFFECTED_SOP_CLASS_UID: negotiation.VERIFICATION,
                                 commands.COMMAND_FIELD: commands.C_ECHO_RSP, commands.MESSAGE_ID_RESPONDED_TO: 99,
                                 commands.DATA_SET_TYPE: 0x0101, commands.STATUS: 0})
        modality.send_message(VERIFICATION_CONTEXT, stray)
        assert await modality.quiet()

    _run(scenario)


def test_a_dimse_n_service_is_one_handler_in_the_table_and_gets_its_requests():
    """The recipe of docs/architecture.md: a handler (here a stand-in N-CREATE that answers
    Success itself, remembering the instance) registered by command field."""
    created: dict[str, bytes] = {}

    async def n_create(ctx: Context, context_id: int, command: commands.Command) -> None:
        data = await ctx.peer.stream.read_data_set(context_id, ctx.network.network_timeout_seconds, limit=4096)
        created[command.sop_instance_uid] = data
        await ctx.answer(context_id, commands.response(command, status.SUCCESS))

    step = "1.2.826.0.1.3680043.8.498.3"
    information = _data_set(PerformedProcedureStepStatus="IN PROGRESS")

    async def scenario(modality: Modality) -> None:
        modality.send_message(MPPS_CONTEXT, _request(commands.N_CREATE_RQ, MPPS, has_data_set=True, instance=step),
                              information)
        _, answer = await modality.next_command()
        assert (answer.field, answer.status, answer.responded_to) == (commands.N_CREATE_RSP, status.SUCCESS, 7)

    _run(scenario, {**HANDLERS, commands.N_CREATE_RQ: Service(n_create)})
    assert created == {step: information}


def test_a_c_store_whose_study_instance_uid_lies_beyond_the_held_bytes_is_refused_0xc001_once_all_is_read():
    sop = "1.2.826.0.1.3680043.8.498.4"
    # (0010,4000) comes before (0020,000D): 200 KB of it push the UID far past the 64 KiB held.
    data = _data_set(PatientComments="x" * 200_000, StudyInstanceUID="1.2.3.4", SOPInstanceUID=sop)

    async def scenario(modality: Modality) -> None:
        modality.send_message(CT_CONTEXT, _request(commands.C_STORE_RQ, CT, has_data_set=True, instance=sop), data)
        _, answer = await modality.next_command()
        assert (answer.field, answer.status) == (commands.C_STORE_RSP, status.UID_BEYOND_HOLD)
        assert "64 KiB" in answer.text(commands.ERROR_COMMENT)
        modality.send_message(VERIFICATION_CONTEXT, _request(commands.C_ECHO_RQ, negotiation.VERIFICATION))
        _, echo = await modality.next_command()  # the rest of the instance was read: the next request is served
        assert (echo.field, echo.status) == (commands.C_ECHO_RSP, status.SUCCESS)

    _run(scenario)


def test_a_c_find_whose_study_instance_uid_key_is_no_uid_is_refused_0xa900_before_any_backend_is_asked():
    async def scenario(modality: Modality) -> None:
        modality.send_message(FIND_CONTEXT, _request(commands.C_FIND_RQ, STUDY_ROOT_FIND, has_data_set=True),
                              _data_set(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2.abc"))
        _, answer = await modality.next_command()
        assert (answer.field, answer.status) == (commands.C_FIND_RSP, status.IDENTIFIER_DOES_NOT_MATCH)
        assert "Study Instance UID" in answer.text(commands.ERROR_COMMENT)

    _run(scenario)


@pytest.mark.parametrize(("transaction", "expected"), [
    pytest.param(None, status.PROCESSING_FAILURE, id="unreadable"),
    pytest.param("1.2.x", status.INVALID_ARGUMENT_VALUE, id="transaction UID not a UID"),
])
def test_a_storage_commitment_request_that_cannot_be_used_is_refused_with_the_n_action_status(transaction, expected):
    information = _data_set(TransactionUID=transaction) if transaction else b"\x08\x00"

    async def scenario(modality: Modality) -> None:
        modality.send_message(COMMITMENT_CONTEXT, _request(commands.N_ACTION_RQ, STORAGE_COMMITMENT, has_data_set=True,
                                                           instance="1.2.840.10008.1.20.1.1"), information)
        _, answer = await modality.next_command()
        assert (answer.field, answer.status) == (commands.N_ACTION_RSP, expected)

    _run(scenario)


def test_a_message_on_a_presentation_context_never_accepted_aborts_the_association():
    async def scenario(modality: Modality) -> None:
        modality.send_message(11, _request(commands.C_ECHO_RQ, negotiation.VERIFICATION))
        got = await modality.next_pdu()
        assert got.type == pdu.A_ABORT

    _run(scenario, release=False)


def test_empty_command_fragments_without_end_abort_the_association_within_the_command_bound():
    """Empty fragments (not the last) count with their item headers against the command set's
    bound: a modality cannot keep SynthIQ gathering nothing for ever."""
    empty = pdu.PDV_HEADER.pack(2, VERIFICATION_CONTEXT, pdu.MCH_COMMAND)
    per_pdu = 4000
    body = empty * per_pdu

    async def scenario(modality: Modality) -> None:
        for _ in range(COMMAND_LIMIT // (pdu.PDV_OVERHEAD * per_pdu) + 1):
            modality.send(pdu.HEADER.pack(pdu.P_DATA_TF, len(body)) + body)
        got = await modality.next_pdu()
        assert got.type == pdu.A_ABORT

    _run(scenario, release=False)
