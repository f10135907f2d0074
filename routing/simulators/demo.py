"""The demo (``manage.py demo``, what ``make run`` starts): three simulated backends and
runproxy with the dashboard, on the embedded SQLite default."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from rest_framework.authtoken.models import Token

from routing.simulators import SimulatorError
from routing.simulators.backend import parse_address
from routing.simulators.processes import ROOT, port_open

NODES = ("a", "b", "c")
# Where the simulated backends send a C-MOVE by default: to DCMTK's movescu, which receives
# the instances itself when started with --port 11114 (the README's example).
MOVE_DESTINATION = "MOVESCU=127.0.0.1:11114"


def demo_run(*, dicom_port: int, http: str, backend_base_port: int, announce: Callable[[str], None],
             move_destinations: list[str] | None = None, commitment_requesters: list[str] | None = None) -> None:
    """Start the simulated backends, then run runproxy in this process until it stops.

    Backend n (1..3) listens on ``backend_base_port + n`` for DICOM and ``+ 100 + n`` for
    HTTP; node-c is a liveness backend, so the demo shows both kinds of load. Every backend
    stores what it receives, answers C-FIND, C-GET and storage commitment, and sends a
    C-MOVE to the ``move_destinations`` (``AE=host:port``; default MOVESCU at 127.0.0.1:11114);
    a commitment report whose requester has released goes to ``commitment_requesters`` (the
    backends' reports, and SynthIQ's own when it merges several backends' answers).
    """
    move_destinations = [MOVE_DESTINATION] if move_destinations is None else move_destinations
    services = [arg for text in move_destinations for arg in ("--move-destination", text)]
    services += [arg for text in commitment_requesters or [] for arg in ("--commitment-requester", text)]
    _ports_free(dicom_port=dicom_port, http=http, backend_base_port=backend_base_port)
    connection.ensure_connection()  # an unusable database is one line (manage.py) before any process starts
    config: dict[str, Any] = {
        "StudyCacheWindowHours": 96,
        "HeartbeatIntervalSeconds": 5,
        "HeartbeatTimeoutSeconds": 15,
        "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "0.0.0.0", "Port": dicom_port,
                   "AllowedCallingAeTitles": [], "Backends": [],
                   # SynthIQ's own (merged) commitment reports go there too.
                   "CommitmentRequesters": [{"AeTitle": ae, "Host": host, "Port": port}
                                            for ae, (host, port) in map(parse_address, commitment_requesters or [])]}],
    }
    children = []
    try:
        for n, name in enumerate(NODES, start=1):
            port, http_port = backend_base_port + n, backend_base_port + 100 + n
            ae = f"NODE{name.upper()}"
            health = ({"Mode": "liveness", "Probe": "echo"} if name == "c" else
                      {"Mode": "native", "Url": f"http://127.0.0.1:{http_port}/api/health"})
            config["Pools"][0]["Backends"].append(
                {"Id": f"node-{name}", "AeTitle": ae, "Host": "127.0.0.1", "Port": port,
                 "Weight": 1, "Enabled": True, "Health": health}
            )
            store = settings.VAR_DIR / "demo-store" / f"node-{name}"
            children.append(subprocess.Popen(
                [sys.executable, "manage.py", "runbackend", "--ae-title", ae, "--port", str(port),
                 "--http-port", str(http_port), "--store-dir", str(store), *services],
                cwd=ROOT,
            ))
        _wait_listening([b["Port"] for b in config["Pools"][0]["Backends"]], children)
        path = settings.VAR_DIR / "demo-config.json"
        path.write_text(json.dumps(config, indent=2))
        announce(_welcome(dicom_port=dicom_port, http=http, move_destinations=move_destinations, path=path))
        call_command("runproxy", config=str(path), http=http)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout=10)


def _welcome(*, dicom_port: int, http: str, move_destinations: list[str], path: Path) -> str:
    """What the demo prints once it is up: where to send, where to look, how to log in."""
    user, password = _demo_user()
    token = Token.objects.get_or_create(user=user)[0].key
    return (
        f"\nSynthIQ demo\n"
        f"  DICOM:     AE SYNTHIQ on port {dicom_port}  (storescu -aec SYNTHIQ 127.0.0.1 {dicom_port} FILE...)\n"
        f"  Services:  storage, C-ECHO, C-FIND, C-MOVE, C-GET, storage commitment (README: Two commands)\n"
        f"  C-MOVE to: {', '.join(move_destinations) or 'no destination (--move-destination AE=host:port)'}\n"
        f"  Dashboard: http://{http}/   log in as '{user.username}' / '{password}'\n"
        f"  API token: curl -H 'Authorization: Token {token}' http://{http}/api/status\n"
        f"  Config:    {path}\n"
    )


def _ports_free(*, dicom_port: int, http: str, backend_base_port: int) -> None:
    """Every port the demo needs is free, checked before the login changes or a process starts:
    a second demo must leave the first one (and the password it printed) alone."""
    host, _, http_port = http.rpartition(":")
    wanted = [("0.0.0.0", dicom_port, "the DICOM port (--dicom-port)"),
              (host or "127.0.0.1", int(http_port) if http_port.isdigit() else 0, "the dashboard (--http)")]
    wanted += [("127.0.0.1", backend_base_port + offset + n, "a simulated backend's (--backend-base-port)")
               for n in range(1, len(NODES) + 1) for offset in (0, 100)]
    for bind_host, port, what in wanted:
        with socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((bind_host, port))
            except OSError as exc:
                raise SimulatorError(
                    f"port {port}, {what}, is taken ({exc.strerror}): is a demo already running? Stop it, or pick "
                    "other ports: .venv/bin/python manage.py demo --dicom-port 11113 --http 127.0.0.1:8081 "
                    "--backend-base-port 11300") from None


def _wait_listening(ports: list[int], children: list[subprocess.Popen]) -> None:
    """Start routing only once the simulated backends accept connections."""
    deadline = time.monotonic() + 60
    for port in ports:
        while not port_open(port):
            if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                raise SimulatorError(f"simulated backend on port {port} did not start")
            time.sleep(0.1)


def _demo_user():
    """The admin user, with a fresh password each run (shown once in the banner)."""
    User = get_user_model()
    password = secrets.token_urlsafe(9)
    user, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
    user.set_password(password)
    user.save()
    return user, password
