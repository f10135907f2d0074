"""What a simulated backend holds, as a PACS's database knows it: an in-memory index of the
instances it stored, and the query/retrieve matching over it (PS3.4 C.2.2.2, C.4).

Each stored instance is indexed by the few header attributes a query asks for (patient,
study, series and instance keys, read with the same scan as routing's), also when the
backend discards the bytes: counts such as NumberOfStudyRelatedInstances are answered from
the index. Matching follows PS3.4: single value, universal (empty), wildcard (``*``, ``?``)
on text, a list of values (backslash-separated) and date ranges (``A-B``, ``-B``, ``A-``).
It is lenient where real PACS are: a key of a level above the query level matches at any
level, and a key it does not index is returned empty and said so with Pending 0xFF01
(optional keys not supported).

No sockets here: ``routing.simulators.backend`` answers C-FIND, C-MOVE, C-GET and
storage commitment with it.
"""

from __future__ import annotations

import bisect
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from routing.dicom import sop_classes, status, uids
from routing.dicom.scan import HeaderError, HeaderScanner
from routing.dicom.tags import (
    PATIENT_ID,
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SERIES_UID,
    SOP_CLASS_UID,
    SOP_INSTANCE_UID,
    SPECIFIC_CHARACTER_SET,
    STUDY_DATE,
    STUDY_UID,
)

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
PATIENT, STUDY, SERIES, IMAGE = range(4)
ROOT_LEVELS = {  # the levels each information model has
    **dict.fromkeys((sop_classes.STUDY_ROOT_FIND, sop_classes.STUDY_ROOT_MOVE, sop_classes.STUDY_ROOT_GET),
                    (STUDY, SERIES, IMAGE)),
    **dict.fromkeys((sop_classes.PATIENT_ROOT_FIND, sop_classes.PATIENT_ROOT_MOVE, sop_classes.PATIENT_ROOT_GET),
                    (PATIENT, STUDY, SERIES, IMAGE)),
}

UNIQUE_KEYS = (PATIENT_ID, STUDY_UID, SERIES_UID, SOP_INSTANCE_UID)  # per level

# The attributes read from each stored instance: tag -> level.
INDEXED = {
    0x00100010: PATIENT, PATIENT_ID: PATIENT, 0x00100030: PATIENT, 0x00100040: PATIENT,  # name, ID, birth date, sex
    STUDY_UID: STUDY, 0x00080020: STUDY, 0x00080030: STUDY, 0x00080050: STUDY,  # UID, date, time, accession
    0x00081030: STUDY, 0x00200010: STUDY,  # description, Study ID
    SERIES_UID: SERIES, 0x00080060: SERIES, 0x0008103E: SERIES,  # UID, modality, description
    0x00200011: SERIES,  # Series Number
    SOP_INSTANCE_UID: IMAGE, SOP_CLASS_UID: IMAGE, 0x00200013: IMAGE,  # UID, class, Instance Number
}
SCAN_STOP = 0x00200013  # the last indexed tag: the header scan ends past it
# Counted, never read (return keys only): tag -> level.
COMPUTED = {
    0x00201200: PATIENT, 0x00201202: PATIENT, 0x00201204: PATIENT,  # Number of Patient Related Studies/Series/Instances
    0x00080061: STUDY, 0x00080062: STUDY,  # Modalities in Study, SOP Classes in Study
    0x00201206: STUDY, 0x00201208: STUDY,  # Number of Study Related Series/Instances
    0x00201209: SERIES,  # Number of Series Related Instances
}
UID_TAGS = frozenset({STUDY_UID, SERIES_UID, SOP_INSTANCE_UID, SOP_CLASS_UID})
DATE_TAGS = frozenset({0x00080020, 0x00100030})
TIME_TAGS = frozenset({0x00080030})
NUMBER_TAGS = frozenset({0x00200011, 0x00200013})
PERSON_NAME_TAGS = frozenset({0x00100010})

_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?")


class QueryError(Exception):
    """The identifier cannot be matched: answered with ``code`` and an Error Comment."""

    def __init__(self, code: int, comment: str):
        super().__init__(comment)
        self.status, self.comment = code, comment[:64]


@dataclass(slots=True)
class Instance:
    """One stored instance: its own attributes, those of its series (one dict shared by the
    series' instances: a node holding millions of instances in discard mode stays small),
    and where its bytes are (if kept)."""

    shared: dict[int, str]  # patient, study and series attributes
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: str
    transfer_syntax: str
    path: Path | None = None

    @classmethod
    def of(cls, values: dict[int, str], transfer_syntax: str, path: Path | None = None) -> Instance:
        return cls({tag: v for tag, v in values.items() if INDEXED.get(tag, IMAGE) < IMAGE},
                   values[SOP_INSTANCE_UID], sys.intern(str(values.get(SOP_CLASS_UID, ""))),
                   values.get(0x00200013, ""), sys.intern(str(transfer_syntax)), path)

    @property
    def values(self) -> dict[int, str]:
        own = {SOP_INSTANCE_UID: self.sop_instance_uid, SOP_CLASS_UID: self.sop_class_uid,
               0x00200013: self.instance_number}
        return self.shared | {tag: v for tag, v in own.items() if v}


def read_header(fp, transfer_syntax: str) -> dict[int, str]:
    """The indexed attributes of the data set at ``fp``'s position ({} if unreadable)."""
    scanner = HeaderScanner(transfer_syntax, wanted=INDEXED, stop=SCAN_STOP, require=None)
    try:
        while True:
            data = fp.read(64 * 1024)
            header = scanner.feed(data, last=not data)
            if header is not None:
                return {tag: value for tag, value in header.values if value}
    except HeaderError:
        return {}


@dataclass
class Query:
    """A C-FIND / C-MOVE / C-GET identifier, checked: the level, the keys that match and
    the keys to return."""

    level: int
    levels: tuple[int, ...]  # the information model's levels
    matching: dict[int, str] = field(default_factory=dict)
    returned: dict[int, str] = field(default_factory=dict)  # tag -> VR, in the request's order
    unsupported: bool = False  # a key with a value that is not indexed (Pending 0xFF01)
    # The matching keys by level, each with its test: {level: [(tag, predicate)]}.
    tests: dict[int, list[tuple[int, Callable[[str], bool]]]] = field(default_factory=dict)
    keys: list[tuple[int, str]] = field(default_factory=list)  # answer_keys(), once worked out

    def answer_keys(self) -> list[tuple[int, str]]:
        """(tag, VR) of each attribute an answer carries: the unique keys down to the query
        level, then every key asked for (worked out once per query, not per answer)."""
        if not self.keys:
            tags = dict.fromkeys([*UNIQUE_KEYS[self.levels[0]:self.level + 1]]) | dict.fromkeys(self.returned)
            self.keys = [(tag, self.returned.get(tag) or dictionary_VR(tag)) for tag in tags]
        return self.keys

    @classmethod
    def parse(cls, identifier: Dataset, sop_class: str, *, retrieve: bool = False) -> Query:
        levels = ROOT_LEVELS[sop_class]
        try:
            raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        except Exception as exc:  # pydicom raises many types on a malformed value
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level unreadable: {exc}") from None
        if raw not in LEVELS or LEVELS.index(raw) not in levels:
            allowed = "/".join(LEVELS[n] for n in levels)
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level {raw!r} is not {allowed}")
        query = cls(level=LEVELS.index(raw), levels=levels)
        for key in list(identifier.keys()):
            tag = int(key)
            if tag in (QUERY_RETRIEVE_LEVEL, SPECIFIC_CHARACTER_SET) or key.is_private or key.group == 0:
                continue
            try:
                elem = identifier[key]
                value = _text(elem.value)
            except Exception as exc:  # pydicom raises many types on a malformed value
                raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH, f"({tag:08X}) unreadable: {exc}") from None
            query.returned[tag] = elem.VR
            level = INDEXED.get(tag, COMPUTED.get(tag))
            if not value or value == "*" or tag in COMPUTED or tag == RETRIEVE_AE_TITLE:
                continue
            if level is None or level > query.level:
                query.unsupported = True
                continue
            query.matching[tag] = _checked(tag, value)
        for tag, value in query.matching.items():
            level = STUDY if INDEXED[tag] < STUDY and query.level != PATIENT else INDEXED[tag]
            query.tests.setdefault(level, []).append((tag, predicate(tag, value)))
        if retrieve:
            key = UNIQUE_KEYS[query.level]
            if key not in query.matching:
                raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH,
                                 f"a {LEVELS[query.level]} retrieve needs ({key:08X}) with a value")
        return query


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1").strip("\x00 ")
    if isinstance(value, list):  # a sequence: matching on it is not supported
        return ""
    return str(value).strip("\x00 ")


def _checked(tag: int, value: str) -> str:
    """The matching value, checked for its VR; QueryError (0xA900) if it cannot match."""
    if tag in UID_TAGS:
        problem = uids.uid_key_problem(value)
        if problem:
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH, uids.comment(f"({tag:08X})", problem))
    elif tag in DATE_TAGS | TIME_TAGS:
        pattern = _DATE if tag in DATE_TAGS else _TIME
        for item in value.split("\\"):
            low, dash, high = item.partition("-")
            if not (low or high) or any(part and not pattern.fullmatch(part.replace(":", ""))
                                        for part in (low, high)):
                raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH, f"({tag:08X}) {item[:30]!r} is no date/time range")
    return value


def _wildcard(pattern: str, *, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def predicate(tag: int, wanted: str) -> Callable[[str], bool]:
    """Whether a stored value (possibly multi-valued) matches the key ``wanted`` (PS3.4 C.2.2.2)."""
    if tag in UID_TAGS:
        listed = frozenset(wanted.split("\\"))
        return lambda value: value in listed or ("\\" in value and bool(listed & set(value.split("\\"))))
    if tag in DATE_TAGS or tag in TIME_TAGS:
        ranges = [tuple(p.replace(":", "") for p in item.partition("-")) for item in wanted.split("\\")]
        is_time = tag in TIME_TAGS

        def in_range(value: str) -> bool:
            for v in value.replace(":", "").split("\\"):
                for low, dash, high in ranges:
                    if not v:
                        continue
                    if not dash and (v == low or (is_time and v.startswith(low))):
                        return True
                    if dash and (not low or v >= low) and (not high or v[:len(high)] <= high):
                        return True
            return False
        return in_range
    if tag in NUMBER_TAGS:
        numbers = {w.strip().lstrip("+") for w in wanted.split("\\")}
        return lambda value: any(v.strip().lstrip("+") in numbers for v in value.split("\\"))
    person = tag in PERSON_NAME_TAGS
    patterns = [_wildcard(w, ignore_case=person) for w in ([wanted] if person else wanted.split("\\"))]
    return lambda value: any(p.fullmatch(v) for p in patterns for v in (value.split("\\") if value else [""]))


def matches(tag: int, wanted: str, value: str) -> bool:
    """Does ``value`` (possibly multi-valued) match the key ``wanted``?"""
    return predicate(tag, wanted)(value)


class Index:
    """The instances a backend holds, by study and series, safe across threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # study UID -> series UID -> SOP instance UID -> Instance
        self.studies: dict[str, dict[str, dict[str, Instance]]] = {}
        self.where: dict[str, tuple[str, str]] = {}  # SOP instance UID -> (study, series)
        # Study Date -> study UIDs, and the dates in order: a date-range query (a ledger
        # walking date windows) reads only the studies in its window.
        self.dates: dict[str, set[str]] = {}
        self.sorted_dates: list[str] = []
        self.study_date: dict[str, str] = {}
        self.rows: dict[str, dict[int, str]] = {}  # study UID -> its record (_row)

    def add(self, instance: Instance) -> None:
        sop = instance.sop_instance_uid
        study, series = instance.shared[STUDY_UID], instance.shared.get(SERIES_UID, "")
        with self.lock:
            self._discard(sop)
            self.rows.pop(study, None)
            if study not in self.studies:
                date = instance.shared.get(STUDY_DATE, "")
                self.study_date[study] = date
                if date not in self.dates:
                    self.dates[date] = set()
                    bisect.insort(self.sorted_dates, date)
                self.dates[date].add(study)
            instances = self.studies.setdefault(study, {}).setdefault(series, {})
            if instances:  # the series' attributes as its first instance gave them, held once
                instance.shared = next(iter(instances.values())).shared
            instances[sop] = instance
            self.where[sop] = (study, series)

    def remove(self, sop: str) -> Instance | None:
        with self.lock:
            return self._discard(sop)

    def _discard(self, sop: str) -> Instance | None:
        place = self.where.pop(sop, None)
        if place is None:
            return None
        study, series = place
        self.rows.pop(study, None)
        instances = self.studies[study][series]
        instance = instances.pop(sop)
        if not instances:
            del self.studies[study][series]
            if not self.studies[study]:
                del self.studies[study]
                date = self.study_date.pop(study)
                self.dates[date].discard(study)
                if not self.dates[date]:
                    del self.dates[date]
                    self.sorted_dates.remove(date)
        return instance

    def clear(self) -> None:
        with self.lock:
            self.studies.clear()
            self.where.clear()
            self.dates.clear()
            self.sorted_dates.clear()
            self.study_date.clear()
            self.rows.clear()

    def get(self, sop: str) -> Instance | None:
        with self.lock:
            place = self.where.get(sop)
            return self.studies[place[0]][place[1]][sop] if place else None

    # -- matching ------------------------------------------------------------------------
    def _candidates(self, query: Query) -> list[str]:
        """The studies a query can match, by its Study Instance UIDs or its StudyDate range
        when it has them (a date-range query reads only the studies in its window); with
        the lock held."""
        wanted = query.matching.get(STUDY_UID)
        window = query.matching.get(STUDY_DATE, "\\")
        if wanted:
            return [s for s in dict.fromkeys(wanted.split("\\")) if s in self.studies]
        if query.level != PATIENT and "\\" not in window:
            low, dash, high = window.partition("-")
            if not dash:
                low = high = low
            start = bisect.bisect_left(self.sorted_dates, low)
            end = bisect.bisect_right(self.sorted_dates, high + "\U0010ffff") if high else len(self.sorted_dates)
            return [s for d in self.sorted_dates[start:end] for s in self.dates[d]]
        return list(self.studies)

    def _row(self, study_uid: str) -> dict[int, str]:
        """The study's attributes and counts, as a PACS keeps a study record: computed once and
        kept until an instance of the study is added or removed; with the lock held."""
        row = self.rows.get(study_uid)
        if row is None:
            series = self.studies[study_uid]
            first = next(iter(next(iter(series.values())).values()))
            row = _attributes(first, STUDY) | _study_counts({ser: list(i.values()) for ser, i in series.items()})
            self.rows[study_uid] = row
        return row

    def warm(self, study_uids: Iterable[str]) -> None:
        """Compute the study records of these studies now (after a bulk load), not at the
        first query."""
        with self.lock:
            for uid in study_uids:
                if uid in self.studies:
                    self._row(uid)

    def find_studies(self, query: Query) -> list[dict[int, str]]:
        """The attributes (stored and counted) of each study a STUDY-level query matches,
        from the study records: what a C-FIND answers, without the instances."""
        with self.lock:
            rows = [self._row(uid) for uid in self._candidates(query)]
        return [row for row in rows if _match(query, row, STUDY)]

    def find(self, query: Query) -> Iterator[tuple[dict[int, str], list[Instance]]]:
        """Each match at the query's level: its attributes (stored and counted) and the
        instances under it. Reads a snapshot, so stores may go on meanwhile."""
        with self.lock:  # study keys are matched here, so only matching studies are copied
            studies = [self.studies[uid] for uid in self._candidates(query)]
            snapshot = []
            for series in studies:
                first = next(iter(next(iter(series.values())).values()))
                if query.level == PATIENT or _match(query, first.shared, STUDY):
                    snapshot.append((_attributes(first, STUDY),
                                     {ser: list(insts.values()) for ser, insts in series.items()}))
        if query.level == PATIENT:
            yield from self._patients(query, [series for _, series in snapshot])
            return
        for study, series in snapshot:
            everything = [i for instances in series.values() for i in instances]
            study |= _study_counts(series)
            if query.level == STUDY:
                yield study, everything
                continue
            for instances in series.values():
                one = study | _attributes(instances[0], SERIES) | {0x00201209: str(len(instances))}
                if not _match(query, one, SERIES):
                    continue
                if query.level == SERIES:
                    yield one, instances
                    continue
                for instance in instances:
                    attrs = one | _attributes(instance, IMAGE)
                    if _match(query, attrs, IMAGE):
                        yield attrs, [instance]

    def _patients(self, query: Query, snapshot: list[dict[str, list[Instance]]]
                  ) -> Iterator[tuple[dict[int, str], list[Instance]]]:
        patients: dict[str, list[dict[str, list[Instance]]]] = {}
        for series in snapshot:
            first = next(iter(series.values()))[0]
            patients.setdefault(first.shared.get(PATIENT_ID, ""), []).append(series)
        for studies in patients.values():
            everything = [i for series in studies for instances in series.values() for i in instances]
            attrs = _attributes(everything[0], PATIENT) | {
                0x00201200: str(len(studies)), 0x00201202: str(sum(len(s) for s in studies)),
                0x00201204: str(len(everything))}
            if _match(query, attrs, PATIENT):
                yield attrs, everything

    def response_elements(self, query: Query, attrs: dict[int, str], *, ae_title: str) -> list[tuple[int, str, str]]:
        """The identifier of one match as (tag, VR, value) elements: the level, every key asked
        for (empty when not known; a sequence always empty), the unique keys down to the query
        level, and the character set when a value is not ASCII (values were read as Latin-1)."""
        out = [(QUERY_RETRIEVE_LEVEL, "CS", LEVELS[query.level])]
        for tag, vr in query.answer_keys():
            value = ae_title if tag == RETRIEVE_AE_TITLE else attrs.get(tag, "")
            out.append((tag, vr, "" if vr == "SQ" else value))
        if any(not value.isascii() for _, _, value in out):
            out.append((SPECIFIC_CHARACTER_SET, "CS", "ISO_IR 100"))
        return out

    def response(self, query: Query, attrs: dict[int, str], *, ae_title: str) -> Dataset:
        """``response_elements`` as a pydicom Dataset (for a syntax SynthIQ's encoder does not write)."""
        ds = Dataset()
        for tag, vr, value in self.response_elements(query, attrs, ae_title=ae_title):
            if vr == "SQ":
                ds.add_new(Tag(tag), vr, [])
            elif not value:
                ds.add_new(Tag(tag), vr, None)
            else:
                ds.add_new(Tag(tag), vr, value.split("\\") if "\\" in value and vr != "PN" else value)
        return ds


def _attributes(instance: Instance, level: int) -> dict[int, str]:
    if level == IMAGE:
        return instance.values
    return {tag: value for tag, value in instance.shared.items() if INDEXED[tag] <= level}


def _study_counts(series: dict[str, list[Instance]]) -> dict[int, str]:
    everything = [i for instances in series.values() for i in instances]
    modalities = dict.fromkeys(i.shared.get(0x00080060, "") for i in everything)
    classes = dict.fromkeys(i.sop_class_uid for i in everything)
    return {0x00080061: "\\".join(m for m in modalities if m), 0x00080062: "\\".join(c for c in classes if c),
            0x00201206: str(len(series)), 0x00201208: str(len(everything))}


def _match(query: Query, attrs: dict[int, str], level: int) -> bool:
    """The keys of ``level`` all match (at STUDY, the patient's keys too: studies are
    matched without a patient step)."""
    return all(test(attrs.get(tag, "")) for tag, test in query.tests.get(level, ()))
