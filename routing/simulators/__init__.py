"""Simulator tools: not product code.

What stands in for the world around SynthIQ in the demo, the tests and the benchmarks:
a simulated PACS node (``backend``, behind ``manage.py runbackend``), a load
generator that sends studies the way modalities do (``loadtest``), the demo that wires
three simulated nodes to ``runproxy`` (``demo``), synthetic DICOM studies (``synthetic``)
and the child-process helpers the tests and ``bench/`` share (``processes``).

Nothing in the data plane or the operator surface imports from here; the management
commands are thin shells around these modules.
"""

from __future__ import annotations


class SimulatorError(Exception):
    """A simulator cannot do what it was asked; the message says why, for the command line."""
