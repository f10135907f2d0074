"""Verification and consolidation against three real Orthanc nodes behind runproxy, whose
own verifier (QuietSeconds 1) checks each study once it is quiet: whole, then missing when
its backend loses an instance, split when another node holds one it lacks; consolidate
gathers a split study onto its bound node, once per instance, deleting nothing."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command

from affinity.models import Binding, InstanceLocation
from routing.simulators.synthetic import write_study
from tests.affinity.ledger_peers import NODES, start_ledger
from tests.harness import binding_of, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    ledger = start_ledger(tmp_path_factory.mktemp("verify"), reconciliation={"QuietSeconds": 1})
    try:
        yield ledger
    finally:
        ledger.cluster.stop_all()


def verify(*uids: str) -> str:
    out = io.StringIO()
    call_command("verify", "--pool", "main", *uids, stdout=out)
    return out.getvalue()


def sent_and_verified(ledger, tmp_path, name: str, count: int) -> tuple[str, list, str]:
    """A study sent through SynthIQ, once runproxy's verifier has judged it."""
    suid, files = write_study(tmp_path / name, count=count)
    ledger.via_synthiq(files)
    wait_for(lambda: Binding.objects.filter(study_uid=suid, verified_utc__isnull=False).exists(), timeout=30,
             what="runproxy's verifier to judge the study")
    return suid, files, binding_of(suid)


def elsewhere(bound: str) -> str:
    return next(n for n in NODES if n != bound)


def test_a_study_becomes_whole_then_missing_then_split(ledger, tmp_path):
    suid, files, bound = sent_and_verified(ledger, tmp_path, "s1", 3)
    row = Binding.objects.get(study_uid=suid)
    assert (row.verdict, row.held, row.adopted) == ("whole", {bound: 3}, False)
    assert InstanceLocation.objects.filter(study_uid=suid).count() == 3  # acknowledged

    lost = sorted(ledger.sops(bound, suid))[0]
    ledger.delete(bound, lost)
    report = verify(suid)
    assert f"{suid}: missing (bound to {bound}; acknowledged 3; held {{'{bound}': 2}}); on no backend: 1" in report
    row.refresh_from_db()
    assert (row.verdict, row.held) == ("missing", {bound: 2})

    other = elsewhere(bound)
    _, extra = write_study(tmp_path / "s1-extra", count=1, study_uid=suid)
    ledger.store_direct(other, extra)  # an instance SynthIQ never saw, on another node
    report = verify(suid)
    assert f"{suid}: split (bound to {bound}; acknowledged 3; held {{'{bound}': 2, '{other}': 1}})" in report
    assert f"the bound backend lacks: 1 on {other}" in report
    row.refresh_from_db()
    assert (row.verdict, row.held) == ("split", {bound: 2, other: 1})


def test_consolidate_gathers_a_split_study_on_its_node_once_per_instance_and_deletes_nothing(ledger, tmp_path):
    suid, _, bound = sent_and_verified(ledger, tmp_path, "s2", 2)
    others = [n for n in NODES if n != bound]
    _, extra = write_study(tmp_path / "s2-extra", count=2, study_uid=suid)
    ledger.store_direct(others[0], extra)  # both strays on one node, the second on the other node too
    ledger.store_direct(others[1], extra[1:])
    assert "split" in verify(suid)
    stray = {n: ledger.sops(n, suid) for n in others}

    out = io.StringIO()
    call_command("consolidate", "--pool", "main", "--all-split", "--dry-run", stdout=out)
    assert f"{suid}: would move 2 instance(s) from {others[0]} to {bound}" in out.getvalue()
    assert len(ledger.sops(bound, suid)) == 2  # a dry run moves nothing

    out = io.StringIO()
    call_command("consolidate", "--pool", "main", suid, stdout=out)
    report = out.getvalue()
    assert f"{suid}: moved 2 of 2 instance(s) from {others[0]} to {bound}" in report, report
    assert f"from {others[1]}" not in report  # its copy is also on the first holder: not sent twice
    assert stray[others[0]] <= ledger.sops(bound, suid)
    assert len(ledger.sops(bound, suid)) == 4
    assert {n: ledger.sops(n, suid) for n in others} == stray  # nothing deleted anywhere
    held = {bound: 4, others[0]: 2, others[1]: 1}
    assert f"{suid}: now whole on {bound}; copies remain on {others[0]} (2), {others[1]} (1)" in report
    row = Binding.objects.get(study_uid=suid)
    assert (row.verdict, row.held) == ("whole", held)
