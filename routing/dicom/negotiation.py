"""Association negotiation, both ways, through pynetdicom's PDU and presentation classes.

Inbound, SynthIQ is the acceptor: ``accept`` checks the request and negotiates its
presentation contexts (every storage class, private ones included, plus the non-storage
services the pool passes), preferring in each context a transfer syntax the pool's
backends accept. Outbound, SynthIQ is the requestor on the modality's behalf:
``outbound_request`` mirrors the accepted contexts (same IDs, same abstract syntax, the
one accepted transfer syntax), calls with the modality's AE title and Implementation
Class UID, and carries its User Identity, SOP Class (Common) Extended and role
selection items. No asynchronous operations window is negotiated either way: one
operation is outstanding at a time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import uid as uids
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
    SOPClassExtendedNegotiation,
    UserIdentityNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context, negotiate_unrestricted

from routing.dicom.pdu import ProtocolError
from routing.dicom.sop_classes import VERIFICATION

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
# SynthIQ's Implementation Class UID: a UUID-derived UID (PS3.5 B.2), fixed for the product.
IMPLEMENTATION_CLASS_UID = "2.25.247512358916834104837263522309862715431"
IMPLEMENTATION_VERSION_NAME = "SYNTHIQ_1"
MAX_CONTEXTS = 128

# The syntaxes C-ECHO is accepted in (as pynetdicom's AE offers them).
VERIFICATION_SYNTAXES = [uids.ImplicitVRLittleEndian, uids.ExplicitVRLittleEndian,
                         uids.DeflatedExplicitVRLittleEndian, uids.ExplicitVRBigEndian]

# A-ASSOCIATE-RJ (PS3.8 9.3.4): (result, source, reason).
REJECT_CALLED_AE = (1, 1, 7)  # permanent, service-user, called AE title not recognised
REJECT_CALLING_AE = (1, 1, 3)  # permanent, service-user, calling AE title not recognised
REJECT_APPLICATION_CONTEXT = (1, 1, 2)  # permanent, service-user, application context not supported
REJECT_PROTOCOL_VERSION = (1, 2, 2)  # permanent, ACSE provider, protocol version not supported
REJECT_LIMIT = (2, 3, 2)  # transient, presentation provider, local limit exceeded
REJECT_NO_REASON = (2, 1, 1)  # transient, service-user, no reason given


@dataclass
class AssociateRequest:
    """A decoded A-ASSOCIATE-RQ."""

    primitive: A_ASSOCIATE
    protocol_version: int
    calling_ae: str
    called_ae: str
    application_context: str
    contexts: list[PresentationContext]
    max_pdu: int
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    roles: dict[UID, tuple[bool | None, bool | None]] = field(default_factory=dict)
    # User Identity, SOP Class (Common) Extended, role selection: carried outbound as they are.
    carried: list[Any] = field(default_factory=list)


@dataclass
class Accepted:
    """The outcome of inbound negotiation."""

    contexts: dict[int, PresentationContext]  # accepted ones only, by context ID
    pdu: bytes  # the A-ASSOCIATE-AC to send


@dataclass
class BackendAccept:
    """A backend's A-ASSOCIATE-AC: its max PDU and what it accepted, by context ID."""

    max_pdu: int
    contexts: dict[int, str]  # context ID -> the one accepted transfer syntax
    rejected: dict[int, int] = field(default_factory=dict)  # context ID -> result code
    # SOP class -> (SCU role, SCP role) as its role selection reply says; a class without a
    # reply keeps the default roles (the requestor is the SCU only: PS3.7 D.3.3.4).
    roles: dict[str, tuple[bool, bool]] = field(default_factory=dict)


def _user_items(primitive: A_ASSOCIATE) -> list[Any]:
    return list(primitive.user_information or [])


def _context_id(cx: PresentationContext) -> int:
    if cx.context_id is None:
        raise ProtocolError("presentation context without an ID")
    return int(cx.context_id)


def decode_associate_rq(raw: bytes | memoryview) -> AssociateRequest:
    pdu = A_ASSOCIATE_RQ()
    try:
        pdu.decode(bytes(raw))
        primitive = pdu.to_primitive()
    except Exception as exc:  # pynetdicom raises several types on malformed items
        raise ProtocolError(f"malformed A-ASSOCIATE-RQ: {exc}") from None
    rq = AssociateRequest(
        primitive=primitive,
        protocol_version=pdu.protocol_version,
        calling_ae=str(primitive.calling_ae_title or "").strip(),
        called_ae=str(primitive.called_ae_title or "").strip(),
        application_context=str(primitive.application_context_name or ""),
        contexts=list(primitive.presentation_context_definition_list),
        max_pdu=0,
    )
    for item in _user_items(primitive):
        if isinstance(item, MaximumLengthNotification):
            rq.max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, ImplementationClassUIDNotification):
            rq.implementation_class_uid = str(item.implementation_class_uid or "")
        elif isinstance(item, ImplementationVersionNameNotification):
            rq.implementation_version_name = str(item.implementation_version_name or "")
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            rq.roles[UID(str(item.sop_class_uid))] = (item.scu_role, item.scp_role)
            rq.carried.append(item)
        elif isinstance(item, SOPClassExtendedNegotiation | SOPClassCommonExtendedNegotiation
                        | UserIdentityNegotiation):
            rq.carried.append(item)
        # An asynchronous operations window is not carried: one operation at a time.
    return rq


def reject(reason: tuple[int, int, int]) -> bytes:
    pdu = A_ASSOCIATE_RJ()
    pdu.result, pdu.source, pdu.reason_diagnostic = reason
    return pdu.encode()


def rejection_text(raw: bytes | memoryview) -> str:
    """What an A-ASSOCIATE-RJ says. A peer's bytes: one too short to carry its result, source
    and reason (PS3.8 9.3.4) is said to be so, never raised as a decoding error."""
    if len(raw) < 10:
        return f"a malformed A-ASSOCIATE-RJ of {len(raw)} bytes"
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(bytes(raw))
    try:
        return f"{pdu.result_str}, {pdu.source_str}: {pdu.reason_str}"
    except ValueError:
        return f"result {pdu.result}, source {pdu.source}, reason {pdu.reason_diagnostic}"


Rank = tuple[int, int]  # (backends that accept a syntax, pairwise choices it won with them)


def syntax_ranks(backends: Iterable[tuple[frozenset[str], Mapping[str, int]] | None]) -> dict[str, Rank]:
    """Per transfer syntax, over the backends that answered (each: what it accepts, and how
    many pairwise choices each syntax won with it): how many accept it, and its wins."""
    accepted: Counter[str] = Counter()
    wins: Counter[str] = Counter()
    for found in backends:
        if found:
            accepted.update(found[0])
            wins.update(found[1])
    return {ts: (n, wins[ts]) for ts, n in accepted.items()}


def prefer_accepted(proposed: list[str], ranks: Mapping[str, Rank]) -> list[str]:
    """A context's proposed syntaxes reordered as the pool's backends would choose: those
    most backends accept first; then those the backends prefer when they choose by a
    preference of their own (DCMTK-based PACS such as Orthanc take uncompressed over what
    the requestor put first), so the backend receives what a direct send would have given it;
    the requestor's own order among equals. Nothing is dropped, so a syntax no backend was seen to accept is still
    taken when it is all the requestor offers (its C-STOREs then fail with a clear status if
    the chosen backend refuses it)."""
    def key(ts: str) -> tuple[int, int]:
        accepted_by, wins = ranks.get(str(ts), (0, 0))
        return -accepted_by, -wins

    return sorted(proposed, key=key)


def accept(rq: AssociateRequest, *, ae_title: str, max_pdu: int, services: Iterable[str] = (VERIFICATION,),
           ranks: Mapping[str, Rank] | None = None) -> Accepted:
    """Negotiate ``rq``'s contexts: storage classes (any, private ones included) in the
    syntax most backends accept among those proposed, ``services`` (non-storage abstract
    syntaxes the pool passes) in any syntax proposed. Returns the A-ASSOCIATE-AC."""
    if len(rq.contexts) > MAX_CONTEXTS:
        raise ProtocolError(f"{len(rq.contexts)} presentation contexts proposed (at most {MAX_CONTEXTS})")
    proposed = []
    for cx in rq.contexts:
        ordered: list[str | UID] = list(prefer_accepted([str(ts) for ts in cx.transfer_syntax], ranks or {}))
        copy = build_context(str(cx.abstract_syntax), ordered)
        copy.context_id = cx.context_id
        proposed.append(copy)
    supported = []
    for abstract in services:
        offered: list[str | UID] = sorted({str(ts) for c in rq.contexts if c.abstract_syntax == abstract
                                           for ts in c.transfer_syntax})
        cx = build_context(abstract, list(VERIFICATION_SYNTAXES) if abstract == VERIFICATION or not offered
                           else offered)
        # Either role: a storage commitment SCU that proposes the SCP role as well gets its
        # N-EVENT-REPORT on this association (when the backend sends it there).
        cx.scu_role, cx.scp_role = True, True
        supported.append(cx)
    results, roles = negotiate_unrestricted(proposed, supported, rq.roles or None)

    ac = A_ASSOCIATE()
    ac.application_context_name = APPLICATION_CONTEXT
    ac.calling_ae_title = rq.calling_ae or "ANY-SCU"
    ac.called_ae_title = ae_title
    ac.result = 0x00
    ac.presentation_context_definition_results_list = results
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = IMPLEMENTATION_CLASS_UID
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    ac.user_information = [length, implementation, version, *roles]
    accepted = {_context_id(cx): cx for cx in results if cx.result == 0x00}
    return Accepted(contexts=accepted, pdu=A_ASSOCIATE_AC(ac).encode())


def _request_pdu(*, calling_ae: str, called_ae: str, contexts: list[PresentationContext], max_pdu: int,
                 implementation_class_uid: str, items: list[Any]) -> bytes:
    """An A-ASSOCIATE-RQ: the application context, both AE titles, ``contexts``, the max PDU
    and Implementation Class UID, then the user information ``items``."""
    out = A_ASSOCIATE()
    out.application_context_name = APPLICATION_CONTEXT
    out.calling_ae_title = calling_ae
    out.called_ae_title = called_ae
    out.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = max_pdu
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = implementation_class_uid
    out.user_information = [length, implementation, *items]
    return A_ASSOCIATE_RQ(out).encode()


def outbound_request(rq: AssociateRequest, accepted: Mapping[int, PresentationContext], *, called_ae: str,
                     max_pdu: int) -> bytes:
    """The A-ASSOCIATE-RQ to a backend on the modality's behalf (see the module docstring)."""
    contexts = []
    for context_id, cx in sorted(accepted.items()):
        copy = build_context(str(cx.abstract_syntax), [cx.transfer_syntax[0]])
        copy.context_id = context_id
        contexts.append(copy)
    items: list[Any] = []
    if rq.implementation_version_name:
        version = ImplementationVersionNameNotification()
        version.implementation_version_name = rq.implementation_version_name
        items.append(version)
    abstracts = {str(cx.abstract_syntax) for cx in accepted.values()}
    for item in rq.carried:
        # Items about one SOP class go only where that class is proposed; User Identity always.
        if str(getattr(item, "sop_class_uid", None) or "") in abstracts or isinstance(item, UserIdentityNegotiation):
            items.append(item)
    return _request_pdu(calling_ae=rq.calling_ae, called_ae=called_ae, contexts=contexts, max_pdu=max_pdu,
                        implementation_class_uid=rq.implementation_class_uid or IMPLEMENTATION_CLASS_UID, items=items)


def own_request(*, calling_ae: str, called_ae: str, contexts: Mapping[int, tuple[str, Sequence[str]]],
                max_pdu: int, roles: Iterable[tuple[str, bool, bool]] = ()) -> bytes:
    """The A-ASSOCIATE-RQ of SynthIQ calling on its own account: ``contexts`` by ID,
    (abstract syntax, transfer syntaxes), with SynthIQ's implementation class and version,
    and an SCP/SCU Role Selection item for each of ``roles`` ((SOP class, SCU role, SCP role))."""
    if len(contexts) > MAX_CONTEXTS:
        raise ValueError(f"{len(contexts)} presentation contexts (at most {MAX_CONTEXTS})")
    proposed = []
    for context_id, (abstract, syntaxes) in sorted(contexts.items()):
        cx = build_context(abstract, list(syntaxes))
        cx.context_id = context_id
        proposed.append(cx)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION_NAME
    items: list[Any] = [version]
    for sop_class, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid, role.scu_role, role.scp_role = sop_class, scu, scp
        items.append(role)
    return _request_pdu(calling_ae=calling_ae, called_ae=called_ae, contexts=proposed, max_pdu=max_pdu,
                        implementation_class_uid=IMPLEMENTATION_CLASS_UID, items=items)


def decode_associate_ac(raw: bytes | memoryview) -> BackendAccept:
    pdu = A_ASSOCIATE_AC()
    try:
        pdu.decode(bytes(raw))
        primitive = pdu.to_primitive()
    except Exception as exc:
        raise ProtocolError(f"malformed A-ASSOCIATE-AC: {exc}") from None
    max_pdu = 0
    roles: dict[str, tuple[bool, bool]] = {}
    for item in _user_items(primitive):
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation):
            roles[str(item.sop_class_uid)] = (bool(item.scu_role), bool(item.scp_role))
    accepted, rejected = {}, {}
    for cx in primitive.presentation_context_definition_results_list:
        if cx.result == 0x00 and cx.transfer_syntax:
            accepted[_context_id(cx)] = str(cx.transfer_syntax[0])
        else:
            rejected[_context_id(cx)] = int(cx.result or 0)
    return BackendAccept(max_pdu=max_pdu, contexts=accepted, rejected=rejected, roles=roles)
