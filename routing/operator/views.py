"""The operator dashboard (a page that polls the JSON APIs) and the Prometheus endpoint."""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_required
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pools import selectors as pool_selectors
from routing import readiness
from routing.operator.metrics import SynthIQCollector
from synthiq_project.version import VERSION

logger = logging.getLogger("synthiq.readiness")
# The last database error /readyz logged: an outage is logged once, not on every request.
_database_error_logged = ""


@never_cache
@ensure_csrf_cookie  # the drain / enable buttons post with the CSRF cookie's token
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {"version": VERSION})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    """Unauthenticated, like /healthz, for the balancer or keepalived in front: 200 while
    every pool's DICOM listener answers an association and its DICOMweb listener (if any) an
    HTTP request, 503 otherwise, with the reasons.
    The database's state is in the body but does not decide (SynthIQ routes without it).
    The body carries generic reasons only, never an exception's text: that goes to the log."""
    global _database_error_logged
    listeners = readiness.registered()
    database = {"ok": True, "error": ""}
    try:
        # A query, not ensure_connection(): that trusts a persistent connection the server
        # may have ended; a cursor runs the health check (CONN_HEALTH_CHECKS) and reconnects.
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        _database_error_logged = ""
    except DatabaseError as exc:
        if repr(exc) != _database_error_logged:
            _database_error_logged = repr(exc)
            logger.warning("readyz database unreachable: %s", _database_error_logged)
        database = {"ok": False, "error": "database unreachable"}
    if listeners is None:  # this web process runs apart from runproxy: the pools it should find
        try:
            listeners = [readiness.Listener(p.id, p.ae_title, p.host, p.port, bool(p.tls))
                         for p in pool_selectors.pools_enabled()]
        except DatabaseError:
            return JsonResponse({"status": "unknown", "reason": "no runproxy in this process and the database "
                                 "is unreachable: cannot tell which listeners to check", "database": database},
                                status=503)
    pools = []
    for listener, why in zip(listeners, readiness.check_all(listeners), strict=True):
        pools.append({"pool": listener.pool_id, "service": listener.service,
                      "address": f"{listener.host}:{listener.port}", "accepting": not why, "reason": why})
    ready = bool(pools) and all(p["accepting"] for p in pools)
    return JsonResponse({"status": "ready" if ready else "not ready", "pools": pools, "database": database},
                        status=200 if ready else 503)


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Unauthenticated, like /healthz: scrapers carry no session. Exposes counts and
    backend ids, never study UIDs or anything about patients."""
    return HttpResponse(generate_latest(SynthIQCollector()), content_type=CONTENT_TYPE_LATEST)
