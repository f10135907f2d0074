"""The STOW-RS store response (PS3.18 10.5.3) as DICOM JSON: read what a backend answered,
merge every backend's answer and SynthIQ's own failures into one, and choose its status.

Plain code over dicts and bytes: no sockets, no event loop. A backend's answer is untrusted:
only items about instances this request sent to that backend are taken, and an instance
the backend neither lists as stored nor as failed is failed (never a false success).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from routing.dicom.uids import uid_problem
from routing.dicomweb.native_xml import native

RETRIEVE_URL = "00081190"
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

# Failure Reasons SynthIQ gives itself (PS3.18 table I.2-1 / PS3.4 annex GG).
PROCESSING_FAILURE = 0x0110  # the backend did not say the instance was stored
OUT_OF_RESOURCES = 0xA700  # no backend could take it, or its backend could not be reached
CANNOT_UNDERSTAND = 0xC000  # no valid Study Instance UID (or not the study the URL names)
# A backend's answer is bounded: one item per instance is a few hundred bytes.
RESPONSE_LIMIT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Sent:
    """One instance as SynthIQ forwarded it (UIDs validated)."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass
class StoreResponse:
    referenced: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    retrieve_urls: list[str] = field(default_factory=list)
    warnings: int = 0

    def fail(self, *, sop_class_uid: str, sop_instance_uid: str, reason: int) -> None:
        self.failed.append(_item(sop_class_uid, sop_instance_uid) | {FAILURE_REASON: {"vr": "US", "Value": [reason]}})

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some failed or carry warnings, 409 none stored."""
        if not self.referenced:
            return 409
        return 202 if self.failed or self.warnings else 200

    def body(self) -> bytes:
        out: dict[str, Any] = {}
        if len(self.retrieve_urls) == 1:  # the study's URL, when the request held one study
            out[RETRIEVE_URL] = {"vr": "UR", "Value": self.retrieve_urls}
        if self.failed:
            out[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": self.failed}
        if self.referenced:
            out[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": self.referenced}
        return json.dumps(out).encode()

    def xml(self) -> bytes:
        """The same response in the Native DICOM Model (PS3.19 A.1), for a client that asks
        for application/dicom+xml."""
        return native(json.loads(self.body()))

    def merge(self, *, answer: bytes, sent: list[Sent], rewrite: tuple[str, str] | None = None) -> list[str]:
        """Take a backend's answer about the instances ``sent`` to it. Returns why the
        answer was not fully usable (empty when it was); every unanswered instance is failed."""
        problems: list[str] = []
        try:
            data = json.loads(answer) if answer else {}
        except (ValueError, UnicodeDecodeError):
            data, problems = {}, ["its answer is not JSON"]
        if not isinstance(data, dict):
            data, problems = {}, ["its answer is not a DICOM JSON object"]
        expected = {s.sop_instance_uid: s for s in sent}
        answered: set[str] = set()
        for key, target in ((REFERENCED_SOP_SEQUENCE, self.referenced), (FAILED_SOP_SEQUENCE, self.failed)):
            for item in _items(data.get(key)):
                uid = _first(item.get(SOP_INSTANCE))
                if uid not in expected or uid in answered:
                    continue  # not an instance sent to it in this request: ignored
                answered.add(uid)
                item = _clean(item, rewrite)
                if key == REFERENCED_SOP_SEQUENCE and WARNING_REASON in item:
                    self.warnings += 1
                target.append(item)
        url = _first(data.get(RETRIEVE_URL))
        if isinstance(url, str) and url not in self.retrieve_urls:
            self.retrieve_urls.append(_rewritten(url, rewrite))
        missing = [s for uid, s in expected.items() if uid not in answered]
        for s in missing:
            self.fail(sop_class_uid=s.sop_class_uid, sop_instance_uid=s.sop_instance_uid, reason=PROCESSING_FAILURE)
        if missing:
            problems.append(f"{len(missing)} instance(s) it did not answer for")
        return problems


def _item(sop_class_uid: str, sop_instance_uid: str) -> dict[str, Any]:
    item: dict[str, Any] = {}
    # A UID that is not one is left out rather than echoed into the response.
    if sop_class_uid and uid_problem(sop_class_uid) is None:
        item[SOP_CLASS] = {"vr": "UI", "Value": [sop_class_uid.rstrip("\x00 ")]}
    if sop_instance_uid and uid_problem(sop_instance_uid) is None:
        item[SOP_INSTANCE] = {"vr": "UI", "Value": [sop_instance_uid.rstrip("\x00 ")]}
    return item


def _items(sequence: Any) -> list[dict[str, Any]]:
    if not isinstance(sequence, dict) or not isinstance(sequence.get("Value"), list):
        return []
    return [item for item in sequence["Value"] if isinstance(item, dict)]


def _first(attribute: Any) -> Any:
    if isinstance(attribute, dict) and isinstance(attribute.get("Value"), list) and attribute["Value"]:
        return attribute["Value"][0]
    return None


def _clean(item: dict[str, Any], rewrite: tuple[str, str] | None) -> dict[str, Any]:
    """The attributes of a backend's item that a store response carries, URLs rewritten."""
    out = {}
    for key in (SOP_CLASS, SOP_INSTANCE, RETRIEVE_URL, FAILURE_REASON, WARNING_REASON):
        if key in item and isinstance(item[key], dict):
            out[key] = item[key]
    url = _first(out.get(RETRIEVE_URL))
    if isinstance(url, str):
        out[RETRIEVE_URL] = {"vr": "UR", "Value": [_rewritten(url, rewrite)]}
    return out


def _rewritten(url: str, rewrite: tuple[str, str] | None) -> str:
    """A backend's URL under SynthIQ's base path (``rewrite``: the backend's URL prefix, ours)."""
    if rewrite and url.startswith(rewrite[0]):
        return rewrite[1] + url[len(rewrite[0]):]
    return url
