"""Shapes of the pools API."""

from __future__ import annotations

from rest_framework import serializers

from pools.models import Backend


class BackendStateSerializer(serializers.ModelSerializer):
    """A backend's runtime state after a drain / enable."""

    class Meta:
        model = Backend
        fields = ("id", "pool", "enabled", "draining")
        read_only_fields = fields
