"""loadtest: the load generator (routing.simulators.loadtest) on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from routing.simulators import SimulatorError
from routing.simulators.loadtest import load_run, studies_prepared, summary_text


class Command(BaseCommand):
    help = "Send studies through a pool with N concurrent associations and report throughput and latency."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1", help="address of the pool (or backend) to send to")
        parser.add_argument("--port", type=int, required=True, help="its DICOM port")
        parser.add_argument("--called-ae", default="SYNTHIQ", help="its AE title")
        parser.add_argument("--calling-ae", default="LOADTEST", help="the senders' AE title")
        parser.add_argument("--associations", type=int, default=4, help="concurrent senders")
        parser.add_argument("--split", type=int, default=2, help="associations each study is split over")
        parser.add_argument("--studies", type=int, default=4, help="synthetic studies")
        parser.add_argument("--instances", type=int, default=100, help="instances per synthetic study")
        parser.add_argument("--rows", type=int, default=512, help="rows of each synthetic image (16-bit pixels)")
        parser.add_argument("--columns", type=int, default=512, help="columns of each synthetic image")
        parser.add_argument("--folder", type=Path, help="send this folder's DICOM files instead")
        parser.add_argument("--keep", type=Path, help="write synthetic files here and keep them")
        parser.add_argument(
            "--sender",
            choices=["pynetdicom", "storescu"],
            default="pynetdicom",
            help="pynetdicom (per-instance latency) or DCMTK's storescu (one process per association)",
        )
        parser.add_argument("--nagle", action="store_true",
                            help="storescu: keep DCMTK's default sockets (Nagle on) instead of TCP_NODELAY=1")
        parser.add_argument("--tls", nargs=3, metavar=("KEY", "CERT", "CA"),
                            help="storescu: DICOM TLS with this client key and certificate, trusting this CA")
        parser.add_argument("--max-pdu", type=int, default=262144, help="largest PDU this side accepts")
        parser.add_argument(
            "--backend-url",
            action="append",
            default=[],
            help="HTTP base URL of a simulated backend (repeat), to count split studies",
        )
        parser.add_argument(
            "--reset-holdings", action="store_true", help="clear the simulated backends' holdings before sending"
        )
        parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
        parser.add_argument("--no-progress", action="store_true", help="no progress bar (it goes to stderr)")

    def handle(self, *args, **o):
        if o["associations"] < 1 or o["split"] < 1:
            raise CommandError("--associations and --split must be at least 1")
        try:
            with studies_prepared(
                folder=o["folder"], keep=o["keep"], studies=o["studies"], instances=o["instances"],
                rows=o["rows"], columns=o["columns"],
            ) as studies:
                summary = load_run(
                    studies=studies,
                    host=o["host"],
                    port=o["port"],
                    called_ae=o["called_ae"],
                    calling_ae=o["calling_ae"],
                    associations=o["associations"],
                    split=o["split"],
                    sender=o["sender"],
                    nagle=o["nagle"],
                    max_pdu=o["max_pdu"],
                    backend_urls=o["backend_url"],
                    reset_holdings=o["reset_holdings"],
                    progress=not o["no_progress"],
                    tls=tuple(o["tls"]) if o["tls"] else None,
                )
        except SimulatorError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(summary_text(summary))
        if o["json"]:
            o["json"].write_text(json.dumps(summary, indent=2))
        if summary["failed"] or summary["errors"]:
            raise CommandError(f"{summary['failed']} instance(s) not stored; errors: {summary['errors'][:3]}")
