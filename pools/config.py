"""The JSON configuration file as a typed model (pydantic v2), validated as a whole.

The file's keys are PascalCase (``"HeartbeatIntervalSeconds"``); the code reads the
model's attributes (``config.heartbeat_interval_seconds``). Types are strict — a port
written as the string ``"11202"`` is an error, not a quiet conversion — unknown keys are
errors (a typo must not silently drop a setting), and every default is held here, once.
Every problem in the file is reported at once as ``key.path: message`` lines, e.g.
``Pools[0].Backends[1].Port: must be 1-65535`` or
``Pools[0].Port: expected an integer, got the string '11202'``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, IPvAnyNetwork, ValidationError, model_validator
from pydantic.alias_generators import to_pascal
from pydantic.functional_validators import AfterValidator
from pydantic_core import ErrorDetails, PydanticCustomError

AE_MAX = 16


class ConfigError(Exception):
    """An invalid configuration file; ``errors`` holds one ``path: message`` per problem."""

    def __init__(self, errors: list[str]):
        self.errors = errors
        super().__init__("; ".join(errors))


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise PydanticCustomError("port", "must be 1-65535")
    return value


def _ae_title(value: str) -> str:
    if not value.strip() or len(value) > AE_MAX or "\\" in value or not value.isascii():
        raise PydanticCustomError("ae_title", "must be 1-16 ASCII characters, no backslash")
    return value.strip()


def _existing_file(value: str) -> str:
    if not Path(value).is_file():
        raise PydanticCustomError("file", "file not found: {path}", {"path": value})
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or len(value) < 10:
        raise PydanticCustomError("url", "must be an http:// or https:// URL")
    if "@" in urlsplit(value).netloc:
        # A URL is shown in logs, errors and the admin: a password inside it would be too.
        raise PydanticCustomError("url", "credentials inside the URL: put them in Username and Password")
    return value


Port = Annotated[int, AfterValidator(_port)]
AeTitle = Annotated[str, AfterValidator(_ae_title)]
Slug = Annotated[str, Field(pattern=r"^[-a-zA-Z0-9_]+$", min_length=1, max_length=64)]
FilePath = Annotated[str, AfterValidator(_existing_file)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]


class Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, alias_generator=to_pascal)


class TlsConfig(Model):
    """DICOM TLS: inbound (a pool's certificate and key, optional client-certificate
    requirement) or outbound (the backend's CA, optional client certificate)."""

    certificate: FilePath | None = None
    key: FilePath | None = None
    ca: FilePath | None = Field(default=None, alias="CA")
    require_client_certificate: bool = False


class HealthConfig(Model):
    mode: Literal["native", "certified", "adapter", "liveness"] = "liveness"
    url: HttpUrl | None = None
    probe: Literal["echo", "tcp", "http"] = "echo"
    adapter: Literal["orthanc"] | None = None
    username: str | None = None
    password: str | None = None
    # Basic credentials over plain http:// are readable by anyone on the path: refused
    # unless the operator says the network is trusted.
    allow_plain_http_credentials: bool = False
    # Adapter mode: the denominator when the vendor's metrics lack one (Orthanc's
    # "ConcurrentJobs" option, 2 by default).
    capacity: Annotated[int, Field(ge=1)] | None = None

    @model_validator(mode="after")
    def _needs(self) -> HealthConfig:
        if (self.mode in ("native", "certified", "adapter") or self.probe == "http") and not self.url:
            raise PydanticCustomError("needs", "Url: required for {mode} health", {"mode": self.mode})
        if self.mode == "adapter" and not self.adapter:
            raise PydanticCustomError("needs", "Adapter: required for adapter health")
        return self


class BackendConfig(Model):
    id: Slug
    ae_title: AeTitle
    host: Annotated[str, Field(min_length=1)]
    port: Port
    weight: Annotated[int, Field(ge=1, le=1000)] = 1
    enabled: bool = True
    health: HealthConfig = HealthConfig()
    tls: TlsConfig | None = None
    # The token the backend uses to report storage commitment over HTTP.
    commitment_token: Annotated[str, Field(min_length=16)] | None = None
    # DICOMweb: the backend's base URL (STOW-RS, QIDO-RS and WADO-RS are under it) and the
    # Basic credentials SynthIQ uses there; required when the pool has DicomWeb.
    dicom_web_url: HttpUrl | None = None
    dicom_web_username: Annotated[str, Field(min_length=1)] | None = None
    dicom_web_password: Annotated[str, Field(min_length=1)] | None = None


class ServicesConfig(Model):
    """Which non-storage services a pool passes to its backends (each only if a backend
    offers it: runproxy asks them at start). Storage and C-ECHO always pass."""

    find: bool = True
    move: bool = True
    get: bool = True
    storage_commitment: bool = True


class CommitmentRequesterConfig(Model):
    """Where a storage commitment requester (a modality, a PACS node) takes its
    N-EVENT-REPORT on a new association: SynthIQ's own report goes there."""

    ae_title: AeTitle
    host: Annotated[str, Field(min_length=1)]
    port: Port


def _base_path(value: str) -> str:
    if not value.startswith("/") or value.endswith("/") and value != "/" or "//" in value or not value.isascii() \
            or any(c in value for c in "?#% ") or len(value) > 200:
        raise PydanticCustomError("base_path", "must be an absolute path like /dicom-web (no trailing slash)")
    return "" if value == "/" else value


class DicomWebConfig(Model):
    """A pool's DICOMweb front door (STOW-RS, QIDO-RS, WADO-RS) on its own port."""

    port: Port
    host: Annotated[str, Field(min_length=1)] | None = None  # None: the pool's Host
    base_path: Annotated[str, AfterValidator(_base_path)] = "/dicom-web"
    tls: TlsConfig | None = None
    # A STOW-RS body longer than this is refused (413) and its requests to the backends are
    # cut. Memory does not grow with it (bodies are streamed): it bounds the disk and time one
    # request may take. 8 GiB: past any single study a modality or uploader sends at once.
    max_body_bytes: Annotated[int, Field(ge=1024)] = 8 << 30


class PoolConfig(Model):
    id: Slug
    ae_title: AeTitle
    host: str = "0.0.0.0"
    port: Port
    allowed_calling_ae_titles: tuple[AeTitle, ...] = ()
    # Called AE titles accepted besides AeTitle (a drop-in keeps the titles modalities were set
    # up with: the PACS's own, a cluster title); "*" accepts any. Case-sensitive (PS3.8).
    accepted_called_ae_titles: tuple[AeTitle, ...] = ()
    # Source networks (CIDR) allowed to connect, checked before a byte is read; empty: any.
    allowed_sources: tuple[IPvAnyNetwork, ...] = ()
    backends: Annotated[tuple[BackendConfig, ...], Field(min_length=1)]
    tls: TlsConfig | None = None
    services: ServicesConfig = ServicesConfig()
    commitment_requesters: tuple[CommitmentRequesterConfig, ...] = ()
    dicom_web: DicomWebConfig | None = None

    @property
    def dicom_web_host(self) -> str:
        return (self.dicom_web.host if self.dicom_web and self.dicom_web.host else None) or self.host


class NetworkConfig(Model):
    """Timeouts and limits of the DICOM side, with safe defaults."""

    acse_timeout_seconds: Annotated[float, Field(ge=1)] = 30
    dimse_timeout_seconds: Annotated[float, Field(ge=1)] = 600
    network_timeout_seconds: Annotated[float, Field(ge=1)] = 600
    connect_timeout_seconds: Annotated[float, Field(ge=0.5)] = 10
    max_associations: Annotated[int, Field(ge=1, le=10000)] = 64
    # Established associations from one source address, across every worker; unset: a
    # quarter of MaxAssociations, so one host (a stuck modality, a scanner) cannot take
    # every slot. Raise it for a router or a NAT in front of many modalities.
    max_associations_per_address: Annotated[int, Field(ge=1, le=10000)] | None = None
    # An established association with nothing in flight is closed after this long. 60 s:
    # past the pauses a modality makes within a study (reconstructing the next series) and
    # the 30-60 s idle limits PACS apply themselves (Orthanc 30 s, pynetdicom 60 s), far
    # below NetworkTimeoutSeconds, which bounds a wait while an operation is in flight.
    idle_timeout_seconds: Annotated[float, Field(ge=1)] = 60
    max_pdu_bytes: Annotated[int, Field(ge=4096, le=16 * 1024 * 1024)] = 262144
    # The front door: connections that have not finished association negotiation.
    handshake_timeout_seconds: Annotated[float, Field(ge=0.5)] = 10
    max_pending_associations: Annotated[int, Field(ge=1, le=100000)] = 256
    max_pending_per_address: Annotated[int, Field(ge=1, le=100000)] = 32
    # Outbound associations: how long a backend may take to answer A-RELEASE, and how
    # long an unused one stays open (below common PACS idle timeouts: Orthanc's is 30 s).
    release_timeout_seconds: Annotated[float, Field(ge=0.1)] = 5
    outbound_idle_seconds: Annotated[float, Field(ge=0.1)] = 20
    # Data set bytes held while a C-STORE's Study Instance UID is looked for.
    header_hold_bytes: Annotated[int, Field(ge=16384, le=64 * 1024 * 1024)] = 1 << 20
    # A study's backend that cannot be reached is retried this long before the C-STORE
    # fails (0xA701), the modality's association held meanwhile (nothing buffered: its
    # socket is simply not read). Well under modalities' usual 30-60 s DIMSE timeouts.
    bound_backend_hold_seconds: Annotated[float, Field(ge=0, le=120)] = 10
    # Associations of one pool held that way at once, at most (others fail at once).
    max_held_associations: Annotated[int, Field(ge=0, le=10000)] = 32


class ReconciliationConfig(Model):
    """The study ledger's verification: when a study is checked against its backends, and
    how hard a production PACS may be asked."""

    # A study is verified once nothing arrived for it this long. 300 s: past the pauses a
    # modality makes within a study (the next series reconstructing, a technologist's
    # break between acquisitions, the 60 s idle close and a new association), so a study
    # is rarely judged half-sent; short enough that a verdict is there minutes after the
    # exam. A study that does get more instances is simply verified again once quiet.
    quiet_seconds: Annotated[float, Field(ge=0.5)] = 300
    # Every verdict is checked again after this long (a backend may lose or purge later).
    reverify_hours: Annotated[float, Field(gt=0)] = 24
    # Also ask the pool's other healthy backends what they hold of the study (split).
    check_other_backends: bool = True
    # Queries to one backend per second at most, and queries in flight at once.
    max_queries_per_second: Annotated[float, Field(gt=0, le=1000)] = 5
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2


class AuditTlsConfig(Model):
    """TLS to the audit record repository (RFC 5425): its CA, and this node's certificate
    and key (ATNA node authentication: both or neither)."""

    certificate: FilePath | None = None
    key: FilePath | None = None
    ca: FilePath = Field(alias="CA")

    @model_validator(mode="after")
    def _pair(self) -> AuditTlsConfig:
        if (self.certificate is None) != (self.key is None):
            raise PydanticCustomError("needs", "Key: Certificate and Key go together")
        return self


class AuditConfig(Model):
    """IHE ATNA audit messages (DICOM PS3.15 A.5) over syslog to the audit record repository;
    audit is off when the block is absent."""

    host: Annotated[str, Field(min_length=1, max_length=255)]
    port: Port | None = None  # 6514 over TLS, 514 over UDP
    transport: Literal["tls", "udp"] = "tls"
    tls: AuditTlsConfig | None = None
    site_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None  # AuditEnterpriseSiteID

    @model_validator(mode="after")
    def _needs(self) -> AuditConfig:
        if self.transport == "tls" and self.tls is None:
            raise PydanticCustomError("needs", "Tls: required for the tls transport (its CA at least)")
        if self.transport == "udp" and self.tls is not None:
            raise PydanticCustomError("needs", "Tls: not used by the udp transport")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or (6514 if self.transport == "tls" else 514)


class Config(Model):
    study_cache_window_hours: Annotated[float, Field(ge=0.01)] = 96
    heartbeat_interval_seconds: Annotated[float, Field(ge=0.2)] = 5
    heartbeat_timeout_seconds: Annotated[float, Field(ge=0.5)] = 15
    network: NetworkConfig = NetworkConfig()
    reconciliation: ReconciliationConfig = ReconciliationConfig()
    pools: Annotated[tuple[PoolConfig, ...], Field(min_length=1)]
    audit: AuditConfig | None = None

    def backend(self, backend_id: str) -> BackendConfig | None:
        return next((b for p in self.pools for b in p.backends if b.id == backend_id), None)


# Keys whose values are secrets, in the file's spelling: a diff or an error says that
# one changed or is wrong, never what it holds.
SECRET_KEYS = frozenset({"CommitmentToken", "Password", "DicomWebPassword"})

DEFAULTS = {name: field.default for name, field in Config.model_fields.items()
            if name not in ("pools", "audit") and not isinstance(field.default, Model)}


# -- reading errors -----------------------------------------------------------------------

_EXPECTED = {
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "tuple_type": "a list", "list_type": "a list", "model_type": "an object", "dict_type": "an object",
    "model_attributes_type": "an object",
}


def _described(value: Any, *, secret: bool = False) -> str:
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, str):
        return "a string" if secret else f"the string {value!r}"
    if isinstance(value, int | float):
        return "a number" if secret else f"the number {value!r}"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _message(error: ErrorDetails, *, secret: bool) -> str:
    kind = error["type"]
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_described(error['input'], secret=secret)}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}, got {_described(error['input'], secret=secret)}"
    if kind == "greater_than":
        return f"must be > {error['ctx']['gt']}"
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = error["ctx"]["ge" if kind == "greater_than_equal" else "le"]
        return f"must be {'>=' if kind == 'greater_than_equal' else '<='} {bound}"
    if kind == "too_short":
        return "must not be empty"
    if kind == "string_pattern_mismatch":
        return "must be letters, digits, '-' or '_'"
    return str(error["msg"])


def _path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not str(part).startswith(("function-", "tagged-")):  # pydantic's validator steps
            path += f".{part}" if path else str(part)
    return path


def _lines(exc: ValidationError) -> list[str]:
    out = []
    for error in exc.errors(include_url=False):
        if error["type"] == "too_short" and error["input"]:
            continue  # pydantic counts only the valid items: the invalid ones are reported already
        path = _path(error["loc"])
        message = _message(error, secret=path.rsplit(".", 1)[-1] in SECRET_KEYS)
        if error["type"] == "needs":  # "Key: message" from a model validator names its own key
            key, message = message.split(": ", 1)
            path = f"{path}.{key}" if path else key
        out.append(f"{path or '(top level)'}: {message}")
    return out


def _cross_checks(config: Config) -> list[str]:
    """What no single field can know: unique ids, ports and commitment tokens, timeout vs
    interval, credentials vs the scheme of the health Url."""
    errors = []
    if config.heartbeat_timeout_seconds < config.heartbeat_interval_seconds:
        errors.append("HeartbeatTimeoutSeconds: must be >= HeartbeatIntervalSeconds")
    pools: set[str] = set()
    ports: set[int] = set()
    backends: set[str] = set()
    tokens: dict[str, str] = {}
    for i, pool in enumerate(config.pools):
        if pool.id in pools:
            errors.append(f"Pools[{i}].Id: duplicate pool id {pool.id!r}")
        if pool.port in ports:
            errors.append(f"Pools[{i}].Port: port {pool.port} used by another pool")
        pools.add(pool.id)
        ports.add(pool.port)
        errors += _dicom_web_errors(pool, where=f"Pools[{i}]", ports=ports)
        requesters = [r.ae_title for r in pool.commitment_requesters]
        for k, ae_title in enumerate(requesters):
            if ae_title in requesters[:k]:
                errors.append(f"Pools[{i}].CommitmentRequesters[{k}].AeTitle: {ae_title!r} listed twice")
        for j, backend in enumerate(pool.backends):
            if backend.id in backends:
                errors.append(f"Pools[{i}].Backends[{j}].Id: duplicate backend id {backend.id!r} "
                              "(ids are unique across pools)")
            backends.add(backend.id)
            where = f"Pools[{i}].Backends[{j}]"
            if backend.commitment_token:
                # The token is the backend's identity on the commitment endpoint: shared, it
                # would let one backend commit the other's studies. The value is never echoed.
                if backend.commitment_token in tokens:
                    errors.append(f"{where}.CommitmentToken: the same token as backend "
                                  f"{tokens[backend.commitment_token]!r} (each backend needs its own)")
                tokens.setdefault(backend.commitment_token, backend.id)
            errors += _health_credentials_errors(backend.health, where=f"{where}.Health")
    return errors


def _dicom_web_errors(pool: PoolConfig, *, where: str, ports: set[int]) -> list[str]:
    """A pool's DICOMweb port is its own, and each of its backends has a DICOMweb URL;
    stored credentials come as a pair."""
    errors = []
    if pool.dicom_web is not None:
        if pool.dicom_web.port in ports:
            errors.append(f"{where}.DicomWeb.Port: port {pool.dicom_web.port} used by another listener")
        ports.add(pool.dicom_web.port)
    for j, backend in enumerate(pool.backends):
        if pool.dicom_web is not None and backend.dicom_web_url is None:
            errors.append(f"{where}.Backends[{j}].DicomWebUrl: required (the pool has DicomWeb)")
        if (backend.dicom_web_username is None) != (backend.dicom_web_password is None):
            errors.append(f"{where}.Backends[{j}].DicomWebUsername: DicomWebUsername and DicomWebPassword "
                          "go together")
    return errors


def _health_credentials_errors(health: HealthConfig, *, where: str) -> list[str]:
    """Basic credentials travel in clear over http://: refused unless the operator opted in."""
    has_credentials = health.username is not None or health.password is not None
    if (has_credentials and health.url and health.url.startswith("http://")
            and not health.allow_plain_http_credentials):
        return [f"{where}.Url: credentials over plain http://; use https:// or set "
                "Health.AllowPlainHttpCredentials to true"]
    return []


def config_parse(*, data: Any) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(["(top level): must be a JSON object"])
    try:
        # Validated as JSON (strict JSON types: a list is a list, "5" is not a number).
        config = Config.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise ConfigError(_lines(exc)) from None
    errors = _cross_checks(config)
    if errors:
        raise ConfigError(errors)
    return config


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


def differences(old: Any, new: Any, path: str = "") -> list[str]:
    """What changed between two configs (or their JSON), one line per key path, in the
    file's own spelling: ``Pools[main].AllowedCallingAeTitles: [] -> ['CT01']``. Lists of
    objects with an ``Id`` are matched by id (``Pools[main]: added``). A secret (a key in
    SECRET_KEYS) is only said to have changed: these lines go to logs and terminals."""
    if isinstance(old, Config) or isinstance(new, Config):
        old, new = (c.model_dump(mode="json", by_alias=True) if isinstance(c, Config) else c for c in (old, new))
    if isinstance(old, dict) and isinstance(new, dict):
        return [line for key in dict.fromkeys([*old, *new])
                for line in differences(old.get(key), new.get(key), f"{path}.{key}" if path else key)]
    if _by_id(old) is not None and _by_id(new) is not None:
        before, after = _by_id(old), _by_id(new)
        assert before is not None and after is not None
        lines = []
        for key in dict.fromkeys([*before, *after]):
            where = f"{path}[{key}]"
            if key not in before:
                lines.append(f"{where}: added")
            elif key not in after:
                lines.append(f"{where}: removed")
            else:
                lines += differences(before[key], after[key], where)
        return lines
    if old == new:
        return []
    if path.rsplit(".", 1)[-1] in SECRET_KEYS:
        return [f"{path}: changed"]
    return [f"{path}: {_masked(old)!r} -> {_masked(new)!r}"]


def _masked(value: Any) -> Any:
    """A value with the secrets inside it replaced (a whole section that appeared, say)."""
    if isinstance(value, dict):
        return {k: ("(set)" if v else v) if k in SECRET_KEYS else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _by_id(value: Any) -> dict[str, Any] | None:
    if isinstance(value, list) and all(isinstance(v, dict) and "Id" in v for v in value):
        return {v["Id"]: v for v in value}
    return None
