"""Shapes of the pools API (read-only views of what routing.selectors.pools_overview builds)."""

from __future__ import annotations

from rest_framework import serializers

from pools.models import Backend


class BackendHealthSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["healthy", "unhealthy", "stale", "unknown"],
        help_text="stale: the last heartbeat was good but older than the heartbeat timeout; "
        "unknown: no heartbeat result yet.",
    )
    healthy = serializers.BooleanField(help_text="What the router uses: a good heartbeat within the timeout.")
    load = serializers.FloatField(
        allow_null=True, help_text="Normalized load (depth / capacity); null when not reported (unknown, never 0)."
    )
    queue_depth = serializers.IntegerField(allow_null=True)
    capacity = serializers.IntegerField(allow_null=True)
    last_ok_utc = serializers.DateTimeField(allow_null=True)
    last_check_utc = serializers.DateTimeField(allow_null=True)
    last_error = serializers.CharField(allow_blank=True)


class BackendCountersSerializer(serializers.Serializer):
    forwarded = serializers.IntegerField(help_text="C-STOREs the backend answered (any status).")
    failed = serializers.IntegerField(help_text="C-STOREs that ended in a failure status.")
    statuses = serializers.DictField(child=serializers.IntegerField(), help_text="Counts by status class.")
    mean_forward_ms = serializers.FloatField(allow_null=True)


class BackendSerializer(serializers.Serializer):
    id = serializers.CharField()
    ae_title = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    weight = serializers.IntegerField()
    enabled = serializers.BooleanField(help_text="From the configuration file.")
    draining = serializers.BooleanField(help_text="Runtime state: takes no new studies, keeps its bound ones.")
    health_mode = serializers.ChoiceField(choices=Backend.HealthMode.choices)
    load_reported = serializers.BooleanField()
    health = BackendHealthSerializer()
    counters = BackendCountersSerializer(help_text="Summed over the live runproxy processes.")


class PoolSerializer(serializers.Serializer):
    id = serializers.CharField()
    ae_title = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    enabled = serializers.BooleanField()
    backends = BackendSerializer(many=True)


class BackendStateSerializer(serializers.ModelSerializer):
    """A backend's runtime state after a drain / enable."""

    class Meta:
        model = Backend
        fields = ("id", "pool", "enabled", "draining")
        read_only_fields = fields
