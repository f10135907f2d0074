"""The cut-through relay on real associations: re-framing, where the UID lies, aborts,
a slow backend, a stalled database, release, and the listening socket."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom.dsutils import split_dataset

from routing.dicom import commands, pdu
from routing.simulators.synthetic import write_study
from tests.harness import (
    PYTHON,
    ROOT,
    OwnPostgres,
    binding_of,
    dataset_digest,
    free_port,
    send_files,
    set_health,
    start_storescp,
    wait_for,
    wait_refreshed,
)
from tests.peers import SilentReleaseBackend, associate

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _storescp_pool(cluster, *extra: str):
    port, process = start_storescp(cluster, ae_title="PACS", extra=["-v", *extra])
    backend = {"Id": "pacs", "AeTitle": "PACS", "Host": "127.0.0.1", "Port": port,
               "Health": {"Mode": "liveness", "Probe": "tcp"}}
    return backend, process, cluster.tmp / "storescp"


def _with_blob_before_the_uid(path: Path, blob_bytes: int) -> Path:
    """The instance again, with a private OB element of ``blob_bytes`` ahead of (0020,000D)."""
    ds = dcmread(path)
    block = ds.private_block(0x0009, "SYNTHIQ TEST", create=True)
    block.add_new(0x10, "OB", b"\x5a" * blob_bytes)
    out = path.with_name(f"blob-{blob_bytes}-{path.name}")
    ds.save_as(out, enforce_file_format=True)
    return out


def _announced_max_pdu(port: int) -> int:
    """The max PDU SynthIQ's A-ASSOCIATE-AC announces to a modality."""
    from pynetdicom import AE

    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(CT, EXPLICIT_LE)
    assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHIQ")
    assert assoc.is_established
    try:
        return int(assoc.acceptor.maximum_length)
    finally:
        assoc.release()


def test_a_4_kib_pdu_backend_behind_a_modality_sending_larger_pdus_gets_the_bytes_exactly(cluster, tmp_path):
    """DCMTK's storescp with --max-pdu 4096 (it aborts on a longer PDU) and bit-preserving
    storage. SynthIQ tells the modality no less than 16 KiB whatever its backends take, so
    every PDU the modality sends is re-framed into 4 KiB PDUs on the way."""
    backend, _, out = _storescp_pool(cluster, "--max-pdu", "4096", "+B")
    proxy = cluster.proxy(cluster.config([backend], Network={"MaxPduBytes": 1 << 20}))
    assert _announced_max_pdu(proxy.port) == 16384
    _, files = write_study(tmp_path / "s", count=2, rows=1024, columns=1024)  # 2 MiB of pixels each
    assert [s.status for s in send_files(proxy.port, files)] == [0, 0]
    stored = wait_for(lambda: sorted(out.iterdir()) if len(list(out.iterdir())) == 2 else None, timeout=15,
                      what="storescp to write both files")
    assert sorted(dataset_digest(p) for p in stored) == sorted(dataset_digest(p) for p in files)


def test_the_modality_is_told_the_max_pdu_its_backends_take_so_its_pdus_pass_whole(cluster, tmp_path):
    """A backend that takes 32 KiB PDUs behind SynthIQ's 1 MiB: the modality is told 32 KiB
    (learned from the backend's A-ASSOCIATE-AC when runproxy asks what it accepts), so its
    PDUs fit the backend and go through as they came, not cut and framed again."""
    backend, _, out = _storescp_pool(cluster, "--max-pdu", "32768", "+B")
    proxy = cluster.proxy(cluster.config([backend], Network={"MaxPduBytes": 1 << 20}))
    assert _announced_max_pdu(proxy.port) == 32768
    _, files = write_study(tmp_path / "s", count=1, rows=512, columns=512)
    assert [s.status for s in send_files(proxy.port, files)] == [0]
    [stored] = wait_for(lambda: list(out.iterdir()) or None, timeout=15, what="storescp to write the file")
    assert dataset_digest(stored) == dataset_digest(files[0])
    assert "smallest max PDU: 32768" in proxy.process.log()


def test_the_study_uid_found_only_in_a_later_fragment_is_routed_and_relayed_byte_exact(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], Network={"MaxPduBytes": 16384}))
    suid, [plain] = write_study(tmp_path / "s", count=1)
    late = _with_blob_before_the_uid(plain, 300_000)  # the UID comes after ~19 fragments of 16 KiB
    [sent] = send_files(proxy.port, [late])
    assert sent.status == 0x0000
    assert backend.holdings()[suid] == {dcmread(late).SOPInstanceUID: dataset_digest(late)}
    assert binding_of(suid) == "node-a"


def test_a_uid_beyond_the_hold_cap_is_a_distinct_failure_and_the_association_goes_on(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend], Network={"MaxPduBytes": 16384, "HeaderHoldBytes": 65536}))
    suid, [plain] = write_study(tmp_path / "s", count=1)
    late = _with_blob_before_the_uid(plain, 200_000)
    refused, stored = send_files(proxy.port, [late, plain])  # one association
    assert refused.status == 0xC001 and "not in the first 64 KiB" in refused.comment
    assert stored.status == 0x0000
    assert list(backend.holdings()[suid]) == [dcmread(plain).SOPInstanceUID]


def test_a_modality_aborting_mid_instance_leaves_nothing_at_the_backend(cluster, tmp_path):
    backend, storescp, out = _storescp_pool(cluster)
    proxy = cluster.proxy(cluster.config([backend]))
    _, [path] = write_study(tmp_path / "s", count=1, rows=1024, columns=1024)
    ds = dcmread(path)
    _, offset = split_dataset(path)
    data = path.read_bytes()[offset:]
    sock, _, max_pdu = associate(proxy.port, called_ae="SYNTHIQ", calling_ae="CT01", contexts=[(CT, EXPLICIT_LE)])
    with sock:
        request = commands.encode({commands.AFFECTED_SOP_CLASS_UID: CT, commands.COMMAND_FIELD: commands.C_STORE_RQ,
                                   commands.MESSAGE_ID: 1, commands.PRIORITY: 0, commands.DATA_SET_TYPE: 0,
                                   commands.AFFECTED_SOP_INSTANCE_UID: ds.SOPInstanceUID})
        sock.sendall(pdu.pdata(1, pdu.MCH_COMMAND | pdu.MCH_LAST, request))
        for frame in pdu.fragments(1, data[:len(data) // 4 * 2], command=False, last=False, max_pdu=max_pdu):
            sock.sendall(frame)  # half the data set, never the last fragment
        wait_for(lambda: "Received Store Request" in storescp.log(), timeout=15,
                 what="the backend to start receiving the instance")
        sock.sendall(pdu.abort(source=pdu.ABORT_SOURCE_USER))
    wait_for(lambda: "Association Aborted" in storescp.log(), timeout=15, what="the backend to see an abort")
    time.sleep(0.5)
    assert list(out.iterdir()) == []
    # The relay keeps serving.
    assert send_files(proxy.port, [path])[0].status == 0x0000


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for {pid}")


class Throttle:
    """A TCP forwarder in front of a backend that reads from SynthIQ at ``rate`` bytes/s
    for its first ``slow_bytes`` bytes, then at full speed: a slow-reading PACS."""

    def __init__(self, target_port: int, *, rate: float, slow_bytes: int):
        self.target_port, self.rate, self.slow_bytes = target_port, rate, slow_bytes
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.forwarded = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            backend = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, backend, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(backend, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        started = time.monotonic()
        moved = 0
        try:
            while data := src.recv(16384 if throttled else 1 << 20):
                dst.sendall(data)
                moved += len(data)
                if throttled:
                    self.forwarded += len(data)
                    if moved < self.slow_bytes:
                        time.sleep(max(0.0, started + moved / self.rate - time.monotonic()))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.server.close()


@pytest.mark.slow
def test_a_slow_reading_backend_keeps_runproxy_memory_bounded_while_a_512_mib_instance_streams(cluster, tmp_path):
    from bench.bigfile import write_large_instance

    backend = cluster.backend("node-a")
    throttle = Throttle(backend.port, rate=4e6, slow_bytes=48 << 20)  # 4 MB/s for the first 48 MiB
    try:
        proxy = cluster.proxy(cluster.config([backend.config(Port=throttle.port)]))
        folder = tmp_path / "big"
        folder.mkdir()
        digest = write_large_instance(folder / "big.dcm", pixel_bytes=512 << 20)
        sender = subprocess.Popen(
            [PYTHON, "manage.py", "loadtest", "--port", str(proxy.port), "--folder", str(folder), "--associations",
             "1", "--split", "1", "--no-progress", "--sender", "storescu"],
            cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        pid = proxy.process.proc.pid
        # While the backend reads at 4 MB/s the sender could push ~100x faster: whatever
        # runproxy buffered would show here.
        wait_for(lambda: throttle.forwarded > 24 << 20, timeout=60, what="the slow phase to be well under way")
        slow_peak = _vm_hwm_mb(pid)
        output, _ = sender.communicate(timeout=240)
    finally:
        throttle.close()
    assert sender.returncode == 0, output
    assert [d for sops in backend.holdings().values() for d in sops.values()] == [digest]
    peak = _vm_hwm_mb(pid)
    print(f"runproxy peak RSS {slow_peak:.0f} MB during the slow phase, {peak:.0f} MB overall")
    assert peak < 200, f"runproxy peaked at {peak:.0f} MB behind a slow reader"


def _hold_database(db_kind: str):
    """Lock the bindings table from this process, as a stalled database would."""
    from django.db import connection

    if db_kind == "sqlite":
        import sqlite3

        raw = sqlite3.connect(connection.settings_dict["NAME"], timeout=1, isolation_level=None)
        raw.execute("BEGIN EXCLUSIVE")
        return raw
    import psycopg

    settings = connection.settings_dict
    raw = psycopg.connect(host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"],
                          dbname=settings["NAME"], password=settings["PASSWORD"] or None)
    raw.execute("LOCK TABLE affinity_binding IN ACCESS EXCLUSIVE MODE")
    return raw


@pytest.mark.postgres
def test_a_route_miss_on_a_stalled_database_does_not_stall_an_association_whose_study_is_cached(
        cluster, tmp_path, db_kind):
    backends = [cluster.backend(f"node-{c}") for c in "ab"]
    proxy = cluster.proxy(cluster.config(backends, HeartbeatTimeoutSeconds=600))
    set_health(backends)
    wait_refreshed()
    cached_suid, cached = write_study(tmp_path / "cached", count=6)
    assert send_files(proxy.port, cached[:1])[0].status == 0  # bound and in the hot cache now
    _, new = write_study(tmp_path / "new", count=1)

    lock = _hold_database(db_kind)
    results: list = []
    try:
        miss = threading.Thread(target=lambda: results.extend(send_files(proxy.port, new)))
        miss.start()
        time.sleep(1.0)  # the new study's C-STORE is in, its route waits on the database
        started = time.monotonic()
        others = send_files(proxy.port, cached[1:])  # a new association: the hot cache answers
        took = time.monotonic() - started
        assert miss.is_alive(), "the route miss did not wait on the locked database"
    finally:
        if db_kind == "sqlite":
            lock.execute("ROLLBACK")
        else:
            lock.rollback()
        lock.close()
    miss.join(timeout=60)
    assert [r.status for r in others] == [0] * 5 and took < 3, f"cached study took {took:.1f}s"
    assert [r.status for r in results] == [0]


def test_a_backend_that_never_answers_a_release_does_not_hold_the_modalitys_release(cluster, tmp_path):
    silent = SilentReleaseBackend(ae_title="SILENT", answer_release_for=("SYNTHIQ",)).start()
    try:
        proxy = cluster.proxy(cluster.config(
            [{"Id": "silent", "AeTitle": "SILENT", "Host": "127.0.0.1", "Port": silent.port,
              "Health": {"Mode": "liveness", "Probe": "tcp"}}],
            Network={"ReleaseTimeoutSeconds": 1}))
        _, files = write_study(tmp_path, count=1)
        started = time.monotonic()
        assert send_files(proxy.port, files)[0].status == 0  # ... and the association is released
        took = time.monotonic() - started
        wait_for(lambda: silent.seen[-2:] == ["release-rq", "abort"], timeout=5,
                 what="the silent backend to be aborted after its release timed out")
    finally:
        silent.stop()
    assert took < 4, f"the modality's release took {took:.1f}s"
    # runproxy writes its log from a log thread: the line may follow the abort by a moment
    wait_for(lambda: "did not answer A-RELEASE within 1s: aborting" in proxy.process.log(), timeout=5,
             what="the release timeout's log line")


def test_a_second_runproxy_on_a_taken_port_fails_with_one_clear_line(cluster, tmp_path):
    backend = cluster.backend("node-a")
    config = cluster.config([backend])
    cluster.proxy(config)
    path = tmp_path / "again.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([PYTHON, "manage.py", "runproxy", "--config", str(path)], cwd=ROOT, env=cluster.env,
                            capture_output=True, text=True, timeout=60)
    port = config["Pools"][0]["Port"]
    assert result.returncode != 0
    assert f"pool main: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_workers_serve_two_pools_keep_studies_whole_and_their_counters_add_up(cluster, tmp_path):
    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    config = cluster.config(backends[:2])
    second = {"Id": "second", "AeTitle": "SECOND", "Host": "127.0.0.1", "Port": free_port(),
              "Backends": [backends[2].config()]}
    config["Pools"].append(second)
    proxy = cluster.proxy(config, extra_args=["--workers", "2"])
    assert len(proxy.worker_pids()) == 2
    studies = [write_study(tmp_path / f"s{n}", count=4) for n in range(6)]
    threads = []
    sent: list = []
    for _, files in studies:
        for half in (files[:2], files[2:]):  # each study over two associations at once
            threads.append(threading.Thread(target=lambda h=half: sent.extend(send_files(proxy.port, h))))
    extra_suid, extra = write_study(tmp_path / "second", count=3)
    threads.append(threading.Thread(target=lambda: sent.extend(send_files(second["Port"], extra,
                                                                          called_ae="SECOND"))))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(sent) == 27 and all(s.status == 0 for s in sent)
    holders = {suid: {b.id for b in backends if suid in b.holdings()} for suid, _ in studies}
    assert all(len(h) == 1 and h <= {"node-a", "node-b"} for h in holders.values()), holders
    assert set(backends[2].holdings()) == {extra_suid}

    from routing.models import ProxyProcess

    def counted() -> int | None:
        rows = list(ProxyProcess.objects.filter(stopped=False))
        received = sum(int(r.counters.get("counters", {}).get("received", 0)) for r in rows)
        return received if len(rows) == 2 and received == 27 else None

    assert wait_for(counted, timeout=10, what="both workers to publish counters that add up to 27") == 27


def test_a_worker_that_dies_is_started_again_and_serves_the_pool(cluster, tmp_path):
    backend = cluster.backend("node-a")
    proxy = cluster.proxy(cluster.config([backend]), extra_args=["--workers", "2"])
    dead, survivor = proxy.worker_pids()
    os.kill(dead, signal.SIGKILL)

    def two_steady_workers() -> list[int] | None:
        pids = proxy.worker_pids()
        if len(pids) != 2 or survivor not in pids:
            return None
        time.sleep(2)  # still the same two: the new worker is not failing and being restarted
        return pids if proxy.worker_pids() == pids else None

    (respawned,) = set(wait_for(two_steady_workers, timeout=20, what="a steady replacement worker")) - {survivor}
    os.kill(survivor, signal.SIGSTOP)  # only the new worker can accept now
    try:
        suid, files = write_study(tmp_path / "after", count=2)
        assert [s.status for s in send_files(proxy.port, files)] == [0, 0]
    finally:
        os.kill(survivor, signal.SIGCONT)
    assert set(backend.holdings()[suid]) == {dcmread(f).SOPInstanceUID for f in files}
    assert f"[{respawned}/w" in proxy.process.log_path.read_text().split(f"study={suid}", 1)[0].rsplit("\n", 1)[1]


def test_with_the_database_down_two_workers_given_the_same_new_study_pick_the_same_backend(cluster, tmp_path):
    """Each new study's first instance is served by one worker, its second by the other
    (the other is stopped with SIGSTOP meanwhile, so the kernel can only hand the
    connection to the running one). The database refuses connections, so neither can
    read or write a binding: the first places the study by the rendezvous hash, the
    second finds it in the host's binding journal (or hashes it the same way)."""
    import signal

    database = OwnPostgres(cluster)
    proxy = None
    try:
        backends = [cluster.backend(f"node-{c}") for c in "abc"]
        liveness = [b.config(Health={"Mode": "liveness", "Probe": "tcp"}) for b in backends]
        proxy = cluster.proxy(cluster.config(liveness, HeartbeatTimeoutSeconds=600), extra_env=database.env,
                              extra_args=["--workers", "2"])
        first, second = proxy.worker_pids()
        time.sleep(1.5)  # both workers have refreshed their view of the (healthy) backends
        database.down()
        studies = []
        for n in range(8):
            suid, files = write_study(tmp_path / f"s{n}", count=2)
            studies.append(suid)
            for stopped, path in ((first, files[0]), (second, files[1])):
                os.kill(stopped, signal.SIGSTOP)
                try:
                    assert send_files(proxy.port, [path])[0].status == 0
                finally:
                    os.kill(stopped, signal.SIGCONT)
        log = proxy.process.log()
        for suid in studies:
            lines = [line for line in log.splitlines() if f"study={suid}" in line and "route pool=" in line]
            assert len({line.split("[", 1)[1].split("]", 1)[0] for line in lines}) == 2, lines
            assert "reason=rendezvous" in lines[0], lines
            assert all("reason=rendezvous" in line or "reason=affinity-hit" in line for line in lines), lines
            holders = [b.id for b in backends if suid in b.holdings()]
            assert len(holders) == 1 and sum(len(b.holdings().get(suid, {})) for b in backends) == 2
        assert len({next(b.id for b in backends if s in b.holdings()) for s in studies}) > 1  # a real spread
        # Back: the bindings decided meanwhile are written.
        database.up()

        def written() -> bool:
            rows = dict(database.rows("SELECT study_uid, backend_id FROM affinity_binding"))
            return all(rows.get(s) == next(b.id for b in backends if s in b.holdings()) for s in studies)

        wait_for(written, timeout=20, what="the pending bindings to be written")
    finally:
        if proxy is not None:
            proxy.process.stop()
        database.drop()
