"""Established associations per source address, counted across every worker of a runproxy.

One anonymous shared memory map, made before the workers are forked: a row of counters per
worker, a counter per address hash. A worker writes only its own row (so no two processes
write one counter) and reads every row to know an address's total; when a worker dies, its
parent zeroes that worker's row, so a crash never leaves an address locked out.

Two addresses whose hashes share a slot are counted together: with 4,096 slots and the few
hundred hosts of an imaging network that is rare, and it errs on the safe side (a refusal
names the limit, and the limit can be raised). Two workers admitting one address at the
same instant may each see the count before the other's increment: the limit can then be
passed by at most one association per other worker.
"""

from __future__ import annotations

import hashlib
import mmap

SLOTS = 4096
_INT = 4  # bytes per counter (a signed 32-bit int)


def _slot(address: str) -> int:
    return int.from_bytes(hashlib.blake2b(address.encode(), digest_size=4).digest(), "big") % SLOTS


class AddressCounts:
    def __init__(self, *, workers: int = 1):
        self.workers = workers
        self._map = mmap.mmap(-1, workers * SLOTS * _INT)  # anonymous and shared: forked workers see one map
        self._counters = memoryview(self._map).cast("i")
        self.row = 0  # this process's row (a worker's index)

    def total(self, address: str) -> int:
        """Associations from ``address`` open now in every worker."""
        slot = _slot(address)
        return sum(self._counters[row * SLOTS + slot] for row in range(self.workers))

    def add(self, address: str, delta: int) -> None:
        """This worker opened (+1) or closed (-1) an association from ``address``."""
        self._counters[self.row * SLOTS + _slot(address)] += delta

    def clear(self, row: int) -> None:
        """A worker is gone: what it counted is gone with it."""
        self._counters[row * SLOTS:(row + 1) * SLOTS] = memoryview(bytes(SLOTS * _INT)).cast("i")
