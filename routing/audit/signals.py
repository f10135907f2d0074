"""User Authentication (110114) audit messages for the web app's logins and logouts, from
Django's auth signals (django-axes refuses a locked-out login through the same
``user_login_failed``)."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver

from routing.audit.trail import current, install

logger = logging.getLogger("synthiq.audit")
_web_lock = threading.Lock()
_web_tried = False


def _trail() -> Any:
    """The process's trail; in a web process of its own (not runproxy --http), started from
    SYNTHIQ_CONFIG's Audit block at the first login, with a spool file of its own."""
    global _web_tried
    trail = current()
    if trail.enabled or _web_tried or not settings.SYNTHIQ_CONFIG:
        return trail
    with _web_lock:
        if not _web_tried:
            _web_tried = True
            from pools.config import ConfigError, config_load
            from routing.audit import trail_start

            try:
                config = config_load(path=settings.SYNTHIQ_CONFIG)
            except ConfigError as exc:
                logger.error("audit: %s is invalid, logins are not audited: %s", settings.SYNTHIQ_CONFIG, exc)
                return current()
            if config.audit is not None:
                install(trail_start(config.audit, spool_name=f"web-{os.getpid()}"))
    return current()


def _address(request: Any) -> str:
    return str(getattr(request, "META", {}).get("REMOTE_ADDR", "")) if request is not None else ""


@receiver(user_logged_in, dispatch_uid="synthiq-audit-login")
def _logged_in(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    _trail().user_authentication(login=True, user=getattr(user, "username", ""), address=_address(request),
                                  success=True)


@receiver(user_logged_out, dispatch_uid="synthiq-audit-logout")
def _logged_out(sender: Any, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    _trail().user_authentication(login=False, user=getattr(user, "username", ""), address=_address(request),
                                  success=True)


@receiver(user_login_failed, dispatch_uid="synthiq-audit-login-failed")
def _login_failed(sender: Any, credentials: dict[str, Any] | None = None, request: Any = None,
                  **kwargs: Any) -> None:
    # Django has already masked the password in ``credentials``; only the user name is kept.
    user = str((credentials or {}).get("username", ""))[:150]
    _trail().user_authentication(login=True, user=user, address=_address(request), success=False,
                                  text="login failed")
