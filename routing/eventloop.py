"""The event loop runproxy's workers run on: uvloop (libuv's loop, in C) by default, or
asyncio's own (``runproxy --event-loop asyncio``).

uvloop reads into the connection's buffers and runs its callbacks in C where asyncio's
selector loop does it in Python: measured here, 30-40 % less of runproxy's CPU per GB of
bulk data, a few per cent on small objects and under TLS (docs/performance.md). asyncio's
loop remains the fallback where uvloop cannot be installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
LOOPS = ("uvloop", "asyncio")
DEFAULT = "uvloop"


def run(main: Coroutine[Any, Any, T], *, loop: str = DEFAULT) -> T:
    """Run ``main`` to its end on a new event loop of the kind named."""
    if loop == "asyncio":
        return asyncio.run(main)
    if loop != "uvloop":
        raise ValueError(f"event loop {loop!r}: one of {', '.join(LOOPS)}")
    import uvloop  # only where it is asked for

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
