"""Whether a DICOMweb client is one of SynthIQ's users: an API token (``Token <key>``, as
the admin API takes it) or HTTP Basic against the Django users (through the configured
authentication backends, so the login lockout counts these attempts too; bad tokens count
towards the API's token lockout). Blocking (the
database): runproxy calls it on an executor, never on the event loop."""

from __future__ import annotations

import base64
import binascii
import logging

from django.contrib.auth import authenticate
from django.db import close_old_connections
from django.http import HttpRequest

from synthiq_project.authentication import token_failure_record, token_locked_out

logger = logging.getLogger("synthiq.auth")


def credentials_check(authorization: str, source_ip: str) -> str | None:
    """The user name the Authorization header proves, or None."""
    close_old_connections()
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "token" and value:
        from rest_framework.authtoken.models import Token

        # The API's own guard against token guessing: bad tokens count per address, and a
        # locked-out address is refused without a lookup.
        if token_locked_out(address=source_ip):
            return None
        token = Token.objects.select_related("user").filter(key=value).first() if len(value) <= 40 else None
        if token is None or not token.user.is_active:
            token_failure_record(address=source_ip)
            return None
        return token.user.get_username()
    if scheme.lower() == "basic" and value:
        try:
            username, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not sep:
            return None
        request = HttpRequest()
        request.META["REMOTE_ADDR"] = source_ip
        request.method = "POST"
        user = authenticate(request, username=username, password=password)
        return user.get_username() if user is not None and user.is_active else None
    return None
