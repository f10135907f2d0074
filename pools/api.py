"""Backends' runtime state through the API: drain / enable (the overview lives in routing.operator)."""

from __future__ import annotations

import logging

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pools import selectors, services
from pools.serializers import BackendStateSerializer

logger = logging.getLogger("synthiq.pools")


class _BackendDrainingView(APIView):
    # Draining changes where studies go: staff only. The dashboard's button posts with a
    # staff session (the admin login form admits nobody else); a non-staff token gets 403.
    permission_classes = [IsAdminUser]
    draining: bool

    def post(self, request: Request, backend_id: str) -> Response:
        if not services.backend_set_draining(backend_id=backend_id, draining=self.draining):
            raise NotFound(f"no backend {backend_id!r}")
        logger.warning(
            "backend=%s draining=%s set by user=%s", backend_id, self.draining, request.user.get_username()
        )
        return Response(BackendStateSerializer(selectors.backend_get(backend_id=backend_id)).data)


class BackendDrainView(_BackendDrainingView):
    draining = True

    @extend_schema(
        operation_id="backend_drain",
        summary="Drain a backend: it takes no new studies but keeps receiving its bound ones",
        request=None,
        responses=BackendStateSerializer,
    )
    def post(self, request: Request, backend_id: str) -> Response:
        return super().post(request, backend_id)


class BackendEnableView(_BackendDrainingView):
    draining = False

    @extend_schema(
        operation_id="backend_enable",
        summary="Stop draining a backend: it takes new studies again",
        request=None,
        responses=BackendStateSerializer,
    )
    def post(self, request: Request, backend_id: str) -> Response:
        return super().post(request, backend_id)
