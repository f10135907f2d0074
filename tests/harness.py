"""Real processes on loopback for the tests: simulated backends, runproxy, DICOM senders.

Every process is started in its own process group and torn down with it, on failure too.
Ports are chosen free at run time. The process helpers themselves live in
routing/simulators/processes.py (bench/ uses them too); they are re-exported here.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from routing.simulators.processes import ROOT as ROOT
from routing.simulators.processes import Managed, MissingTool, find_tool, free_port, port_open, wait_for

PYTHON = sys.executable


def require_tool(name: str, debian_package: str) -> str:
    """Path of a tool the tests need. Missing is a failure, never a skip."""
    try:
        return find_tool(name, debian_package)
    except MissingTool as exc:
        pytest.fail(str(exc))


def dataset_digest(path: Path) -> str:
    """SHA-256 of a DICOM file's data set bytes (everything after the file meta)."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    with open(path, "rb") as fp:
        fp.seek(offset)
        return hashlib.sha256(fp.read()).hexdigest()


@dataclass
class BackendHandle:
    id: str
    ae_title: str
    port: int
    http_port: int
    process: Managed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def holdings(self) -> dict[str, dict[str, str]]:
        return requests.get(f"{self.url}/api/holdings", timeout=5).json()

    def control(self, **knobs: Any) -> None:
        requests.post(f"{self.url}/api/control", json=knobs, timeout=5).raise_for_status()

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "Id": self.id, "AeTitle": self.ae_title, "Host": "127.0.0.1", "Port": self.port,
            "Health": {"Mode": "native", "Url": f"{self.url}/api/health"},
        } | overrides


@dataclass
class ProxyHandle:
    port: int
    ae_title: str
    config_path: Path
    process: Managed
    http_port: int | None = None

    def restart(self) -> None:
        self.process.start()

    def worker_pids(self) -> list[int]:
        """The pids of runproxy's workers (``--workers N``), once there are any."""
        import psutil

        return wait_for(lambda: [c.pid for c in psutil.Process(self.process.proc.pid).children()] or None,
                        timeout=10, what="the workers")


# The demo starts three simulated backends and runproxy (with its probes): seconds on a quiet
# host, but a loaded CI host can take most of a minute.
DEMO_START_SECONDS = 90


@dataclass
class Cluster:
    """Factory for the processes of one test; everything it started stops with it."""

    tmp: Path
    env: dict[str, str]
    started: list[Managed] = field(default_factory=list)

    def _managed(self, name: str, argv: list[str], ready: str | None, env: dict[str, str] | None = None) -> Managed:
        m = Managed(name, argv, env or self.env, self.tmp / "logs" / f"{name}.log", ready)
        self.started.append(m)
        return m

    def backend(self, backend_id: str, *, store: bool = False, **knobs: Any) -> BackendHandle:
        port, http_port = free_port(), free_port()
        ae = backend_id.upper().replace("-", "")[:16]
        argv = [PYTHON, "manage.py", "runbackend", "--ae-title", ae, "--port", str(port),
                "--http-port", str(http_port)]
        if store:
            argv += ["--store-dir", str(self.tmp / "store" / backend_id)]
        for key, value in knobs.items():
            argv += [f"--{key.replace('_', '-')}", str(value)]
        m = self._managed(backend_id, argv, "runbackend ready").start()
        return BackendHandle(backend_id, ae, port, http_port, m)

    def config(self, backends: list[dict[str, Any]] | list[BackendHandle], **top: Any) -> dict[str, Any]:
        pool = {"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                "Backends": [b.config() if isinstance(b, BackendHandle) else b for b in backends]}
        pool |= top.pop("pool", {})
        return {"HeartbeatIntervalSeconds": 1, "HeartbeatTimeoutSeconds": 3} | top | {"Pools": [pool]}

    def proxy(self, config: dict[str, Any], *, name: str = "runproxy", http: bool = False,
              extra_env: dict[str, str] | None = None, max_file_bytes: int | None = None,
              open_files: int | None = None,
              extra_args: list[str] | None = None) -> ProxyHandle:
        path = self.tmp / f"{name}.json"
        path.write_text(json.dumps(config))
        pool = config["Pools"][0]
        argv = [PYTHON, "manage.py", "runproxy", "--config", str(path), *(extra_args or [])]
        http_port = None
        if http:
            http_port = free_port()
            argv += ["--http", f"127.0.0.1:{http_port}"]
        env = self.env | (extra_env or {})
        m = self._managed(name, argv, "runproxy ready", env)
        m.max_file_bytes = max_file_bytes
        m.open_files = open_files
        m.start()
        return ProxyHandle(pool["Port"], pool["AeTitle"], path, m, http_port)

    def process(self, name: str, argv: list[str], *, ready: str | None = None, timeout: float = 30) -> Managed:
        return self._managed(name, argv, ready).start(timeout=timeout)

    def stop_all(self) -> None:
        # Everything is told to stop first, then waited for: Orthancs take seconds each.
        for m in reversed(self.started):
            if m.proc is not None and m.proc.poll() is None:
                m.signal(signal.SIGTERM)
        for m in reversed(self.started):
            m.stop()


# -- a DICOM sender that sends files' bytes unchanged --------------------------------


@dataclass
class Sent:
    path: Path
    status: int
    comment: str = ""


def responses_to_the_caller(assoc: Any) -> Any:
    """Keep pynetdicom's reactor thread off the responses of a requestor that expects no
    request from its peer (a C-STORE sender); returns ``assoc``.

    A ``send_*()`` call pauses the reactor by clearing an event and waiting for the reactor's
    ``_is_paused`` flag, but the flag can still be True from the reactor's previous turn: the
    reactor then takes the response off the DIMSE queue itself and ``send_*()`` waits out its
    DIMSE timeout (seen under load: SynthIQ's C-STORE-RSP on the wire, the sender aborting
    60 s later). The reactor only ever needs a message here for a request from the peer,
    which these senders never get, so it is given none."""
    take = assoc.dimse.get_msg
    assoc.dimse.get_msg = lambda block=False: take(block) if block else (None, None)
    return assoc


def send_files(
    port: int,
    paths: list[Path],
    *,
    called_ae: str = "SYNTHIQ",
    calling_ae: str = "MODALITY",
    abort_after: int | None = None,
) -> list[Sent]:
    """Send files over one association with the file's own transfer syntax.

    The files' data set bytes go out as they are on disk (pynetdicom's chunked send),
    so a backend's digest can be compared with ``dataset_digest(path)``.
    """
    from pydicom import dcmread
    from pynetdicom import AE, _config, build_context

    _config.STORE_SEND_CHUNKED_DATASET = True
    contexts: dict[tuple[str, str], None] = {}
    for p in paths:
        meta = dcmread(p, stop_before_pixels=True).file_meta
        contexts[(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)] = None
    ae = AE(ae_title=calling_ae)
    ae.dimse_timeout = ae.network_timeout = ae.acse_timeout = 60
    assoc = ae.associate("127.0.0.1", port, contexts=[build_context(a, t) for a, t in contexts],
                         ae_title=called_ae)
    if not assoc.is_established:
        raise ConnectionError(f"association to {called_ae}@{port} not established")
    responses_to_the_caller(assoc)
    out = []
    try:
        for n, p in enumerate(paths):
            if abort_after is not None and n == abort_after:
                assoc.abort()
                return out
            rsp = assoc.send_c_store(p, msg_id=n % 65535 + 1)
            out.append(Sent(p, int(rsp.Status) if "Status" in rsp else -1, str(rsp.get("ErrorComment", ""))))
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def placement(backends: list[BackendHandle]) -> dict[str, set[str]]:
    """study uid -> ids of the backends holding any of its instances."""
    where: dict[str, set[str]] = {}
    for b in backends:
        for suid in b.holdings():
            where.setdefault(suid, set()).add(b.id)
    return where


def set_health(backend_ids, *, healthy: bool = True, load: float | None = 0.0, capacity: int | None = 50) -> None:
    """Health rows as the heartbeat service writes them, for tests of routing alone."""
    import datetime as dt

    from health.models import BackendHealth

    now = dt.datetime.now(dt.UTC)
    for backend_id in backend_ids:
        BackendHealth.objects.update_or_create(
            backend_id=getattr(backend_id, "id", backend_id),
            defaults={"healthy": healthy, "load": load, "capacity": capacity, "last_check_utc": now,
                      "last_ok_utc": now if healthy else None},
        )


# Children before parents: bindings, locations and health point at backends, backends at pools.
TABLES = ("routing.RoutingDecision", "routing.ProxyProcess", "affinity.Binding", "affinity.InstanceLocation",
          "affinity.AdoptionWindow", "affinity.Adoption",
          "health.BackendHealth", "health.HeartbeatRound", "pools.Backend", "pools.Pool")


def clean_database() -> None:
    """Empty every table the tests write (this process and its children share the database)."""
    from django.apps import apps

    for label in TABLES:
        apps.get_model(label).objects.all().delete()


def binding_of(study_uid: str, pool_id: str = "main") -> str | None:
    from affinity.models import Binding

    return Binding.objects.filter(pool_id=pool_id, study_uid=study_uid).values_list("backend_id", flat=True).first()


def wait_refreshed() -> None:
    """runproxy reloads backend state about once a second."""
    time.sleep(1.3)


# -- health peers: DCMTK's storescp and a real Orthanc ------------------------------------


def start_storescp(cluster: Cluster, *, name: str = "storescp", ae_title: str = "STORESCP",
                   port: int | None = None, extra: list[str] | None = None) -> tuple[int, Managed]:
    """DCMTK's storescp on a free (or the given) port, storing under cluster.tmp/<name>;
    it answers C-ECHO (a liveness peer) and, by default, takes uncompressed syntaxes only."""
    exe = require_tool("storescp", "dcmtk")
    port = port or free_port()
    out = cluster.tmp / name
    out.mkdir(parents=True, exist_ok=True)
    m = cluster.process(name, [exe, "--aetitle", ae_title, "--output-directory", str(out), *(extra or []), str(port)])
    wait_for(lambda: port_open(port), timeout=15, what=f"{name} to listen on {port}")
    return port, m


@dataclass
class OrthancHandle:
    http_port: int
    dicom_port: int
    ae_title: str
    process: Managed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, **kwargs: Any) -> Any:
        response = requests.request(method, self.url + path, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None


def orthanc_dicomweb_plugin() -> str:
    """The path of Orthanc's DICOMweb plugin (Debian's orthanc-dicomweb)."""
    found = subprocess.run(["dpkg", "-L", "orthanc-dicomweb"], capture_output=True, text=True)
    for line in found.stdout.splitlines():
        if line.endswith(".so") and "plugins" in line:
            return line
    pytest.fail("orthanc-dicomweb is not installed (requirements/apt.txt)")


def start_orthanc(cluster: Cluster, *, name: str = "orthanc", **options: Any) -> OrthancHandle:
    """A real Orthanc with its own generated configuration: free ports, storage under the
    test's tmp directory, loopback only, no authentication, no plugins."""
    exe = require_tool("Orthanc", "orthanc")
    http_port, dicom_port = free_port(), free_port()
    storage = cluster.tmp / name
    config = {
        "Name": name, "HttpPort": http_port, "DicomPort": dicom_port, "DicomAet": "ORTHANC",
        "StorageDirectory": str(storage), "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
    } | options
    path = cluster.tmp / f"{name}.json"
    path.write_text(json.dumps(config))
    m = cluster.process(name, [exe, str(path)], ready="Orthanc has started")
    return OrthancHandle(config["HttpPort"], config["DicomPort"], config["DicomAet"], m)


class OwnPostgres:
    """A PostgreSQL database of one test's own, migrated, that the test can take away
    (``down``: connections refused, open ones ended) and give back (``up``)."""

    def __init__(self, cluster: Cluster):
        import os
        import subprocess

        import psycopg

        from tests.conftest import PG_ADMIN_URL

        self.admin_url = PG_ADMIN_URL
        self.name = f"synthiq_own_{os.getpid()}_{time.monotonic_ns()}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{self.name}"')
        self.url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{self.name}"
        self.env = {"DATABASE_URL": self.url}
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=cluster.env | self.env, check=True)

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            for statement in statements:
                admin.execute(statement)

    def down(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false',
                    f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{self.name}'")

    def up(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true')

    def rows(self, sql: str) -> list[tuple]:
        import psycopg

        with psycopg.connect(self.url) as conn:
            return conn.execute(sql).fetchall()

    def drop(self) -> None:
        self._admin(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true',
                    f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
