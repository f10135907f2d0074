"""Shapes of the status and activity APIs."""

from __future__ import annotations

from rest_framework import serializers

from pools.serializers import BackendHealthSerializer
from routing.models import RoutingDecision
from routing.selectors import TIERS


class ProcessSerializer(serializers.Serializer):
    id = serializers.CharField()
    started_utc = serializers.DateTimeField()
    updated_utc = serializers.DateTimeField()
    db_ok = serializers.BooleanField()
    cache_size = serializers.IntegerField()
    open_associations = serializers.IntegerField()


class ListenerSerializer(serializers.Serializer):
    process = serializers.CharField()
    pool = serializers.CharField()
    ae_title = serializers.CharField()
    port = serializers.IntegerField(allow_null=True)
    accepting = serializers.BooleanField()


class RoutedSerializer(serializers.Serializer):
    """Instances by tier, keyed as the tiers are spelled everywhere else (logs, activity, metrics)."""

    def get_fields(self):
        return {tier: serializers.IntegerField() for tier in TIERS}


class CountersSerializer(serializers.Serializer):
    received = serializers.IntegerField(help_text="C-STOREs received.")
    succeeded = serializers.IntegerField(help_text="Backend answered 0x0000.")
    warnings = serializers.IntegerField(help_text="Backend answered a warning (0xB000/0xB006/0xB007).")
    failed = serializers.IntegerField(help_text="Failure status, from the backend or from SynthIQ.")
    associations = serializers.IntegerField(help_text="Inbound associations accepted.")
    open_associations = serializers.IntegerField()
    decisions = serializers.IntegerField(help_text="Routing decisions (first instance of a study on an association).")
    cache_hits = serializers.IntegerField(
        help_text="Instances that followed their association's cached route: no decision needed."
    )
    routed = RoutedSerializer(help_text="Instances by routing tier (keys: affinity-hit, least-busy, ...).")
    statuses = serializers.DictField(child=serializers.IntegerField())


class DatabaseErrorSerializer(serializers.Serializer):
    process = serializers.CharField()
    error = serializers.CharField(allow_blank=True)


class DatabaseSerializer(serializers.Serializer):
    ok = serializers.BooleanField(help_text="False when any live runproxy reports the database unreachable.")
    errors = DatabaseErrorSerializer(many=True)
    pending_bindings = serializers.IntegerField(help_text="Bindings held in memory until the database is back.")


class HeartbeatPoolSerializer(serializers.Serializer):
    pool = serializers.CharField()
    last_round_utc = serializers.DateTimeField(allow_null=True)
    age_seconds = serializers.FloatField(allow_null=True)
    stale = serializers.BooleanField()


class HeartbeatSerializer(serializers.Serializer):
    stale = serializers.BooleanField()
    source = serializers.ChoiceField(
        choices=["proxy", "database"], help_text="proxy: the flag runproxy publishes; database: heartbeat rounds' age."
    )
    mode = serializers.CharField(allow_blank=True, help_text="Who runs heartbeats (inline, celery), as published.")
    interval_seconds = serializers.FloatField()
    pools = HeartbeatPoolSerializer(many=True)


class BackendStatusSerializer(BackendHealthSerializer):
    id = serializers.CharField()
    pool = serializers.CharField()
    health_mode = serializers.CharField()
    enabled = serializers.BooleanField()
    draining = serializers.BooleanField()


class StatusSerializer(serializers.Serializer):
    generated_utc = serializers.DateTimeField()
    processes = ProcessSerializer(many=True, help_text="Live runproxy processes (published in the last 10 s).")
    listeners = ListenerSerializer(many=True)
    pools_without_listener = serializers.ListField(child=serializers.CharField())
    counters = CountersSerializer(help_text="Summed over the live runproxy processes.")
    cache_size = serializers.IntegerField(help_text="Entries in the hot caches of the live processes.")
    database = DatabaseSerializer()
    heartbeat = HeartbeatSerializer()
    backends = BackendStatusSerializer(many=True)


class DecisionSerializer(serializers.ModelSerializer):
    pool = serializers.CharField(source="pool_id")
    backend = serializers.CharField(source="backend_id")
    tier = serializers.CharField(source="reason")

    class Meta:
        model = RoutingDecision
        fields = (
            "id", "at_utc", "pool", "backend", "study_uid", "tier", "calling_ae", "source_ip", "modality", "process",
        )
        read_only_fields = fields
