"""The data plane: a cut-through DICOM relay on an asyncio event loop.

``server`` runs the listeners and the front-door limits, ``inbound`` one modality's
association, ``outbound`` an association to a backend, ``stream`` DIMSE messages over a
``connection`` (PDU framing and flow control on an ``asyncio.Protocol``). The protocol
itself lives in ``routing.dicom``; routing decisions come from ``routing.router``.
"""
