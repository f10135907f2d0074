"""How an operation fails on its way through the relay, defined once for every service.

``OperationFailed`` is an answer SynthIQ gives the modality itself (never a success: the
backend's own status is relayed as it came). ``LinkLost`` is a backend association gone
mid-operation; its ``Violation`` a backend answering something other than the request in
flight. Each handler turns them into its own service's status codes.
"""

from __future__ import annotations

from dataclasses import dataclass


class OperationFailed(Exception):
    """An operation SynthIQ answers itself: the status, its comment, and the backend if any;
    the elements at fault; whether the rest of the request's data set is still to be read."""

    def __init__(self, status: int, comment: str, backend: str | None = None, *,
                 offending: list[int] | None = None, drop: bool = False):
        super().__init__(comment)
        self.status, self.comment, self.backend = status, comment, backend
        self.offending, self.drop = offending, drop


class LinkLost(Exception):
    """The backend's association went away (abort, reset, timeout) mid-operation."""


class Violation(LinkLost):
    """The backend's response does not answer the request in flight (another Message ID,
    SOP Class or SOP Instance): never relayed, never taken for the request's outcome."""


@dataclass(frozen=True)
class FailureCodes:
    """A service's own statuses for SynthIQ's failures (each handler defines its own)."""

    unavailable: int  # no backend could be asked (none healthy, unreachable, not offering the service)
    lost: int  # the backend went away (or broke the protocol) before its final response
