"""runproxy's memory stays bounded whatever the instance size (workload W3 of docs/performance.md).

A memory bound, not a timing: a 512 MiB instance is relayed through runproxy and the
process's peak RSS (VmHWM) must stay under 200 MB, with the backend receiving exactly
the bytes sent.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.bigfile import write_large_instance
from tests.harness import PYTHON, ROOT

pytestmark = pytest.mark.slow

INSTANCE_BYTES = 512 * 2**20
PEAK_RSS_LIMIT_MB = 200


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_relaying_a_512_mib_instance_keeps_runproxy_under_200_mb_and_byte_exact(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]))
    folder = tmp_path / "big"
    folder.mkdir()
    # Written streaming: the test process never holds the 512 MiB either.
    sent_digest = write_large_instance(folder / "big.dcm", pixel_bytes=INSTANCE_BYTES)
    summary_path = tmp_path / "loadtest.json"

    # The sender runs in its own process with a bounded PDU queue.
    done = subprocess.run(
        [
            PYTHON,
            "manage.py",
            "loadtest",
            "--port",
            str(proxy.port),
            "--called-ae",
            proxy.ae_title,
            "--folder",
            str(folder),
            "--associations",
            "1",
            "--split",
            "1",
            "--no-progress",
            "--json",
            str(summary_path),
        ],
        cwd=ROOT,
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    peak = vm_hwm_mb(proxy.process.proc.pid)
    print(f"runproxy peak RSS {peak:.0f} MB")

    summary = json.loads(summary_path.read_text())
    assert done.returncode == 0 and summary["failed"] == 0, done.stdout + done.stderr
    assert summary["statuses"] == {"0x0000": 1}
    holdings = backend.holdings()
    received = [digest for sops in holdings.values() for digest in sops.values()]
    assert received == [sent_digest], "the backend did not receive the bytes that were sent"
    assert peak < PEAK_RSS_LIMIT_MB, f"runproxy peaked at {peak:.0f} MB relaying a 512 MiB instance"


def test_a_backend_announcing_no_pdu_limit_takes_a_1_gib_instance_in_bounded_pieces(cluster, tmp_path):
    """Max PDU 0 means "no limit": SynthIQ still sends it PDUs of at most 1 MiB, so the
    1 GiB instance never becomes one PDU in runproxy's memory (the store-then-forward
    build held it whole: 709 MB RSS for 200 MiB)."""
    backend = cluster.backend("node-a", max_pdu=0)
    proxy = cluster.proxy(cluster.config([backend]))
    folder = tmp_path / "big"
    folder.mkdir()
    sent_digest = write_large_instance(folder / "big.dcm", pixel_bytes=(1 << 30) - 2)
    done = subprocess.run(
        [PYTHON, "manage.py", "loadtest", "--port", str(proxy.port), "--called-ae", proxy.ae_title, "--folder",
         str(folder), "--associations", "1", "--split", "1", "--no-progress", "--sender", "storescu"],
        cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    peak = vm_hwm_mb(proxy.process.proc.pid)
    print(f"runproxy peak RSS {peak:.0f} MB relaying 1 GiB to a max-PDU-0 backend")
    assert done.returncode == 0, done.stdout + done.stderr
    assert [d for sops in backend.holdings().values() for d in sops.values()] == [sent_digest]
    assert peak < PEAK_RSS_LIMIT_MB, f"runproxy peaked at {peak:.0f} MB"
