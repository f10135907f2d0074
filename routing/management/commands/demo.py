"""demo: the SynthIQ demo (routing.simulators.demo) on the command line. What `make run` starts."""

from __future__ import annotations

import argparse

from django.core.management.base import BaseCommand, CommandError

from routing.simulators import SimulatorError
from routing.simulators.backend import parse_address
from routing.simulators.demo import MOVE_DESTINATION, demo_run


def _address(text: str) -> str:
    """``AE=host:port``, checked here so a typo is one line before anything starts."""
    try:
        parse_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


class Command(BaseCommand):
    help = "Run the SynthIQ demo: 3 simulated backends + runproxy + dashboard."

    def add_arguments(self, parser):
        parser.add_argument("--dicom-port", type=int, default=11112)
        parser.add_argument("--http", default="127.0.0.1:8080")
        parser.add_argument("--backend-base-port", type=int, default=11200,
                            help="backends use base+1..3 for DICOM and base+101..103 for HTTP")
        parser.add_argument("--move-destination", action="append", type=_address, metavar="AE=HOST:PORT",
                            help="a C-MOVE destination the simulated backends know (repeatable; default "
                                 f"{MOVE_DESTINATION}: movescu started with --port 11114 receives there)")
        parser.add_argument("--commitment-requester", action="append", type=_address, default=[],
                            metavar="AE=HOST:PORT",
                            help="where a storage commitment requester listens, for a report sent after it "
                                 "released its association (repeatable; a requester still on its association "
                                 "gets the report there)")

    def handle(self, *args, dicom_port, http, backend_base_port, move_destination, commitment_requester, **options):
        try:
            demo_run(dicom_port=dicom_port, http=http, backend_base_port=backend_base_port, announce=self.stdout.write,
                     move_destinations=move_destination, commitment_requesters=commitment_requester)
        except SimulatorError as exc:
            raise CommandError(str(exc)) from exc
