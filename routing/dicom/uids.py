"""Unique identifiers (VR UI) as SynthIQ reads them from peers, before it routes by them,
stores them or logs them.

PS3.5 9.1: at most 64 characters of digits and dots, components separated by single dots,
padded to even length with a NUL (or, from sloppy writers, a space). Leading zeros inside a
component are illegal but real devices send them, and nothing in routing depends on it, so
they pass. A query identifier may leave a UID key empty (universal match, or a return key)
or list several UIDs separated by backslashes (PS3.4 C.2.2.2.2): each is checked alone.

Each check returns None for a valid value or a short reason that fits an Error Comment
(LO: at most 64 characters) together with the attribute's name.
"""

from __future__ import annotations

MAX_LENGTH = 64
_DIGITS_AND_DOTS = frozenset("0123456789.")
# How much of a rejected value a log line shows (a hostile value may be megabytes).
SHOWN = 80


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a usable UID, or None. Trailing NUL/space padding is allowed."""
    uid = value.rstrip("\x00 ")
    if not uid:
        return "empty"
    if len(uid) > MAX_LENGTH:
        return f"{len(uid)} characters, at most {MAX_LENGTH}"
    if not _DIGITS_AND_DOTS.issuperset(uid):
        return "not digits and dots"
    if uid.startswith(".") or uid.endswith(".") or ".." in uid:
        return "an empty component"
    return None


def uid_key_problem(value: str) -> str | None:
    """As uid_problem, for a UID key of a query identifier: empty (universal matching) or a
    backslash-separated list of UIDs."""
    uids = value.rstrip("\x00 ")
    if not uids:
        return None
    if len(uids) > 1024 * (MAX_LENGTH + 1):
        return f"a list of {len(uids)} characters"
    for uid in uids.split("\\"):
        problem = uid_problem(uid)
        if problem:
            return problem
    return None


def shown(value: str) -> str:
    """A peer's value for a log line: escaped (repr) and cut to SHOWN characters."""
    if len(value) <= SHOWN:
        return repr(value)
    return f"{value[:SHOWN]!r}…({len(value)} characters)"


def comment(name: str, problem: str) -> str:
    """The Error Comment for an invalid identifier (at most 64 characters)."""
    return f"{name} invalid: {problem}"[:MAX_LENGTH]
