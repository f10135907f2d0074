"""Database URLs in messages: never with their password."""

from __future__ import annotations

import re


def mask_password(url: str) -> str:
    """A database URL fit for a log line or an error message: its password replaced by ***."""
    return re.sub(r"(//[^:/@]*:)[^@]*@", r"\1***@", url)
