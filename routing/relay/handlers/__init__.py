"""One handler per DIMSE service, in a table keyed by the request's command field.

A handler is ``async def handle(ctx, context_id, command)``: ``ctx`` is the narrow
``routing.relay.context.Context`` (the modality to answer on, the links to the backends,
the relay's services, the settings), ``command`` the request's command set; its data set,
if any, is still to be read from ``ctx.peer.stream``. Each service's own failure statuses
are defined beside its handler. A request whose field is not in the table is answered
0x0211 (Unrecognized operation) by the association (``routing.relay.inbound``).

Adding a DIMSE-N service is a handler module here and its line in ``HANDLERS``; the pool
passes it once its SOP class is in ``routing.dicom.sop_classes.SERVICE_CLASSES`` under a name
that ``pools.config.ServicesConfig`` switches (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from routing.dicom import commands
from routing.relay.context import Context
from routing.relay.handlers import commitment, echo, find, retrieve, store

Handler = Callable[[Context, int, commands.Command], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    handle: Handler
    # A request of this service without a data set is no such request (PS3.7): 0x0211.
    needs_data_set: bool = True


HANDLERS: Mapping[int, Service] = {
    commands.C_ECHO_RQ: Service(echo.handle, needs_data_set=False),
    commands.C_STORE_RQ: Service(store.handle),
    commands.C_FIND_RQ: Service(find.handle),
    commands.C_MOVE_RQ: Service(retrieve.handle),
    commands.C_GET_RQ: Service(retrieve.handle),
    commands.N_ACTION_RQ: Service(commitment.action),
    commands.N_EVENT_REPORT_RQ: Service(commitment.event_report),
}
