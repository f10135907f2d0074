"""Status, pools overview and activity APIs: what the runproxy processes are doing right now."""

from __future__ import annotations

import datetime as dt

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from routing.operator import selectors
from routing.operator.serializers import (
    DecisionSerializer,
    FailureSerializer,
    PoolSerializer,
    RejectionSerializer,
    StatusSerializer,
)
from routing.waterfall import DECISION_TIERS

ACTIVITY_DEFAULT_LIMIT = 50
ACTIVITY_MAX_LIMIT = 500
# The query parameters the recent-activity lists share.
LIMIT = OpenApiParameter("limit", OpenApiTypes.INT,
                         description=f"1-{ACTIVITY_MAX_LIMIT}, default {ACTIVITY_DEFAULT_LIMIT}")
POOL = OpenApiParameter("pool", OpenApiTypes.STR)
BACKEND = OpenApiParameter("backend", OpenApiTypes.STR)


def _int_param(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError({name: f"expected an integer {minimum}-{maximum}"}) from None
    if not minimum <= value <= maximum:
        raise ValidationError({name: f"expected an integer {minimum}-{maximum}"})
    return value


def _limit(request: Request) -> int:
    return _int_param(request, "limit", default=ACTIVITY_DEFAULT_LIMIT, minimum=1, maximum=ACTIVITY_MAX_LIMIT)


class StatusView(APIView):
    @extend_schema(
        operation_id="status",
        summary="Aggregate status of every live runproxy process",
        responses=StatusSerializer,
    )
    def get(self, request: Request) -> Response:
        snapshot = selectors.status_snapshot(now=dt.datetime.now(dt.UTC))
        return Response(StatusSerializer(snapshot).data)


class PoolsView(APIView):
    @extend_schema(
        operation_id="pools",
        summary="Pools and their backends: mode, health, load (null = unknown), weight, draining, counters",
        responses=PoolSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        pools = selectors.pools_overview(now=dt.datetime.now(dt.UTC))
        return Response(PoolSerializer(pools, many=True).data)


class ActivityView(APIView):
    @extend_schema(
        operation_id="activity",
        summary="Recent first-instance routing decisions, newest first",
        parameters=[
            LIMIT, POOL, BACKEND,
            OpenApiParameter("tier", OpenApiTypes.STR, enum=list(DECISION_TIERS)),
        ],
        responses=inline_serializer("Activity", {"results": DecisionSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        limit = _limit(request)
        tier = request.query_params.get("tier", "")
        if tier and tier not in DECISION_TIERS:
            raise ValidationError({"tier": f"one of {', '.join(DECISION_TIERS)}"})
        decisions = selectors.routing_decisions_recent(
            pool_id=request.query_params.get("pool", ""),
            backend_id=request.query_params.get("backend", ""),
            reason=tier,
        )[:limit]
        return Response({"results": DecisionSerializer(decisions, many=True).data})


class FailuresView(APIView):
    @extend_schema(
        operation_id="failures",
        summary="Recent failed operations (who sent it, the study, the backend, the status and its meaning), "
        "newest first",
        parameters=[
            LIMIT, POOL, BACKEND,
        ],
        responses=inline_serializer("Failures", {"results": FailureSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        limit = _limit(request)
        failures = selectors.failed_operations_recent(
            pool_id=request.query_params.get("pool", ""), backend_id=request.query_params.get("backend", ""),
        )[:limit]
        return Response({"results": FailureSerializer([selectors.failure_view(f) for f in failures], many=True).data})


class RejectionsView(APIView):
    @extend_schema(
        operation_id="rejections",
        summary="Rejected associations and refused services: who, from where, why, how often; most recently "
        "seen first",
        parameters=[
            LIMIT, POOL,
        ],
        responses=inline_serializer("Rejections", {"results": RejectionSerializer(many=True)}),
    )
    def get(self, request: Request) -> Response:
        limit = _limit(request)
        rows = selectors.rejected_associations_recent(pool_id=request.query_params.get("pool", ""))[:limit]
        return Response({"results": RejectionSerializer([selectors.rejection_view(r) for r in rows], many=True).data})
