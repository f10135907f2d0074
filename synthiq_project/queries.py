"""Query helpers the apps' selectors share."""

from __future__ import annotations

from typing import Any, TypeVar

from django.db.models import Model, QuerySet

M = TypeVar("M", bound=Model)


def filtered(qs: QuerySet[M], **lookups: Any) -> QuerySet[M]:
    """``qs`` narrowed by each lookup that was given: "" and None mean "any" (a search form's empty fields)."""
    given = {lookup: value for lookup, value in lookups.items() if value is not None and value != ""}
    return qs.filter(**given) if given else qs
