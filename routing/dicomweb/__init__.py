"""The DICOMweb front door (PS3.18): STOW-RS, QIDO-RS and WADO-RS per pool on runproxy's
event loop, routed by the same placement (and so the same study bindings) as the relay."""
