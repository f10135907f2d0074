"""Load generation and its report (``manage.py loadtest``): send studies through a pool
the way modalities do, and measure it.

Synthetic studies (or a folder of DICOM files) are cut into batches: each study is
split over ``split`` associations, and the batches are spread over ``associations``
concurrent senders, so the halves of one study travel on different associations at the
same time. Each batch is one association. Files' bytes go out unchanged (pynetdicom's
chunked send, TCP_NODELAY) or through DCMTK's storescu.

Reports instances/s, MB/s, per-instance C-STORE latency percentiles and, given the
HTTP URLs of simulated backends (runbackend), how many studies ended up split.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import requests
from tqdm import tqdm

from routing.dicom.status import is_success
from routing.simulators import SimulatorError
from routing.simulators.processes import find_tool

Studies = dict[str, list[Path]]  # study instance UID -> its files, in instance order


@dataclass
class Batch:
    """The part of one study that one association carries."""

    study_uid: str
    paths: list[Path]


@dataclass
class Tally:
    """What the senders did, shared by their threads (and drawn by the progress bar)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    failed: int = 0
    bytes: int = 0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: list[str] = field(default_factory=list)
    progress: tqdm | None = None
    started: float = field(default_factory=time.monotonic)

    def record(self, *, status: int, nbytes: int, latency: float | None) -> None:
        """One instance sent; ``status`` -1 when no response came back."""
        with self.lock:
            self.sent += 1
            self.bytes += nbytes
            if not is_success(status):
                self.failed += 1
            self.statuses[f"0x{status:04X}" if status >= 0 else "none"] += 1
            if latency is not None:
                self.latencies.append(latency)
            if self.progress is not None:
                elapsed = max(time.monotonic() - self.started, 1e-6)
                # Not refreshed here: update() redraws at most every mininterval.
                self.progress.set_postfix_str(
                    f"{self.bytes / elapsed / 1e6:.1f} MB/s failed={self.failed}", refresh=False
                )
                self.progress.update(1)


class Sender(Protocol):
    def send(self, batch: Batch) -> None: ...


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def plan_batches(studies: Studies, *, split: int) -> list[Batch]:
    """Cut every study into ``split`` contiguous parts, ordered part-major so that
    consecutive batches (which go to different senders) carry parts of the same study."""
    parts: list[list[Batch]] = []
    for suid, paths in studies.items():
        k = max(1, min(split, len(paths)))
        size = -(-len(paths) // k)
        parts.append([Batch(suid, paths[i : i + size]) for i in range(0, len(paths), size)])
    batches = []
    for study_parts in parts:
        batches.extend(study_parts)
    return batches


def assign(batches: list[Batch], senders: int) -> list[list[Batch]]:
    queues: list[list[Batch]] = [[] for _ in range(senders)]
    for n, batch in enumerate(batches):
        queues[n % senders].append(batch)
    return [q for q in queues if q]


def synthesize(directory: Path, *, studies: int, instances: int, rows: int, columns: int) -> Studies:
    from routing.simulators.synthetic import write_study

    out = {}
    for n in range(studies):
        suid, paths = write_study(
            directory / f"study{n:04d}", count=instances, rows=rows, columns=columns, patient_id=f"LOAD{n:04d}"
        )
        out[suid] = paths
    return out


def read_folder(folder: Path) -> Studies:
    """Group a folder's DICOM files by study, in instance-number order."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    found: dict[str, list[tuple[int, str, Path]]] = defaultdict(list)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "InstanceNumber"])
        except (InvalidDicomError, OSError, ValueError):
            continue
        suid = str(ds.get("StudyInstanceUID", "") or "")
        if suid:
            found[suid].append((int(ds.get("InstanceNumber", 0) or 0), path.name, path))
    return {suid: [p for _, _, p in sorted(items)] for suid, items in found.items()}


@contextmanager
def studies_prepared(
    *, folder: Path | None, keep: Path | None, studies: int, instances: int, rows: int, columns: int
) -> Iterator[Studies]:
    """The studies to send: a folder's DICOM files, or synthetic ones written to ``keep``
    (kept) or to a temporary folder (removed afterwards)."""
    if folder:
        found = read_folder(folder)
        if not found:
            raise SimulatorError(f"no DICOM files with a Study Instance UID in {folder}")
        yield found
        return
    tmp = None if keep else Path(tempfile.mkdtemp(prefix="synthiq-loadtest-"))
    try:
        yield synthesize(keep or tmp, studies=studies, instances=instances, rows=rows, columns=columns)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def file_contexts(paths: list[Path]) -> list[tuple[str, str]]:
    from pydicom.filereader import read_file_meta_info

    pairs: dict[tuple[str, str], None] = {}
    for p in paths:
        meta = read_file_meta_info(p)
        pairs[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    return list(pairs)


class PynetdicomSender:
    """One association per batch; the files' data set bytes are sent as they are."""

    def __init__(self, *, host: str, port: int, called_ae: str, calling_ae: str, contexts, max_pdu: int, tally: Tally):
        from pynetdicom import AE, _config, build_context

        _config.STORE_SEND_CHUNKED_DATASET = True
        self.host, self.port, self.called_ae = host, port, called_ae
        self.contexts = [build_context(a, t) for a, t in contexts]
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = 60
        self.ae.dimse_timeout = self.ae.network_timeout = 3600
        self.ae.maximum_pdu_size = max_pdu
        self.tally = tally
        self.msg_id = 0

    def send(self, batch: Batch) -> None:
        from pynetdicom import evt

        from routing.dicom.netopts import tune_pynetdicom

        assoc = self.ae.associate(
            self.host,
            self.port,
            contexts=self.contexts,
            ae_title=self.called_ae,
            evt_handlers=[(evt.EVT_CONN_OPEN, tune_pynetdicom)],
        )
        if not assoc.is_established:
            for _ in batch.paths:
                self.tally.record(status=-1, nbytes=0, latency=None)
            with self.tally.lock:
                self.tally.errors.append(f"association to {self.called_ae}@{self.host}:{self.port} failed")
            return
        try:
            for p in batch.paths:
                self.msg_id = self.msg_id % 65535 + 1
                started = time.perf_counter()
                rsp = assoc.send_c_store(p, msg_id=self.msg_id)
                latency = time.perf_counter() - started
                status = int(rsp.Status) if "Status" in rsp else -1
                self.tally.record(status=status, nbytes=p.stat().st_size, latency=latency)
                if not assoc.is_established:
                    break
        finally:
            if assoc.is_established:
                assoc.release()


class StorescuSender:
    """DCMTK's storescu, one process (and association) per batch; no per-instance latency.
    With ``nagle`` it keeps DCMTK's default sockets (Nagle on, as most modality stacks
    ship); otherwise TCP_NODELAY=1 in its environment (the fair ceiling). With ``tls``
    (key, certificate, CA file) it speaks DICOM TLS and presents that client certificate."""

    def __init__(self, *, exe: str, host: str, port: int, called_ae: str, calling_ae: str, max_pdu: int,
                 tally: Tally, nagle: bool = False, tls: tuple[str, str, str] | None = None):
        self.argv = [
            exe,
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "-R",
            "--max-pdu",
            str(min(max_pdu, 131072)),
        ]
        if tls:
            key, cert, ca = tls
            self.argv += ["+tls", key, cert, "+cf", ca]
        self.argv += [host, str(port)]
        self.tally = tally
        self.env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
        if not nagle:
            self.env["TCP_NODELAY"] = "1"

    def send(self, batch: Batch) -> None:
        proc = subprocess.run(
            self.argv + [str(p) for p in batch.paths],
            capture_output=True,
            text=True,
            env=self.env,
        )
        status = 0 if proc.returncode == 0 else -1
        for p in batch.paths:
            self.tally.record(status=status, nbytes=p.stat().st_size, latency=None)
        if proc.returncode:
            with self.tally.lock:
                self.tally.errors.append(proc.stderr.strip()[-300:])


def split_studies(urls: list[str], study_uids: set[str]) -> dict[str, Any]:
    """How many of ``study_uids`` more than one backend holds, and how many instances each holds."""
    where: dict[str, set[str]] = defaultdict(set)
    held = 0
    per_backend: dict[str, int] = {}
    for url in urls:
        holdings = requests.get(f"{url.rstrip('/')}/api/holdings", timeout=30).json()
        per_backend[url] = 0
        for suid, sops in holdings.items():
            if suid in study_uids:
                where[suid].add(url)
                held += len(sops)
                per_backend[url] += 1
    return {
        "studies_split": sum(1 for b in where.values() if len(b) > 1),
        "instances_held": held,
        "studies_seen": len(where),
        "studies_per_backend": per_backend,
    }


def run_load(
    *, batches: list[Batch], senders: int, make_sender: Callable[[Tally], Sender], progress: bool
) -> tuple[Tally, float]:
    """Send ``batches`` from ``senders`` threads; returns the tally and the wall time."""
    tally = Tally()
    queues = assign(batches, senders)
    total = sum(len(b.paths) for b in batches)

    def worker(queue: list[Batch]) -> None:
        sender = make_sender(tally)
        for batch in queue:
            try:
                sender.send(batch)
            except Exception as exc:  # count it and go on: a load test reports, it does not stop
                with tally.lock:
                    tally.errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(q,), name=f"sender-{n}") for n, q in enumerate(queues)]
    # stderr: stdout carries the report, which scripts read.
    with tqdm(total=total, unit="inst", file=sys.stderr, disable=not progress, smoothing=0, mininterval=0.25,
              dynamic_ncols=True) as bar:
        tally.progress = None if bar.disable else bar
        tally.started = time.monotonic()
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - started
    return tally, wall


def load_run(
    *,
    studies: Studies,
    host: str,
    port: int,
    called_ae: str,
    calling_ae: str,
    associations: int,
    split: int,
    sender: Literal["pynetdicom", "storescu"],
    nagle: bool,
    max_pdu: int,
    backend_urls: list[str],
    reset_holdings: bool,
    progress: bool,
    tls: tuple[str, str, str] | None = None,
) -> dict[str, Any]:
    """Send ``studies`` and return the summary (what ``summary_text`` prints and --json writes)."""
    if backend_urls and reset_holdings:
        for url in backend_urls:
            requests.delete(f"{url.rstrip('/')}/api/holdings", timeout=30).raise_for_status()
    batches = plan_batches(studies, split=split)
    make_sender: Callable[[Tally], Sender]
    if sender == "storescu":
        exe = find_tool("storescu", "dcmtk")

        def make_sender(tally: Tally) -> Sender:
            return StorescuSender(exe=exe, host=host, port=port, called_ae=called_ae, calling_ae=calling_ae,
                                  max_pdu=max_pdu, tally=tally, nagle=nagle, tls=tls)
    else:
        if tls:
            raise SimulatorError("TLS: only with --sender storescu")
        contexts = file_contexts([p for paths in studies.values() for p in paths])

        def make_sender(tally: Tally) -> Sender:
            return PynetdicomSender(host=host, port=port, called_ae=called_ae, calling_ae=calling_ae,
                                    contexts=contexts, max_pdu=max_pdu, tally=tally)

    tally, wall = run_load(batches=batches, senders=associations, make_sender=make_sender, progress=progress)
    lat = tally.latencies
    summary: dict[str, Any] = {
        "instances": tally.sent,
        "failed": tally.failed,
        "statuses": dict(tally.statuses),
        "errors": tally.errors,
        "bytes": tally.bytes,
        "studies": len(studies),
        "associations": len(batches),
        "concurrent": min(associations, len(batches)),
        "wall_s": wall,
        "instances_per_s": tally.sent / wall if wall else 0.0,
        "mb_per_s": tally.bytes / wall / 1e6 if wall else 0.0,
        "latency_ms": {
            f"p{q}": (v * 1000 if (v := percentile(lat, q)) is not None else None) for q in (50, 95, 99)
        },
    }
    if backend_urls:
        summary |= split_studies(backend_urls, set(studies))
    return summary


def summary_text(s: dict[str, Any]) -> str:
    """The human-readable report of a ``load_run`` summary."""
    lat = s["latency_ms"]

    def ms(v):
        return "n/a" if v is None else f"{v:.1f} ms"

    lines = [
        f"instances   {s['instances']} in {s['associations']} associations "
        f"({s['concurrent']} concurrent), {s['studies']} studies, failed {s['failed']}",
        f"wall        {s['wall_s']:.2f} s",
        f"throughput  {s['instances_per_s']:.1f} instances/s, {s['mb_per_s']:.1f} MB/s",
        f"latency     p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}",
    ]
    if "studies_split" in s:
        lines.append(
            f"split       {s['studies_split']} of {s['studies_seen']} studies on more than one backend "
            f"({s['instances_held']} instances held)"
        )
        lines += [f"studies on  {url}: {count}" for url, count in s.get("studies_per_backend", {}).items()]
    return "\n".join(lines)
