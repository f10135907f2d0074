"""Shapes of the status, pools overview and activity APIs."""

from __future__ import annotations

from rest_framework import serializers

from pools.models import Backend
from routing.models import RoutingDecision
from routing.waterfall import TIERS


class BackendHealthSerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["healthy", "unhealthy", "stale", "unknown"],
        help_text="stale: the last heartbeat was good but older than the heartbeat timeout; "
        "unknown: no heartbeat result yet.",
    )
    healthy = serializers.BooleanField(help_text="What the router uses: a good heartbeat within the timeout.")
    down_since_utc = serializers.DateTimeField(
        allow_null=True,
        help_text="When unhealthy or stale: its last good heartbeat, since when the router does not trust it; "
        "null when healthy, unknown, or it never answered a heartbeat.",
    )
    load = serializers.FloatField(
        allow_null=True, help_text="Normalized load (depth / capacity); null when not reported or the backend is "
        "not healthy (unknown, never 0)."
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


class PoolServiceSerializer(serializers.Serializer):
    service = serializers.ChoiceField(choices=["find", "move", "get", "storage_commitment"],
                                      help_text="As Pools[].Services spells it.")
    label = serializers.CharField()
    offered = serializers.BooleanField(help_text="Passed to the pool's backends: its presentation contexts accepted.")
    known = serializers.BooleanField(help_text="False when no live runproxy process serving the pool published it.")
    why = serializers.CharField(help_text="Who offers it, or why it is not offered (switched off, no backend "
                                          "offers it, backends not asked yet).")
    operations = serializers.IntegerField(help_text="Operations counted by the live processes (all pools).")
    failed = serializers.IntegerField()


class PoolSerializer(serializers.Serializer):
    id = serializers.CharField()
    ae_title = serializers.CharField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    enabled = serializers.BooleanField()
    backends = BackendSerializer(many=True)
    services = PoolServiceSerializer(many=True, help_text="Non-storage services; storage and C-ECHO always pass.")
    degraded = serializers.ListField(
        child=serializers.CharField(),
        help_text="Why the pool is degraded (a backend down, no backend in service, the database unreachable, "
                  "heartbeats stale); empty when it is not.")


class ProcessSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="The runproxy process or worker, as host:pid.")
    started_utc = serializers.DateTimeField()
    updated_utc = serializers.DateTimeField(help_text="When it last published (every 2 s while it runs).")
    db_ok = serializers.BooleanField(help_text="Its last database write succeeded.")
    cache_size = serializers.IntegerField(help_text="Studies in its hot cache.")
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
    held = serializers.IntegerField(help_text="Associations held while their study's backend was unreachable "
                                              "(Network.BoundBackendHoldSeconds).")
    rejected = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Inbound associations rejected (A-ASSOCIATE-RJ) by reason: called-ae, calling-ae, "
                  "association-limit, stopping, protocol-version, application-context.")
    operations = serializers.DictField(
        child=serializers.DictField(child=serializers.IntegerField()),
        help_text="Query, retrieve and storage commitment operations by service (C-FIND, C-MOVE, C-GET, N-ACTION) "
                  "and final status class.")


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


class BackendRateSerializer(serializers.Serializer):
    instances_per_s = serializers.FloatField(help_text="C-STOREs the backend answered, per second.")
    mb_per_s = serializers.FloatField(help_text="Data set bytes relayed to it, in MB (10^6 bytes) per second.")


class RatePointSerializer(serializers.Serializer):
    t = serializers.DateTimeField(help_text="The sampling slot the rates end in.")
    instances_per_s = serializers.FloatField(help_text="C-STOREs received per second.")
    mb_per_s = serializers.FloatField(help_text="Data set bytes relayed to backends, in MB (10^6 bytes) per second.")
    failures_per_s = serializers.FloatField(help_text="C-STOREs answered with a failure status, per second.")
    backends = serializers.DictField(child=BackendRateSerializer(), help_text="By backend id.")


class RatesSerializer(serializers.Serializer):
    interval_seconds = serializers.FloatField(
        help_text="The sampling slot (SYNTHIQ_RATE_SAMPLE_SECONDS of runproxy, 10 by default)."
    )
    points = RatePointSerializer(
        many=True,
        help_text="Oldest first, the last 90 slots (15 minutes by default), summed over the live runproxy "
        "processes. A slot no process sampled is absent.",
    )


class CallingAeSerializer(serializers.Serializer):
    calling_ae = serializers.CharField(allow_blank=True)
    studies = serializers.IntegerField(help_text="Distinct studies it sent that were routed (first instances).")
    last_seen_utc = serializers.DateTimeField(help_text="Its latest routing decision or rejection.")
    backends = serializers.ListField(child=serializers.CharField(), help_text="Where its studies were routed.")
    rejected = serializers.IntegerField(help_text="Its associations rejected (A-ASSOCIATE-RJ), over those kept.")
    rejected_last_utc = serializers.DateTimeField(allow_null=True, help_text="Its latest rejection.")


class TierSerializer(serializers.Serializer):
    id = serializers.CharField()
    label = serializers.CharField()


class StatusSerializer(serializers.Serializer):
    generated_utc = serializers.DateTimeField()
    version = serializers.CharField(help_text="SynthIQ's version (the web process's).")
    tiers = TierSerializer(many=True, help_text="The routing tiers, in display order, with their labels.")
    processes = ProcessSerializer(many=True, help_text="Live runproxy processes (published in the last 10 s).")
    listeners = ListenerSerializer(many=True)
    pools_without_listener = serializers.ListField(child=serializers.CharField())
    counters = CountersSerializer(help_text="Summed over the live runproxy processes.")
    cache_size = serializers.IntegerField(help_text="Entries in the hot caches of the live processes.")
    database = DatabaseSerializer()
    heartbeat = HeartbeatSerializer()
    backends = BackendStatusSerializer(many=True)
    rates = RatesSerializer(help_text="Instances, MB and failures per second over the last 15 minutes.")
    calling_aes = CallingAeSerializer(
        many=True,
        help_text="Per calling AE title, over the routing decisions kept (7 days) and the rejected associations "
        "kept, most recently seen first (at most 100).",
    )


class FailureSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    at_utc = serializers.DateTimeField()
    pool = serializers.CharField()
    service = serializers.CharField()
    calling_ae = serializers.CharField(allow_blank=True, help_text="The sender's AE title.")
    source_ip = serializers.CharField(allow_blank=True, help_text="The sender's address.")
    study_uid = serializers.CharField(allow_blank=True, help_text="Blank when not read or not a valid UID.")
    sop_instance_uid = serializers.CharField(allow_blank=True)
    backend = serializers.CharField(allow_blank=True, help_text="Blank when no backend was chosen.")
    status = serializers.IntegerField(help_text="The status the sender was answered.")
    status_hex = serializers.CharField()
    meaning = serializers.CharField(help_text="What the status means (PS3.4).")
    origin = serializers.ChoiceField(choices=["backend", "synthiq"], help_text="Who answered it.")
    cause = serializers.CharField(allow_blank=True, help_text="Why SynthIQ answered it (blank for a backend's).")
    comment = serializers.CharField(allow_blank=True, help_text="The Error Comment sent with it.")


class RejectionSerializer(serializers.Serializer):
    pool = serializers.CharField()
    reason = serializers.CharField(help_text="called-ae, calling-ae, association-limit, address-limit, "
                                             "source-address, tls-*, ... or presentation-context.")
    reason_label = serializers.CharField()
    rejected = serializers.BooleanField(help_text="True: an A-ASSOCIATE-RJ or a refused connection; false: the "
                                                  "association was accepted, the services it asked for refused.")
    calling_ae = serializers.CharField(allow_blank=True)
    called_ae = serializers.CharField(allow_blank=True)
    source_ip = serializers.CharField(allow_blank=True, help_text="* counts callers beyond those recorded one by one.")
    detail = serializers.CharField(allow_blank=True)
    count = serializers.IntegerField()
    first_seen_utc = serializers.DateTimeField()
    last_seen_utc = serializers.DateTimeField()


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
