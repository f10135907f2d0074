"""The simulated backend's study records (``Index.find_studies``, what its study-level C-FIND
answers from): the same answers as the full match, kept right as instances come and go."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from routing.dicom.sop_classes import STUDY_ROOT_FIND
from routing.simulators.index import Index, Instance, Query

COUNT, MODALITIES = 0x00201208, 0x00080061


def _instance(study: str, n: int, modality: str = "CT", date: str = "20240101", series: int = 1) -> Instance:
    return Instance.of({0x0020000D: study, 0x0020000E: f"{study}.{series}", 0x00080018: f"{study}.{series}.{n}",
                        0x00080020: date, 0x00080060: modality, 0x00080016: "1.2.840.10008.5.1.4.1.1.7"},
                       ExplicitVRLittleEndian)


def _query(**keys: str) -> Query:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword, value in {"StudyInstanceUID": "", "NumberOfStudyRelatedInstances": "", "ModalitiesInStudy": "",
                           **keys}.items():
        setattr(ds, keyword, value)
    return Query.parse(ds, STUDY_ROOT_FIND)


def _answers(index: Index, query: Query) -> tuple[list, list]:
    fast = sorted(index.response_elements(query, row, ae_title="X") for row in index.find_studies(query))
    full = sorted(index.response_elements(query, attrs, ae_title="X") for attrs, _ in index.find(query))
    return fast, full


def test_the_study_records_answer_as_the_full_match_and_follow_every_change():
    index = Index()
    index.add(_instance("1.2.3.1", 1))
    index.add(_instance("1.2.3.2", 1, date="20230101"))
    index.warm(["1.2.3.1", "1.2.3.2", "1.2.3.404"])
    query = _query()
    assert {row[COUNT] for row in index.find_studies(query)} == {"1"}
    index.add(_instance("1.2.3.1", 2, modality="MR", series=2))  # the record made before must not be answered
    [row] = [r for r in index.find_studies(query) if r[0x0020000D] == "1.2.3.1"]
    assert (row[COUNT], row[MODALITIES]) == ("2", "CT\\MR")
    index.remove("1.2.3.1.1.1")
    [row] = [r for r in index.find_studies(query) if r[0x0020000D] == "1.2.3.1"]
    assert (row[COUNT], row[MODALITIES]) == ("1", "MR")
    for keys in ({}, {"StudyDate": "20230101-20231231"}, {"StudyInstanceUID": "1.2.3.2\\1.2.3.9"},
                 {"ModalitiesInStudy": "MR"}):
        fast, full = _answers(index, _query(**keys))
        assert fast == full, keys
    index.clear()
    assert index.find_studies(query) == []
