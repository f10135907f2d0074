"""runbackend: a simulated PACS node (routing.simulators.backend) on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from routing.simulators import SimulatorError, backend

SERVICES = {"find": "find", "move": "move", "get": "get", "commitment": "storage_commitment"}


def _services(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in SERVICES]
    if unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown)}: expected none, or some of {', '.join(SERVICES)}")
    return tuple(SERVICES[n] for n in dict.fromkeys(names))


def _address(text: str) -> tuple[str, tuple[str, int]]:
    try:
        return backend.parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(BaseCommand):
    help = (
        "Run a simulated backend: a Storage SCP plus the native /api/health contract, answering C-FIND "
        "(Study and Patient Root, every level) from an in-memory index of what it received (kept in discard "
        "mode too), C-MOVE to the destinations given with --move-destination (others: 0xA801), C-GET, and "
        "storage commitment (N-EVENT-REPORT on the requester's association while it is open, else on a new "
        "one to the address given with --commitment-requester). In discard mode (no --store-dir) a C-MOVE "
        "or C-GET that matches anything fails with 0xA702: no data set was kept to send."
    )

    def add_arguments(self, parser):
        parser.add_argument("--ae-title", default="BACKEND")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--http-port", type=int, required=True)
        parser.add_argument("--store-dir", help="store received files here (default: discard them; the index of "
                                                "what was received is kept either way)")
        parser.add_argument("--latency-ms", type=float, default=0)
        parser.add_argument("--queue-depth", type=int, default=0)
        parser.add_argument("--capacity", type=int, default=50)
        parser.add_argument("--status", default="0x0000", help="forced C-STORE status, hex")
        parser.add_argument("--error-comment", default="")
        parser.add_argument("--max-pdu", type=int, default=262144,
                            help="the max PDU length this backend announces (0: no limit)")
        parser.add_argument("--move-destination", type=_address, action="append", default=[],
                            metavar="AE=HOST:PORT",
                            help="a C-MOVE destination this node may send to (repeatable); a C-MOVE to any other "
                                 "AE title is answered 0xA801 (Move Destination unknown)")
        parser.add_argument("--commitment-requester", type=_address, action="append", default=[],
                            metavar="AE=HOST:PORT",
                            help="where a storage commitment requester with this AE title listens (repeatable): "
                                 "its N-EVENT-REPORT goes there on a new association (SCP role proposed) when "
                                 "its own association has closed")
        parser.add_argument("--find-limit", type=int, default=0, metavar="N",
                            help="a C-FIND result cap, as a capped PACS has (Orthanc's LimitFindResults): a query "
                                 "with more than N matches gets N Pending responses, then 0xFE00 (matching "
                                 "terminated) although nobody cancelled; 0 (default): no cap")
        parser.add_argument("--services", type=_services, default=tuple(SERVICES.values()),
                            help="the services besides storage and C-ECHO this node offers, comma-separated: "
                                 f"{','.join(SERVICES)} (default: all), or none (a storage-only node: their "
                                 "presentation contexts are refused)")
        parser.add_argument("--commitment-delay-ms", type=float, default=200,
                            help="how long after the N-ACTION-RSP the storage commitment report is sent")

    def handle(self, *args, **o):
        if o["find_limit"] < 0:
            raise CommandError(f"--find-limit {o['find_limit']}: expected 0 (no cap) or more")
        knobs = {
            "latency_ms": o["latency_ms"], "queue_depth": o["queue_depth"], "capacity": o["capacity"],
            "status": int(o["status"], 16), "error_comment": o["error_comment"], "find_limit": o["find_limit"],
            "commitment_delay_ms": o["commitment_delay_ms"],
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
                move_destinations=dict(o["move_destination"]),
                commitment_requesters=dict(o["commitment_requester"]),
                offered=o["services"],
            )
        except SimulatorError as exc:
            raise CommandError(str(exc)) from None
