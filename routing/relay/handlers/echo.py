"""C-ECHO: answered by SynthIQ itself with 0x0000 (Success); no backend is asked."""

from __future__ import annotations

from routing.dicom import commands, status
from routing.relay.context import Context


async def handle(ctx: Context, context_id: int, command: commands.Command) -> None:
    await ctx.answer(context_id, commands.response(command, status.SUCCESS))  # Success
    if command.has_data_set:
        await ctx.drop_data_set(context_id)
