"""Association negotiation both ways, against pynetdicom's own PDU encoding."""

from __future__ import annotations

from pydicom import uid
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    AsynchronousOperationsWindowNegotiation,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import build_context

from routing.dicom import negotiation

CT = "1.2.840.10008.5.1.4.1.1.2"
PRIVATE = "1.3.6.1.4.1.99999.1.1"  # a private storage class
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


def _request(**extra) -> bytes:
    p = A_ASSOCIATE()
    p.application_context_name = negotiation.APPLICATION_CONTEXT
    p.calling_ae_title, p.called_ae_title = "CT01", "SYNTHIQ"
    contexts = []
    for n, (abstract, syntaxes) in enumerate([(CT, [uid.JPEG2000, uid.ExplicitVRLittleEndian]),
                                              (PRIVATE, [uid.ImplicitVRLittleEndian]),
                                              (negotiation.VERIFICATION, [uid.ImplicitVRLittleEndian]),
                                              (STUDY_ROOT_FIND, [uid.ImplicitVRLittleEndian])]):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * n + 1
        contexts.append(cx)
    p.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 32768
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.276.0.7230010.3.0.3.6.7"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "OFFIS_DCMTK_367"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 1
    identity.primary_field = b"radiographer"
    extended = SOPClassExtendedNegotiation()
    extended.sop_class_uid = CT
    extended.service_class_application_information = b"\x01"
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = CT
    role.scu_role, role.scp_role = True, True
    p.user_information = [length, implementation, version, window, identity, extended, role,
                          *extra.get("items", [])]
    return A_ASSOCIATE_RQ(p).encode()


def test_the_request_is_read_with_what_is_carried_and_what_is_not():
    rq = negotiation.decode_associate_rq(_request())
    assert (rq.calling_ae, rq.called_ae, rq.max_pdu) == ("CT01", "SYNTHIQ", 32768)
    assert rq.implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    kinds = {type(item).__name__ for item in rq.carried}
    assert kinds == {"UserIdentityNegotiation", "SOPClassExtendedNegotiation", "SCP_SCU_RoleSelectionNegotiation"}


def test_storage_and_private_classes_are_accepted_in_the_syntax_the_backends_take_others_only_if_passed():
    rq = negotiation.decode_associate_rq(_request())
    ranks = {uid.ExplicitVRLittleEndian: (3, 0), uid.ImplicitVRLittleEndian: (3, 0)}  # no backend takes JPEG 2000
    accepted = negotiation.accept(rq, ae_title="SYNTHIQ", max_pdu=262144, ranks=ranks)
    syntaxes = {cid: str(cx.transfer_syntax[0]) for cid, cx in accepted.contexts.items()}
    assert syntaxes == {1: uid.ExplicitVRLittleEndian, 3: uid.ImplicitVRLittleEndian, 5: uid.ImplicitVRLittleEndian}
    ac = A_ASSOCIATE_AC()
    ac.decode(accepted.pdu)
    primitive = ac.to_primitive()
    results = {cx.context_id: cx.result for cx in primitive.presentation_context_definition_results_list}
    assert results == {1: 0, 3: 0, 5: 0, 7: 3}  # Q/R FIND: abstract syntax not supported (not passed)
    items = {type(i).__name__: i for i in primitive.user_information}
    assert items["MaximumLengthNotification"].maximum_length_received == 262144
    assert items["ImplementationClassUIDNotification"].implementation_class_uid == negotiation.IMPLEMENTATION_CLASS_UID
    assert "AsynchronousOperationsWindowNegotiation" not in items  # one operation at a time


def test_the_outbound_request_mirrors_the_accepted_contexts_and_speaks_for_the_modality():
    rq = negotiation.decode_associate_rq(_request())
    accepted = negotiation.accept(rq, ae_title="SYNTHIQ", max_pdu=262144,
                                  ranks={uid.ExplicitVRLittleEndian: (1, 0)})
    raw = negotiation.outbound_request(rq, accepted.contexts, called_ae="NODEA", max_pdu=262144)
    out = A_ASSOCIATE_RQ()
    out.decode(raw)
    primitive = out.to_primitive()
    assert (primitive.calling_ae_title, primitive.called_ae_title) == ("CT01", "NODEA")
    proposed = {cx.context_id: (str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                for cx in primitive.presentation_context_definition_list}
    assert proposed == {1: (CT, [uid.ExplicitVRLittleEndian]), 3: (PRIVATE, [uid.ImplicitVRLittleEndian]),
                        5: (negotiation.VERIFICATION, [uid.ImplicitVRLittleEndian])}
    items = {type(i).__name__: i for i in primitive.user_information}
    assert items["ImplementationClassUIDNotification"].implementation_class_uid == "1.2.276.0.7230010.3.0.3.6.7"
    assert items["ImplementationVersionNameNotification"].implementation_version_name == "OFFIS_DCMTK_367"
    assert items["UserIdentityNegotiation"].primary_field == b"radiographer"
    assert items["SOPClassExtendedNegotiation"].sop_class_uid == CT
    assert items["SCP_SCU_RoleSelectionNegotiation"].sop_class_uid == CT
    assert "AsynchronousOperationsWindowNegotiation" not in items


def test_a_backends_accept_and_reject_are_read():
    rq = negotiation.decode_associate_rq(_request())
    accepted = negotiation.accept(rq, ae_title="NODEA", max_pdu=4096)
    backend = negotiation.decode_associate_ac(accepted.pdu)
    assert backend.max_pdu == 4096 and backend.contexts[1] == uid.JPEG2000 and backend.rejected == {7: 3}
    raw = negotiation.reject(negotiation.REJECT_CALLED_AE)
    rj = A_ASSOCIATE_RJ()
    rj.decode(raw)
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 7)
    assert "Called AE title not recognised" in negotiation.rejection_text(raw)


def test_prefer_accepted_keeps_the_requestors_order_among_equals():
    ranks = {"a": (2, 0), "b": (2, 0), "c": (1, 0)}
    assert negotiation.prefer_accepted(["c", "x", "b", "a"], ranks) == ["b", "a", "c", "x"]
    assert negotiation.prefer_accepted(["c", "a"], {}) == ["c", "a"]


def test_prefer_accepted_follows_the_backends_own_preference_before_the_requestors_order():
    lossless, explicit = "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.1"
    assert negotiation.prefer_accepted([lossless, explicit], {lossless: (1, 0), explicit: (1, 0)}) == [
        lossless, explicit]
    assert negotiation.prefer_accepted([lossless, explicit], {lossless: (1, 0), explicit: (1, 1)}) == [
        explicit, lossless]
    assert negotiation.prefer_accepted([lossless, explicit], {lossless: (2, 0), explicit: (1, 1)}) == [
        lossless, explicit]


def test_syntax_ranks_count_acceptance_and_wins_over_the_backends_that_answered():
    a, b = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
    ranks = negotiation.syntax_ranks([(frozenset({a, b}), {a: 1}), None, (frozenset({a}), {})])
    assert ranks == {a: (2, 1), b: (1, 0)}
