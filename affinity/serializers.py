"""Shapes of the affinity API."""

from __future__ import annotations

from rest_framework import serializers

from affinity.models import Binding


class BindingSerializer(serializers.ModelSerializer):
    pool = serializers.CharField(source="pool_id")
    backend = serializers.CharField(source="backend_id")
    committed = serializers.SerializerMethodField()

    class Meta:
        model = Binding
        fields = (
            "study_uid", "pool", "backend", "first_seen_utc", "last_seen_utc", "instance_count",
            "committed", "committed_utc",
        )
        read_only_fields = fields

    def get_committed(self, obj: Binding) -> bool:
        return obj.committed_utc is not None


class CommitmentSerializer(serializers.Serializer):
    study_uid = serializers.CharField()
    committed = serializers.BooleanField(help_text="True when every pool's bound backend has committed it.")
    bindings = BindingSerializer(many=True)
