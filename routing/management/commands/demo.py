"""demo: the SynthIQ demo (routing.simulators.demo) on the command line. What `make run` starts."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from routing.simulators import SimulatorError
from routing.simulators.demo import demo_run


class Command(BaseCommand):
    help = "Run the SynthIQ demo: 3 simulated backends + runproxy + dashboard."

    def add_arguments(self, parser):
        parser.add_argument("--dicom-port", type=int, default=11112)
        parser.add_argument("--http", default="127.0.0.1:8080")
        parser.add_argument("--backend-base-port", type=int, default=11200,
                            help="backends use base+1..3 for DICOM and base+101..103 for HTTP")

    def handle(self, *args, dicom_port, http, backend_base_port, **options):
        try:
            demo_run(dicom_port=dicom_port, http=http, backend_base_port=backend_base_port, announce=self.stdout.write)
        except SimulatorError as exc:
            raise CommandError(str(exc)) from exc
