"""Three real Orthanc nodes behind runproxy for the study ledger's tests: each knows the
pool's AE (SYNTHIQ) as a requester and the other nodes as move destinations, answers
study-level C-FIND with NumberOfStudyRelatedInstances, and is written and read straight
through its own DICOM port and REST API (what an L4 balancer would have left behind)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread

from routing.simulators.synthetic import write_study
from tests.harness import Cluster, OrthancHandle, ProxyHandle, clean_database, free_port, send_files, start_orthanc

NODES = ("o0", "o1", "o2")


@dataclass
class Ledger:
    cluster: Cluster
    proxy: ProxyHandle
    orthancs: dict[str, OrthancHandle]

    def store_direct(self, node: str, files: list[Path]) -> None:
        """Straight into one node, bypassing SynthIQ."""
        o = self.orthancs[node]
        sent = send_files(o.dicom_port, files, called_ae=o.ae_title, calling_ae="STORESCU")
        assert [s.status for s in sent] == [0] * len(files)

    def via_synthiq(self, files: list[Path]) -> None:
        assert [s.status for s in send_files(self.proxy.port, files, calling_ae="STORESCU")] == [0] * len(files)

    def sops(self, node: str, study_uid: str) -> set[str]:
        """The SOP Instance UIDs a node holds of a study (its REST API)."""
        o = self.orthancs[node]
        found = [hit["ID"] for hit in o.rest("POST", "/tools/lookup", data=study_uid) if hit["Type"] == "Study"]
        if not found:
            return set()
        return {i["MainDicomTags"]["SOPInstanceUID"] for i in o.rest("GET", f"/studies/{found[0]}/instances")}

    def delete(self, node: str, sop_uid: str) -> None:
        o = self.orthancs[node]
        [hit] = [h for h in o.rest("POST", "/tools/lookup", data=sop_uid) if h["Type"] == "Instance"]
        requests.delete(f"{o.url}/instances/{hit['ID']}", timeout=30).raise_for_status()


def dated_study(directory: Path, *, count: int, date: str = "", study_uid: str | None = None) -> tuple[str, list[Path]]:
    """A synthetic study whose instances carry this StudyDate ("" for none)."""
    suid, files = write_study(directory, count=count, study_uid=study_uid)
    if date:
        for path in files:
            ds = dcmread(path)
            ds.StudyDate = date
            ds.save_as(path, enforce_file_format=True)
    return suid, files


def start_ledger(tmp: Path, *, reconciliation: dict[str, Any] | None = None, **orthanc_options: Any) -> Ledger:
    """Three Orthancs and runproxy in front of them (liveness health: C-ECHO), its config's
    ``Reconciliation`` block as given."""
    clean_database()
    cluster = Cluster(tmp=tmp, env=dict(os.environ))
    try:
        ports = {n: free_port() for n in NODES}
        proxy_port = free_port()
        modalities = {n: [f"ORTHANC{n[1]}", "127.0.0.1", ports[n]] for n in NODES}
        modalities |= {"synthiq": ["SYNTHIQ", "127.0.0.1", proxy_port], "storescu": ["STORESCU", "127.0.0.1", 104]}
        orthancs = {n: start_orthanc(cluster, name=n, DicomAet=f"ORTHANC{n[1]}", DicomPort=ports[n],
                                     DicomModalities=modalities, **orthanc_options) for n in NODES}
        backends = [{"Id": n, "AeTitle": o.ae_title, "Host": "127.0.0.1", "Port": o.dicom_port,
                     "Health": {"Mode": "liveness", "Probe": "echo"}} for n, o in orthancs.items()]
        top: dict[str, Any] = {"Reconciliation": reconciliation} if reconciliation else {}
        proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600, pool={"Port": proxy_port}, **top))
        return Ledger(cluster, proxy, orthancs)
    except BaseException:
        cluster.stop_all()
        raise
