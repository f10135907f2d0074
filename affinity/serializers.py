"""Shapes of the affinity API."""

from __future__ import annotations

from rest_framework import serializers

from affinity.models import Binding, Verdict


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


class StudyPoolSerializer(serializers.Serializer):
    """A study's ledger entry in one pool."""

    pool = serializers.CharField(source="pool_id")
    backend = serializers.CharField(source="backend_id")
    verdict = serializers.ChoiceField(choices=Verdict.choices)
    acknowledged = serializers.IntegerField(
        help_text="Distinct instances SynthIQ relayed that the backend acknowledged (0 for an adopted study)")
    held = serializers.DictField(child=serializers.IntegerField(), help_text="Instances each backend held when "
                                 "verified ({} while unverified)")
    verified_utc = serializers.DateTimeField(allow_null=True)


class StudySerializer(serializers.Serializer):
    study_uid = serializers.CharField()
    pools = StudyPoolSerializer(many=True)


class StudyExceptionSerializer(StudyPoolSerializer):
    study_uid = serializers.CharField()


def ledger_entries(bindings: list[Binding], acknowledged: dict[tuple[str, str], int]) -> list[dict]:
    """The API's view of bindings: held {} and verified_utc null while unverified."""
    return [{"study_uid": b.study_uid, "pool_id": b.pool_id, "backend_id": b.backend_id, "verdict": b.verdict,
             "acknowledged": acknowledged.get((b.pool_id, b.study_uid), 0),
             "held": (b.held or {}) if b.verdict != Verdict.UNVERIFIED else {},
             "verified_utc": b.verified_utc if b.verdict != Verdict.UNVERIFIED else None} for b in bindings]
