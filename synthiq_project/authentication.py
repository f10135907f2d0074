"""Web-side authentication hardening: a lockout for API token guessing, and escaped
django-axes log lines (the login form's lockout is django-axes, configured in settings)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.conf import settings
from django.core.cache import cache
from django.http import HttpRequest
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from rest_framework import authentication, exceptions

logger = logging.getLogger("synthiq.auth")


def _client_address(request: HttpRequest) -> str:
    # The socket's peer only: X-Forwarded-For is whatever the client chose to write.
    return request.META.get("REMOTE_ADDR", "")


def _lockout_key(address: str) -> str:
    return f"synthiq:token-auth:lockout:{address}"


def token_failure_record(*, address: str) -> int:
    """Count one bad token from the address; at the limit, lock it out and log it once.
    Returns the failures counted in the current window."""
    window = settings.SYNTHIQ_TOKEN_AUTH_WINDOW_SECONDS
    key = f"synthiq:token-auth:failures:{address}"
    cache.add(key, 0, timeout=window)  # the window starts at the first failure
    try:
        failures = cache.incr(key)  # atomic, so concurrent failures each count
    except ValueError:  # the window ended between add and incr
        cache.set(key, 1, timeout=window)
        failures = 1
    if failures == settings.SYNTHIQ_TOKEN_AUTH_FAILURE_LIMIT:  # == : one lockout, one log line
        cache.set(_lockout_key(address), time.time() + window, timeout=window)
        logger.warning("token auth lockout ip=%r failures=%d seconds=%d", address, failures, window)
    return failures


def token_locked_out(*, address: str) -> bool:
    """Whether the address is locked out of token checks (too many bad tokens lately)."""
    return cache.get(_lockout_key(address)) is not None


@contextmanager
def token_guessing_guard(request: HttpRequest) -> Iterator[None]:
    """Around a token check: refuse a locked-out address at once (429), count a failure.
    Every token scheme uses it (API tokens, backends' commitment tokens)."""
    address = _client_address(request)
    locked_until = cache.get(_lockout_key(address))
    if locked_until is not None:
        raise exceptions.Throttled(wait=max(0.0, locked_until - time.time()))
    try:
        yield
    except exceptions.AuthenticationFailed:
        token_failure_record(address=address)
        raise


class ThrottledTokenAuthentication(authentication.TokenAuthentication):
    """DRF's ``Authorization: Token <key>`` with bad keys counted per client address: after
    SYNTHIQ_TOKEN_AUTH_FAILURE_LIMIT of them within SYNTHIQ_TOKEN_AUTH_WINDOW_SECONDS, every
    token from that address is refused with 429 for the window, a valid one too (else the
    guessing would go on and a hit would still open the API). A success does not clear the
    count, so a guesser holding one valid token cannot reset it."""

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # no token offered: the next authentication class decides
        with token_guessing_guard(request):
            return super().authenticate(request)


class ThrottledTokenScheme(OpenApiAuthenticationExtension):
    """The same `Token <key>` header as DRF's class. Its own name: a view that still lists
    DRF's class (the commitment view) would otherwise collide with it in the schema."""

    target_class = "synthiq_project.authentication.ThrottledTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema):
        return build_bearer_security_scheme_object(header_name="Authorization", token_prefix=self.target.keyword)


def axes_client_str(username: str | None, ip_address: str | None, user_agent: str | None,
                    path_info: str | tuple | list | None, request: HttpRequest) -> str:
    """AXES_CLIENT_STR_CALLABLE: how django-axes names a client in its log lines. The
    username and path are the client's own bytes, so they are escaped (%r) like any peer value."""
    if isinstance(path_info, (tuple, list)):
        path_info = path_info[0] if path_info else None
    return f"username={username!r} ip={ip_address!r} path={path_info!r}"
