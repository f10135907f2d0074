"""demo: three simulated backends and runproxy with the dashboard, on the embedded
SQLite default. What `make run` starts."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import time

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Run the SynthIQ demo: 3 simulated backends + runproxy + dashboard."

    def add_arguments(self, parser):
        parser.add_argument("--dicom-port", type=int, default=11112)
        parser.add_argument("--http", default="127.0.0.1:8080")
        parser.add_argument("--backend-base-port", type=int, default=11200,
                            help="backends use base+1..3 for DICOM and base+101..103 for HTTP")

    def handle(self, *args, dicom_port, http, backend_base_port, **options):
        config = {
            "StudyCacheWindowHours": 96,
            "HeartbeatIntervalSeconds": 5,
            "HeartbeatTimeoutSeconds": 15,
            "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "0.0.0.0", "Port": dicom_port,
                       "AllowedCallingAeTitles": [], "Backends": []}],
        }
        children = []
        for n, name in enumerate(("a", "b", "c"), start=1):
            port, http_port = backend_base_port + n, backend_base_port + 100 + n
            ae = f"NODE{name.upper()}"
            health = ({"Mode": "liveness", "Probe": "echo"} if name == "c" else
                      {"Mode": "native", "Url": f"http://127.0.0.1:{http_port}/api/health"})
            config["Pools"][0]["Backends"].append(
                {"Id": f"node-{name}", "AeTitle": ae, "Host": "127.0.0.1", "Port": port,
                 "Weight": 1, "Enabled": True, "Health": health}
            )
            children.append(subprocess.Popen(
                [sys.executable, "manage.py", "runbackend", "--ae-title", ae, "--port", str(port),
                 "--http-port", str(http_port), "--store-dir", str(settings.VAR_DIR / "demo-store" / f"node-{name}")],
            ))
        self._wait_listening([b["Port"] for b in config["Pools"][0]["Backends"]], children)
        path = settings.VAR_DIR / "demo-config.json"
        path.write_text(json.dumps(config, indent=2))
        user, password = self._demo_user()
        token = Token.objects.get_or_create(user=user)[0].key
        self.stdout.write(
            f"\nSynthIQ demo\n"
            f"  DICOM:     AE SYNTHIQ on port {dicom_port}  (storescu -aec SYNTHIQ 127.0.0.1 {dicom_port} FILE...)\n"
            f"  Dashboard: http://{http}/   log in as '{user.username}' / '{password}'\n"
            f"  API token: curl -H 'Authorization: Token {token}' http://{http}/api/status\n"
            f"  Config:    {path}\n"
        )
        try:
            call_command("runproxy", config=str(path), http=http)
        finally:
            for child in children:
                child.terminate()
            for child in children:
                child.wait(timeout=10)

    def _wait_listening(self, ports: list[int], children: list[subprocess.Popen]) -> None:
        """Start routing only once the simulated backends accept connections."""
        deadline = time.monotonic() + 60
        for port in ports:
            while True:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline or any(c.poll() is not None for c in children):
                    raise CommandError(f"simulated backend on port {port} did not start")
                time.sleep(0.1)

    def _demo_user(self):
        User = get_user_model()
        password = secrets.token_urlsafe(9)
        user, _ = User.objects.get_or_create(username="admin", defaults={"is_staff": True, "is_superuser": True})
        user.set_password(password)
        user.save()
        return user, password
