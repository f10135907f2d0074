"""Commitment tokens at rest: a keyed hash, never the token itself.

A backend authenticates its storage-commitment reports with the token the config file gives
it. The database keeps ``hmac-sha256$<hex>`` of it, keyed from SECRET_KEY, so a copy of the
database (a backup, ``movebindings`` to another server) does not hand out working tokens.
The hash is deterministic, so the token presented is looked up by its hash; the file stays
the source of the tokens: after SECRET_KEY changes, a sync (runproxy start or reload,
``loadconfig``) stores them hashed under the new key.
"""

from __future__ import annotations

from django.utils.crypto import salted_hmac

PREFIX = "hmac-sha256$"
# Separates this use of SECRET_KEY from every other one (sessions, password resets).
_KEY_SALT = "synthiq.pools.commitment-token"


def commitment_token_hash(*, token: str) -> str:
    return PREFIX + salted_hmac(_KEY_SALT, token, algorithm="sha256").hexdigest()


def commitment_token_is_hashed(*, stored: str) -> bool:
    return stored.startswith(PREFIX)
