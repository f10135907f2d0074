from __future__ import annotations

from django.contrib import admin
from django.http import JsonResponse
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from affinity.api import AffinityListView, CommitmentView, StudyExceptionsView, StudyView
from pools.api import BackendDrainView, BackendEnableView
from routing.operator.api import ActivityView, FailuresView, PoolsView, RejectionsView, StatusView
from routing.operator.views import dashboard, metrics, readyz

admin.site.site_header = admin.site.site_title = "SynthIQ administration"
admin.site.index_title = "SynthIQ: pools, bindings, health and routing activity"


def healthz(request):
    """Liveness of the web process itself (unauthenticated, for load balancers)."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    path("", dashboard, name="dashboard"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("admin/", admin.site.urls),
    path("api/schema", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/status", StatusView.as_view(), name="api-status"),
    path("api/pools", PoolsView.as_view(), name="api-pools"),
    path("api/backends/<str:backend_id>/drain", BackendDrainView.as_view(), name="api-backend-drain"),
    path("api/backends/<str:backend_id>/enable", BackendEnableView.as_view(), name="api-backend-enable"),
    path("api/affinity", AffinityListView.as_view(), name="api-affinity"),
    path("api/affinity/<str:study_uid>/commitment", CommitmentView.as_view(), name="api-commitment"),
    path("api/activity", ActivityView.as_view(), name="api-activity"),
    path("api/failures", FailuresView.as_view(), name="api-failures"),
    path("api/rejections", RejectionsView.as_view(), name="api-rejections"),
    path("api/studies", StudyExceptionsView.as_view(), name="api-studies"),
    path("api/studies/<str:study_uid>", StudyView.as_view(), name="api-study"),
]
