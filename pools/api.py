"""Pools API: configuration, runtime state, health and live counters; drain / enable."""

from __future__ import annotations

import datetime as dt
import logging

from drf_spectacular.utils import extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from pools import selectors, services
from pools.serializers import BackendStateSerializer, PoolSerializer
from routing import selectors as routing_selectors

logger = logging.getLogger("synthiq.pools")


class PoolsView(APIView):
    @extend_schema(
        operation_id="pools",
        summary="Pools and their backends: mode, health, load (null = unknown), weight, draining, counters",
        responses=PoolSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        pools = routing_selectors.pools_overview(now=dt.datetime.now(dt.UTC))
        return Response(PoolSerializer(pools, many=True).data)


class _BackendDrainingView(APIView):
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
