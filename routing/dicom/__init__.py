"""SynthIQ's DICOM upper layer (PS3.8) and message layer (PS3.7) as plain code over bytes.

Nothing here touches a socket, an event loop, a clock or Django: PDU framing, PDV
parsing and building, association negotiation (through pynetdicom's PDU and
presentation classes), command sets, the Study Instance UID scan and SynthIQ's status
codes. The asyncio relay (``routing.relay``) feeds bytes in and acts on what comes out;
the tests drive it with byte strings.
"""
