"""The operator dashboard (a page that polls the JSON APIs) and the Prometheus endpoint."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from routing.operator.metrics import SynthIQCollector
from synthiq_project.version import VERSION


@never_cache
@ensure_csrf_cookie  # the drain / enable buttons post with the CSRF cookie's token
@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "dashboard.html", {"version": VERSION})


@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    """Unauthenticated, like /healthz: scrapers carry no session. Exposes counts and
    backend ids, never study UIDs or anything about patients."""
    return HttpResponse(generate_latest(SynthIQCollector()), content_type=CONTENT_TYPE_LATEST)
