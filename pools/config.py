"""The JSON configuration file: parsing and whole-file validation with key-path errors.

Validation is done by DRF serializers (the stack already has them); their nested error
dicts are flattened into lines such as ``Pools[0].Backends[1].Port: must be 1-65535``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rest_framework import serializers

AE_MAX = 16
PORT_MSG = "must be 1-65535"


class ConfigError(Exception):
    """An invalid configuration file; ``errors`` holds one ``path: message`` per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


def _port_field(**kw) -> serializers.IntegerField:
    return serializers.IntegerField(
        min_value=1,
        max_value=65535,
        error_messages={"min_value": PORT_MSG, "max_value": PORT_MSG, "invalid": PORT_MSG},
        **kw,
    )


def _ae_title(value: str) -> str:
    if not value.strip() or len(value) > AE_MAX or "\\" in value or not value.isascii():
        raise serializers.ValidationError("must be 1-16 ASCII characters, no backslash")
    return value.strip()


class StrictSerializer(serializers.Serializer):
    """Unknown keys are errors: a typo in a key must not silently drop a setting."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({k: ["unknown key"] for k in unknown})
        return super().to_internal_value(data)


class TlsSerializer(StrictSerializer):
    Certificate = serializers.CharField(required=False)
    Key = serializers.CharField(required=False)
    CA = serializers.CharField(required=False)
    RequireClientCertificate = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs):
        for key in ("Certificate", "Key", "CA"):
            if key in attrs and not Path(attrs[key]).is_file():
                raise serializers.ValidationError({key: [f"file not found: {attrs[key]}"]})
        return attrs


class HealthSerializer(StrictSerializer):
    Mode = serializers.ChoiceField(choices=["native", "certified", "adapter", "liveness"])
    Url = serializers.URLField(required=False)
    Probe = serializers.ChoiceField(choices=["echo", "tcp", "http"], required=False)
    Adapter = serializers.ChoiceField(choices=["orthanc"], required=False)
    Username = serializers.CharField(required=False)
    Password = serializers.CharField(required=False)
    # Adapter mode: the denominator when the vendor's metrics do not carry one
    # (Orthanc: its "ConcurrentJobs" option, 2 by default).
    Capacity = serializers.IntegerField(required=False, min_value=1)

    def validate(self, attrs):
        mode = attrs["Mode"]
        needs_url = mode in ("native", "certified", "adapter") or attrs.get("Probe") == "http"
        if needs_url and not attrs.get("Url"):
            raise serializers.ValidationError({"Url": [f"required for {mode} health"]})
        if mode == "adapter" and not attrs.get("Adapter"):
            raise serializers.ValidationError({"Adapter": ["required for adapter health"]})
        if mode == "liveness":
            attrs.setdefault("Probe", "echo")
        return attrs


class BackendSerializer(StrictSerializer):
    Id = serializers.SlugField(max_length=64)
    AeTitle = serializers.CharField(validators=[_ae_title])
    Host = serializers.CharField()
    Port = _port_field()
    Weight = serializers.IntegerField(min_value=1, max_value=1000, default=1)
    Enabled = serializers.BooleanField(default=True)
    Health = HealthSerializer(required=False)
    Tls = TlsSerializer(required=False)
    # Token the backend uses to report storage commitment over HTTP.
    CommitmentToken = serializers.CharField(required=False, min_length=16)


class PoolSerializer(StrictSerializer):
    Id = serializers.SlugField(max_length=64)
    AeTitle = serializers.CharField(validators=[_ae_title])
    Host = serializers.CharField(default="0.0.0.0")
    Port = _port_field()
    AllowedCallingAeTitles = serializers.ListField(
        child=serializers.CharField(validators=[_ae_title]), default=list
    )
    Backends = BackendSerializer(many=True, allow_empty=False)
    Tls = TlsSerializer(required=False)


class NetworkSerializer(StrictSerializer):
    """Timeouts and limits of the DICOM side, with safe defaults."""

    AcseTimeoutSeconds = serializers.FloatField(min_value=1, default=30)
    DimseTimeoutSeconds = serializers.FloatField(min_value=1, default=600)
    NetworkTimeoutSeconds = serializers.FloatField(min_value=1, default=600)
    ConnectTimeoutSeconds = serializers.FloatField(min_value=0.5, default=10)
    MaxAssociations = serializers.IntegerField(min_value=1, max_value=10000, default=64)
    MaxPduBytes = serializers.IntegerField(min_value=4096, max_value=16 * 1024 * 1024, default=262144)
    # The front door: connections that have not finished association negotiation.
    HandshakeTimeoutSeconds = serializers.FloatField(min_value=0.5, default=10)
    MaxPendingAssociations = serializers.IntegerField(min_value=1, max_value=100000, default=256)
    MaxPendingPerAddress = serializers.IntegerField(min_value=1, max_value=100000, default=32)
    # Outbound associations: how long a backend may take to answer A-RELEASE, and how long
    # an unused one stays open (below common PACS idle timeouts: Orthanc's is 30 s).
    ReleaseTimeoutSeconds = serializers.FloatField(min_value=0.1, default=5)
    OutboundIdleSeconds = serializers.FloatField(min_value=0.1, default=20)
    # Data set bytes held while a C-STORE's Study Instance UID is looked for.
    HeaderHoldBytes = serializers.IntegerField(min_value=16384, max_value=64 * 1024 * 1024, default=1 << 20)


class ConfigSerializer(StrictSerializer):
    StudyCacheWindowHours = serializers.FloatField(min_value=0.01, default=96)
    HeartbeatIntervalSeconds = serializers.FloatField(min_value=0.2, default=5)
    HeartbeatTimeoutSeconds = serializers.FloatField(min_value=0.5, default=15)
    Network = NetworkSerializer(required=False)
    Pools = serializers.ListField(child=PoolSerializer(), allow_empty=False)

    def validate(self, attrs):
        attrs.setdefault("Network", NetworkSerializer(data={}).run_validation({}))
        errors: dict[str, Any] = {}
        if attrs["HeartbeatTimeoutSeconds"] < attrs["HeartbeatIntervalSeconds"]:
            errors["HeartbeatTimeoutSeconds"] = ["must be >= HeartbeatIntervalSeconds"]
        seen_pools, seen_backends, seen_listeners = set(), set(), set()
        for i, pool in enumerate(attrs["Pools"]):
            if pool["Id"] in seen_pools:
                errors[f"Pools[{i}].Id"] = [f"duplicate pool id {pool['Id']!r}"]
            seen_pools.add(pool["Id"])
            if pool["Port"] in seen_listeners:
                errors[f"Pools[{i}].Port"] = [f"port {pool['Port']} used by another pool"]
            seen_listeners.add(pool["Port"])
            for j, backend in enumerate(pool["Backends"]):
                if backend["Id"] in seen_backends:
                    errors[f"Pools[{i}].Backends[{j}].Id"] = [
                        f"duplicate backend id {backend['Id']!r} (ids are unique across pools)"
                    ]
                seen_backends.add(backend["Id"])
                backend.setdefault("Health", {"Mode": "liveness", "Probe": "echo"})
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


def _flatten(detail: Any, path: str = "") -> list[str]:
    if isinstance(detail, dict):
        out: list[str] = []
        for key, value in detail.items():
            if key == "non_field_errors":
                out += _flatten(value, path)
            elif isinstance(key, int):
                out += _flatten(value, f"{path}[{key}]")
            else:
                # Keys produced by our own validate() already carry their full sub-path.
                out += _flatten(value, f"{path}.{key}" if path else str(key))
        return out
    if isinstance(detail, list):
        if all(isinstance(x, str) for x in detail):
            return [f"{path or '(top level)'}: {msg}" for msg in detail]
        out = []
        for i, item in enumerate(detail):
            if item:
                out += _flatten(item, f"{path}[{i}]")
        return out
    return [f"{path or '(top level)'}: {detail}"]


@dataclass(frozen=True)
class Config:
    raw: dict[str, Any]

    @property
    def pools(self) -> list[dict[str, Any]]:
        return self.raw["Pools"]

    @property
    def network(self) -> dict[str, Any]:
        return self.raw["Network"]

    @property
    def study_cache_window_hours(self) -> float:
        return self.raw["StudyCacheWindowHours"]

    @property
    def heartbeat_interval(self) -> float:
        return self.raw["HeartbeatIntervalSeconds"]

    @property
    def heartbeat_timeout(self) -> float:
        return self.raw["HeartbeatTimeoutSeconds"]


def config_parse(*, data: Any) -> Config:
    serializer = ConfigSerializer(data=data)
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a JSON object"])
    if not serializer.is_valid():
        raise ConfigError(_flatten(serializer.errors))
    return Config(raw=json.loads(json.dumps(serializer.validated_data)))


def config_load(*, path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"]) from exc
    return config_parse(data=data)
