"""The data plane: a cut-through DICOM relay on an asyncio event loop.

``server`` runs the listeners and the front-door limits, ``inbound`` one modality's
association, which hands each request to its service's handler (``handlers``, given a
``context``); ``peer`` is either side as the relay reads and writes it, ``outbound`` an
association to a backend, ``stream`` DIMSE messages over a ``connection`` (PDU framing and
flow control on an ``asyncio.Protocol``). The protocol itself lives in ``routing.dicom``;
routing decisions come from ``routing.router``.
"""
