"""C-MOVE and C-GET: to the study's backend, bound or found.

A retrieve of a bound study goes to its backend; of an unbound one, to the backend a
C-FIND finds it on (``routing.relay.locator``; none holds it: the first healthy backend,
which answers its own "nothing matched"). A C-GET's C-STORE sub-operations come back on
the same association and are relayed to the modality, and its answers back to the backend.

SynthIQ's own statuses (PS3.4 C.4.2.1.5, C.4.3.1.4): 0xA701 (Refused: Out of Resources -
unable to calculate number of matches) when no backend can be asked or the study's
cannot be found; 0xA702 (unable to perform sub-operations) when the backend goes away;
0xA900 an identifier whose UID keys are not UIDs (``handlers.query_retrieve``).
"""

from __future__ import annotations

from routing.dicom import commands, status, tags
from routing.relay.context import Context
from routing.relay.failures import FailureCodes, OperationFailed
from routing.relay.handlers import query_retrieve
from routing.relay.handlers.query_retrieve import Request, Targets

CODES = FailureCodes(unavailable=status.RETRIEVE_UNABLE_TO_COUNT, lost=status.RETRIEVE_UNABLE_TO_PERFORM)


async def handle(ctx: Context, context_id: int, command: commands.Command) -> None:
    request = await query_retrieve.read(ctx, context_id, command, CODES)
    if request is not None:
        await query_retrieve.serve(ctx, request, _located, _ask)


async def _ask(ctx: Context, request: Request, targets: list[str], unasked: list[str], reason: str) -> int:
    return await ctx.operations.one(targets[0], request.context_id, request.command, request.data, CODES)


async def _located(ctx: Context, request: Request) -> Targets:
    """The backend a study-level (or patient-level) C-FIND finds the request's study on."""
    study = request.keys.get(tags.STUDY_UID, "")
    patient = request.keys.get(0x00100020, "")
    found, silent = await ctx.relay.locate(ctx.pool_id, calling_ae=ctx.calling_ae, study_uid=study,
                                           patient_id=patient)
    if found:
        return [found[0]], "located", []
    if silent:
        raise OperationFailed(status.RETRIEVE_UNABLE_TO_COUNT, f"could not ask {', '.join(silent)} where the study is")
    healthy = ctx.relay.placement.healthy_backends(ctx.pool_id)
    if not healthy:
        raise OperationFailed(status.RETRIEVE_UNABLE_TO_COUNT, f"pool {ctx.pool_id}: no healthy backend")
    return [healthy[0]], "located", []  # nobody holds it: the backend answers its own "nothing matched"
