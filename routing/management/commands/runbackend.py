"""runbackend: a simulated PACS node (routing.simulators.backend) on the command line."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from routing.simulators import SimulatorError, backend


class Command(BaseCommand):
    help = "Run a simulated backend: Storage SCP plus the native /api/health contract."

    def add_arguments(self, parser):
        parser.add_argument("--ae-title", default="BACKEND")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--http-port", type=int, required=True)
        parser.add_argument("--store-dir", help="store received files here (default: discard)")
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--queue-depth", type=int, default=0)
        parser.add_argument("--capacity", type=int, default=50)
        parser.add_argument("--status", default="0x0000", help="forced C-STORE status, hex")
        parser.add_argument("--error-comment", default="")
        parser.add_argument("--max-pdu", type=int, default=262144,
                            help="the max PDU length this backend announces (0: no limit)")

    def handle(self, *args, **o):
        knobs = {
            "latency_ms": o["latency_ms"], "queue_depth": o["queue_depth"], "capacity": o["capacity"],
            "status": int(o["status"], 16), "error_comment": o["error_comment"],
        }

        def announce(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            backend.serve(
                ae_title=o["ae_title"],
                host=o["host"],
                port=o["port"],
                http_port=o["http_port"],
                store_dir=Path(o["store_dir"]) if o["store_dir"] else None,
                knobs=knobs,
                announce=announce,
                max_pdu=o["max_pdu"],
            )
        except SimulatorError as exc:
            raise CommandError(str(exc)) from None
