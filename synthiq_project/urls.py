from __future__ import annotations

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path


def healthz(request):
    """Liveness of the web process itself (unauthenticated, for load balancers)."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
]
