"""Affinity API: bindings (paged, searchable by SUID prefix) and storage commitment.

A backend reports that it durably committed a study with its own token
(``Authorization: Bearer <Backend.commitment_token>``); users read the state with a
DRF token or a session.
"""

from __future__ import annotations

import datetime as dt
import logging

from django.contrib.auth.models import AnonymousUser
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import authentication, exceptions, permissions
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.generics import ListAPIView
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from affinity import selectors, services
from affinity.models import Verdict
from affinity.serializers import (
    BindingSerializer,
    CommitmentSerializer,
    StudyExceptionSerializer,
    StudySerializer,
    ledger_entries,
)
from pools import selectors as pool_selectors
from pools.models import Backend
from synthiq_project.authentication import ThrottledTokenAuthentication, token_guessing_guard

logger = logging.getLogger("synthiq.affinity")


class BindingPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


class AffinityListView(ListAPIView):
    serializer_class = BindingSerializer
    pagination_class = BindingPagination

    @extend_schema(
        operation_id="affinity_list",
        summary="Study bindings, most recently seen first",
        parameters=[
            OpenApiParameter("search", OpenApiTypes.STR, description="Study Instance UID prefix"),
            OpenApiParameter("pool", OpenApiTypes.STR),
            OpenApiParameter("backend", OpenApiTypes.STR),
            OpenApiParameter("committed", OpenApiTypes.BOOL),
        ],
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = self.request.query_params
        committed_raw = params.get("committed", "")
        if committed_raw and committed_raw.lower() not in _BOOL:
            raise ValidationError({"committed": "expected true or false"})
        return selectors.bindings_search(
            study_uid_prefix=params.get("search", "").strip(),
            pool_id=params.get("pool", ""),
            backend_id=params.get("backend", ""),
            committed=_BOOL[committed_raw.lower()] if committed_raw else None,
        )


# -- the study ledger ------------------------------------------------------------

EXCEPTIONS = (Verdict.MISSING, Verdict.SPLIT)


class StudyView(APIView):
    @extend_schema(
        operation_id="study_get",
        summary="Where a study is bound in each pool, and whether it is whole there",
        responses={200: StudySerializer, 404: OpenApiResponse(description="no pool has this study")},
    )
    def get(self, request: Request, study_uid: str) -> Response:
        bindings = selectors.bindings_of_study(study_uid=study_uid)
        if not bindings:
            raise NotFound(f"study {study_uid} is not bound in any pool")
        counts = selectors.acknowledged_counts(keys=[(b.pool_id, b.study_uid) for b in bindings])
        return Response(StudySerializer({"study_uid": study_uid, "pools": ledger_entries(bindings, counts)}).data)


class StudyExceptionsView(ListAPIView):
    serializer_class = StudyExceptionSerializer
    pagination_class = BindingPagination

    @extend_schema(
        operation_id="study_exceptions",
        summary="Studies that are not whole (missing or split), by Study Instance UID",
        parameters=[
            OpenApiParameter("verdict", OpenApiTypes.STR, enum=[v.value for v in EXCEPTIONS],
                             description="one verdict (default: both)"),
            OpenApiParameter("pool", OpenApiTypes.STR),
        ],
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        verdict = self.request.query_params.get("verdict", "")
        if verdict and verdict not in EXCEPTIONS:
            raise ValidationError({"verdict": f"expected one of {', '.join(EXCEPTIONS)}"})
        return selectors.bindings_with_verdict(verdicts=[verdict] if verdict else list(EXCEPTIONS),
                                               pool_id=self.request.query_params.get("pool", ""))

    def paginate_queryset(self, queryset):
        page = super().paginate_queryset(queryset)
        if page is None:
            return None
        counts = selectors.acknowledged_counts(keys=[(b.pool_id, b.study_uid) for b in page])
        return ledger_entries(page, counts)


# -- storage commitment ----------------------------------------------------------


class BackendPrincipal(AnonymousUser):
    """The identity of a backend that authenticated with its commitment token. Not a
    user: it can do exactly one thing (report commitment), checked by IsReportingBackend."""

    def __init__(self, backend: Backend):
        super().__init__()
        self.backend = backend

    @property
    def is_authenticated(self) -> bool:  # type: ignore[override]
        return True

    def get_username(self) -> str:
        return f"backend:{self.backend.id}"


class BackendTokenAuthentication(authentication.BaseAuthentication):
    """``Authorization: Bearer <commitment token>``; other schemes are left to the next class."""

    keyword = "Bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Bearer header: expected `Bearer <token>`")
        with token_guessing_guard(request):  # guessed tokens lock the address out, as for API tokens
            try:
                token = parts[1].decode()
            except UnicodeError:
                raise exceptions.AuthenticationFailed("Bearer token: not valid text") from None
            backend = pool_selectors.backend_by_commitment_token(token=token)
            if backend is None:  # matched by its keyed hash, compared in constant time, enabled backends only
                raise exceptions.AuthenticationFailed("unknown backend token")
        return BackendPrincipal(backend), token

    def authenticate_header(self, request) -> str:
        return self.keyword


class BackendTokenScheme(OpenApiAuthenticationExtension):
    target_class = "affinity.api.BackendTokenAuthentication"
    name = "backendToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A backend's commitment token"}


class CommitmentPermission(permissions.BasePermission):
    """GET: a user (token or session). POST: only a backend, with its own token."""

    def has_permission(self, request, view) -> bool:
        if request.method == "POST":
            if not isinstance(request.user, BackendPrincipal):
                raise PermissionDenied("commitment is reported by a backend with `Authorization: Bearer <token>`")
            return True
        return bool(request.user and request.user.is_authenticated and not isinstance(request.user, BackendPrincipal))


class CommitmentView(APIView):
    authentication_classes = (
        BackendTokenAuthentication,
        ThrottledTokenAuthentication,
        authentication.SessionAuthentication,
    )
    permission_classes = (CommitmentPermission,)

    @extend_schema(
        operation_id="commitment_get",
        summary="Storage commitment state of a study (one binding per pool it was seen in)",
        responses={200: CommitmentSerializer, 404: OpenApiResponse(description="study not bound")},
    )
    def get(self, request: Request, study_uid: str) -> Response:
        bindings = selectors.bindings_of_study(study_uid=study_uid)
        if not bindings:
            raise NotFound(f"study {study_uid} is not bound in any pool")
        return Response(_commitment(study_uid, bindings))

    @extend_schema(
        operation_id="commitment_report",
        summary="A backend reports it has durably committed the study (its own token)",
        request=None,
        responses={
            200: CommitmentSerializer,
            403: OpenApiResponse(description="the study is bound to another backend"),
            404: OpenApiResponse(description="study not bound in this backend's pool"),
        },
    )
    def post(self, request: Request, study_uid: str) -> Response:
        backend: Backend = request.user.backend
        binding = selectors.binding_of_study_in_pool(pool_id=backend.pool_id, study_uid=study_uid)
        if binding is None:
            raise NotFound(f"study {study_uid} is not bound in pool {backend.pool_id}")
        if binding.backend_id != backend.id:
            logger.warning(
                "backend=%s reported commitment of study=%s bound to backend=%s: refused",
                backend.id, study_uid, binding.backend_id,
            )
            raise PermissionDenied("the study is bound to another backend")
        # Conditional on the binding still naming this backend (a concurrent rebind wins).
        if not services.binding_commit(
            pool_id=backend.pool_id, study_uid=study_uid, backend_id=backend.id, now=dt.datetime.now(dt.UTC)
        ):
            raise PermissionDenied("the study is bound to another backend")
        logger.info("backend=%s committed study=%s pool=%s", backend.id, study_uid, backend.pool_id)
        return Response(_commitment(study_uid, selectors.bindings_of_study(study_uid=study_uid)))


def _commitment(study_uid: str, bindings) -> dict:
    return CommitmentSerializer(
        {"study_uid": study_uid, "committed": all(b.committed_utc for b in bindings), "bindings": bindings}
    ).data
