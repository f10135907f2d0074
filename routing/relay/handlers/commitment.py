"""N-ACTION and N-EVENT-REPORT: storage commitment (Push Model), ``routing.relay.commitment``.

SynthIQ's own statuses (PS3.4 J.3.2, J.3.3): 0x0110 (Processing failure) when the request
cannot be read, no backend can be asked or one goes away, or a report has nowhere to go;
0x0115 (Invalid argument value) a Transaction or Referenced SOP UID that is not a UID.
"""

from __future__ import annotations

from routing.dicom import commands, status
from routing.relay.context import Context
from routing.relay.failures import FailureCodes

ACTION_CODES = FailureCodes(unavailable=status.PROCESSING_FAILURE, lost=status.PROCESSING_FAILURE)
# A report relayed to a backend has had the retrieve codes since it was first relayed (kept as they are).
EVENT_REPORT_CODES = FailureCodes(unavailable=status.RETRIEVE_UNABLE_TO_COUNT, lost=status.RETRIEVE_UNABLE_TO_PERFORM)


async def action(ctx: Context, context_id: int, command: commands.Command) -> None:
    await ctx.operations.commitments.action(context_id, command, ACTION_CODES)


async def event_report(ctx: Context, context_id: int, command: commands.Command) -> None:
    await ctx.operations.commitments.event_report(context_id, command, EVENT_REPORT_CODES)
