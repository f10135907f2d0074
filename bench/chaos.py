"""`make chaos`: a ledger-driven fault campaign through runproxy that anyone can re-run.

Studies are stored through runproxy by several concurrent senders while faults strike on
a schedule:

- runproxy SIGKILLed and restarted (every ``--restart-every`` seconds);
- a backend SIGKILLed (unreachable, then back), SIGSTOPped (hung, then SIGCONT);
- a backend answering A700 / A900 / C000 / B000 for a while, or rejecting associations;
- TCP resets mid-data and a stalled link (iptables `connbytes ... REJECT --reject-with
  tcp-reset` and `tc tbf` inside a network namespace the campaign creates for node-c —
  never on the host's loopback);
- the affinity database (a PostgreSQL of the campaign's own) stopped under load, for
  ``--db-outage-seconds`` and then until a study has been stored through the outage.

Every store is a ledger row: what was sent, the status the sender got, and — read from
the backends' store folders at the end — where it is. The campaign prints false successes
(a success for an instance no backend holds), split studies (held by two backends) and moved
studies (binding changed), checks that studies first seen while the database was down got
their bindings written once it was back, and fails on any.

    make chaos                                              # the whole campaign, fuzzing included
    .venv/bin/python -m bench.chaos --stores 150 --restarts 2   # the smoke make test runs

Needs root (network namespace, iptables, PostgreSQL run as the postgres user).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from routing.simulators.processes import ROOT, Managed, find_tool, free_port, port_open, wait_for
from routing.simulators.synthetic import write_study

PYTHON = sys.executable
FORCED_STATUSES = ("0xA700", "0xA900", "0xC000", "0xB000")
OK_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
# A database outage lasts --db-outage-seconds and then until a study has been stored through
# it (senders can sit out a runproxy restart for their whole DIMSE timeout), at most this longer.
OUTAGE_EXTRA_SECONDS = 40.0
FAULT_KINDS = 11  # the ten of one fault cycle, and runproxy restarts


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


@dataclass
class Row:
    study: str
    sop: str
    status: int  # -1: no answer (runproxy or the association went away)
    at: float
    db_down: bool


class OwnPostgres:
    """A throwaway PostgreSQL cluster (run as the postgres user) the campaign may stop."""

    def __init__(self):
        self.port = free_port()
        # Its own folder: the postgres user cannot enter the campaign's (root-only) work dir.
        self.folder = Path(tempfile.mkdtemp(prefix="synthiq-chaos-pg-"))
        self.data = self.folder / "data"
        self.bin = Path(sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        run("runuser", "-u", "postgres", "--", *argv)

    def init(self) -> None:
        shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")
        self.start()

    def start(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-l", str(self.data / "log"),
                          "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")

    def stop(self) -> None:
        self._as_postgres(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class Namespace:
    """node-c's own network namespace: a veth pair, so resets and stalls hit only its traffic."""

    def __init__(self):
        tag = os.getpid() % 10000
        self.name, self.host_if, self.ns_if = f"sqc{tag}", f"sqh{tag}", f"sqn{tag}"
        octet = tag % 250
        self.host_ip, self.ip = f"10.251.{octet}.1", f"10.251.{octet}.2"

    def up(self) -> None:
        run("ip", "netns", "add", self.name)
        run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        run("ip", "link", "set", self.ns_if, "netns", self.name)
        run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        run("ip", "link", "set", self.host_if, "up")
        self.exec("ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if)
        self.exec("ip", "link", "set", self.ns_if, "up")
        self.exec("ip", "link", "set", "lo", "up")

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("ip", "netns", "exec", self.name, *argv, check=check)

    def resets(self, port: int, on: bool) -> None:
        rule = ["INPUT", "-p", "tcp", "--dport", str(port), "-m", "connbytes", "--connbytes", "200000:",
                "--connbytes-dir", "original", "--connbytes-mode", "bytes", "-j", "REJECT", "--reject-with",
                "tcp-reset"]
        self.exec("iptables", "-I" if on else "-D", *rule, check=on)

    def stall(self, on: bool) -> None:
        if on:
            self.exec("tc", "qdisc", "add", "dev", self.ns_if, "root", "tbf", "rate", "64kbit", "burst", "16kb",
                      "latency", "30s")
        else:
            self.exec("tc", "qdisc", "del", "dev", self.ns_if, "root", check=False)

    def down(self) -> None:
        run("ip", "netns", "del", self.name, check=False)
        run("ip", "link", "del", self.host_if, check=False)


class Campaign:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.tmp = Path(args.tmp_dir or tempfile.mkdtemp(prefix="synthiq-chaos-"))
        self.pg = OwnPostgres()
        self.ns = Namespace()
        self.env = dict(os.environ) | {
            "DATABASE_URL": self.pg.url, "SYNTHIQ_ALLOW_DEV_KEY": "1", "SYNTHIQ_VAR_DIR": str(self.tmp / "var"),
            "DJANGO_SETTINGS_MODULE": "synthiq_project.settings", "PYTHONUNBUFFERED": "1"}
        self.env.pop("CELERY_BROKER_URL", None)
        self.started: list[Managed] = []
        self.backends: dict[str, dict[str, Any]] = {}
        self.ledger: list[Row] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.db_down = False
        self.stored_while_down = 0  # half-studies begun during an outage with an instance stored
        self.restarts = 0
        self.faults: list[str] = []

    # -- processes ------------------------------------------------------------------------
    def managed(self, name: str, argv: list[str], ready: str | None) -> Managed:
        m = Managed(name, argv, self.env, self.tmp / "logs" / f"{name}.log", ready)
        self.started.append(m)
        return m.start(timeout=60)

    def setup(self) -> None:
        self.pg.init()
        subprocess.run([PYTHON, "manage.py", "migrate", "-v0"], cwd=ROOT, env=self.env, check=True)
        self.ns.up()
        for name in ("a", "b", "c"):
            host = self.ns.ip if name == "c" else "127.0.0.1"
            port, http_port = free_port(), free_port()
            argv = [PYTHON, "manage.py", "runbackend", "--ae-title", f"NODE{name.upper()}", "--host", host,
                    "--port", str(port), "--http-port", str(http_port), "--store-dir",
                    str(self.tmp / "store" / f"node-{name}")]
            if name == "c":
                argv = ["ip", "netns", "exec", self.ns.name, *argv]
            self.backends[f"node-{name}"] = {
                "config": {"Id": f"node-{name}", "AeTitle": f"NODE{name.upper()}", "Host": host, "Port": port,
                           "Health": {"Mode": "native", "Url": f"http://{host}:{http_port}/api/health"}},
                "url": f"http://{host}:{http_port}", "argv": argv,
                "process": self.managed(f"node-{name}", argv, "runbackend ready")}
        config = {"HeartbeatIntervalSeconds": 1, "HeartbeatTimeoutSeconds": 3,
                  "Network": {"DimseTimeoutSeconds": 8, "BoundBackendHoldSeconds": 3, "ConnectTimeoutSeconds": 3,
                              "AcseTimeoutSeconds": 5, "ReleaseTimeoutSeconds": 2},
                  "Pools": [{"Id": "main", "AeTitle": "SYNTHIQ", "Host": "127.0.0.1", "Port": free_port(),
                             "Backends": [b["config"] for b in self.backends.values()]}]}
        self.port = config["Pools"][0]["Port"]
        path = self.tmp / "synthiq.json"
        path.write_text(json.dumps(config))
        self.proxy = self.managed("runproxy", [PYTHON, "manage.py", "runproxy", "--config", str(path)],
                                  "runproxy ready")

    def stop_all(self) -> None:
        for m in reversed(self.started):
            m.stop()
        self.ns.down()
        try:
            self.pg.stop()
        except Exception:
            pass
        self.pg.remove()

    # -- load -------------------------------------------------------------------------------
    def sender(self, index: int) -> None:
        from pydicom import dcmread
        from pynetdicom import AE, build_context

        ae = AE(ae_title=f"CHAOS{index}")
        ae.acse_timeout = ae.network_timeout = 10
        ae.dimse_timeout = 30
        for n in itertools.count():
            if self.stop.is_set():
                return
            big = n % 4 == 0  # now and then a CT-sized study, whose instances span many PDUs
            suid, files = write_study(self.tmp / "studies" / f"s{index}-{n}", count=self.args.per_study,
                                      rows=512 if big else 64, columns=512 if big else 64)
            sops = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
            for half in (range(0, len(files) // 2), range(len(files) // 2, len(files))):
                statuses = [-1] * len(half)
                db_down = self.db_down
                try:
                    assoc = ae.associate("127.0.0.1", self.port, ae_title="SYNTHIQ",
                                         contexts=[build_context("1.2.840.10008.5.1.4.1.1.2",
                                                                 "1.2.840.10008.1.2.1")])
                    if assoc.is_established:
                        try:
                            for k, i in enumerate(half):
                                rsp = assoc.send_c_store(dcmread(files[i]))
                                statuses[k] = int(rsp.Status) if "Status" in rsp else -1
                                if not assoc.is_established:
                                    break
                        finally:
                            if assoc.is_established:
                                assoc.release()
                except Exception as exc:  # the campaign records, it does not stop
                    log(f"sender {index}: {type(exc).__name__}: {exc}")
                with self.lock:
                    self.ledger += [Row(suid, sops[i], statuses[k], time.time(), db_down)
                                    for k, i in enumerate(half)]
                    if db_down and OK_STATUSES.intersection(statuses):
                        self.stored_while_down += 1

    # -- faults -----------------------------------------------------------------------------
    def control(self, backend: str, **knobs: Any) -> None:
        try:
            requests.post(f"{self.backends[backend]['url']}/api/control", json=knobs, timeout=5)
        except requests.RequestException:
            pass

    def fault_plan(self):
        """Every kind of fault in turn, each backend's share spread over the cycle."""
        c = self.backends["node-c"]["config"]["Port"]
        statuses = itertools.cycle(FORCED_STATUSES)
        while True:
            status = next(statuses)
            yield "SIGKILL node-a (down past the hold window)", lambda: self.kill_backend("node-a")
            yield f"{status} from node-b", lambda s=status: self.timed(
                lambda: self.control("node-b", status=s), lambda: self.control("node-b", status="0x0000"))
            yield "TCP resets mid-data to node-c", lambda: self.timed(
                lambda: self.ns.resets(c, True), lambda: self.ns.resets(c, False))
            yield "PostgreSQL stopped", self.database_outage
            yield "SIGSTOP node-b (hung past the DIMSE timeout)", lambda: self.hang_backend("node-b")
            yield "node-a rejects associations", lambda: self.timed(
                lambda: self.control("node-a", reject=True), lambda: self.control("node-a", reject=False))
            yield "stalled link to node-c", lambda: self.timed(lambda: self.ns.stall(True),
                                                               lambda: self.ns.stall(False))
            yield "SIGKILL node-c", lambda: self.kill_backend("node-c")
            yield "SIGKILL node-b, back inside the hold window", lambda: self.kill_backend("node-b", down=1.0)
            yield "SIGSTOP node-c", lambda: self.hang_backend("node-c")

    def timed(self, start, end, seconds: float = 5.0) -> None:
        start()
        time.sleep(seconds)
        end()

    def kill_backend(self, backend: str, down: float = 6.0) -> None:
        process: Managed = self.backends[backend]["process"]
        process.signal(signal.SIGKILL)
        assert process.proc is not None
        process.proc.wait(timeout=10)
        time.sleep(down)
        process.start(timeout=60)

    def hang_backend(self, backend: str) -> None:
        process: Managed = self.backends[backend]["process"]
        process.signal(signal.SIGSTOP)
        time.sleep(10.0)
        process.signal(signal.SIGCONT)

    def database_outage(self) -> None:
        stored = self.stored_while_down
        self.pg.stop()
        self.db_down = True
        time.sleep(self.args.db_outage_seconds)
        deadline = time.monotonic() + OUTAGE_EXTRA_SECONDS
        while self.stored_while_down == stored and time.monotonic() < deadline and not self.stop.is_set():
            time.sleep(0.5)
        self.pg.start()
        self.db_down = False

    def restart_proxy(self) -> None:
        self.proxy.signal(signal.SIGKILL)
        assert self.proxy.proc is not None
        self.proxy.proc.wait(timeout=10)
        self.proxy.start(timeout=60)
        self.restarts += 1

    def faults_loop(self) -> None:
        plan = self.fault_plan()
        next_restart = time.monotonic() + self.args.restart_every
        while not self.stop.is_set():
            if time.monotonic() >= next_restart and self.restarts < self.args.restarts:
                self.faults.append("runproxy SIGKILL + restart")
                self.restart_proxy()
                next_restart = time.monotonic() + self.args.restart_every
                continue
            name, fault = next(plan)
            self.faults.append(name)
            log(f"fault: {name}")
            try:
                fault()
            except Exception as exc:  # a fault that cannot be injected is reported, not fatal
                log(f"fault {name} failed: {exc}")
            self.stop.wait(self.args.fault_gap)

    # -- the verdict ------------------------------------------------------------------------
    def where(self) -> dict[str, dict[str, set[str]]]:
        """study -> SOP Instance UID -> backends whose store folder holds it."""
        out: dict[str, dict[str, set[str]]] = {}
        for backend in self.backends:
            root = self.tmp / "store" / backend
            for path in root.glob("*/*.dcm") if root.exists() else []:
                out.setdefault(path.parent.name, {}).setdefault(path.stem, set()).add(backend)
        return out

    def bindings(self) -> dict[str, str]:
        code = ("import json, django; django.setup()\nfrom affinity.models import Binding\n"
                "print(json.dumps(dict(Binding.objects.values_list('study_uid', 'backend_id'))))")
        out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=self.env, capture_output=True, text=True,
                             timeout=60, check=True)
        return json.loads(out.stdout)

    def run(self) -> int:
        for tool, package in (("ip", "iproute2"), ("iptables", "iptables"), ("tc", "iproute2"),
                              ("runuser", "util-linux")):
            find_tool(tool, package)
        if os.geteuid() != 0:
            raise SystemExit("make chaos needs root (network namespace, iptables, PostgreSQL as postgres)")
        started = time.monotonic()
        try:
            self.setup()
            senders = [threading.Thread(target=self.sender, args=(i,), daemon=True) for i in range(self.args.senders)]
            faults = threading.Thread(target=self.faults_loop, daemon=True)
            for t in senders:
                t.start()
            faults.start()
            # Until enough stores and restarts, and every kind of fault struck at least once.
            while (len(self.ledger) < self.args.stores or self.restarts < self.args.restarts
                   or len(set(self.faults)) < FAULT_KINDS) and time.monotonic() - started < self.args.max_minutes * 60:
                time.sleep(1)
            self.stop.set()
            faults.join(timeout=120)
            for t in senders:
                t.join(timeout=120)
            self.ns.stall(False)
            if self.db_down:
                self.pg.start()
            wait_for(lambda: port_open(self.port), timeout=60, what="runproxy after the campaign")
            time.sleep(3)  # write-behind flush, pending bindings written
            where = self.where()
            bindings = self.bindings()
        finally:
            self.stop.set()
            self.stop_all()
        return self.verdict(where, bindings, time.monotonic() - started)

    def verdict(self, where: dict[str, dict[str, set[str]]], bindings: dict[str, str], seconds: float) -> int:
        rows = self.ledger
        successes = [r for r in rows if r.status in OK_STATUSES]
        false_successes = [r for r in successes if not where.get(r.study, {}).get(r.sop)]
        split = {s: sorted(set().union(*sops.values())) for s, sops in where.items()
                 if len(set().union(*sops.values())) > 1}
        moved = {s: (bindings.get(s), sorted(set().union(*sops.values()))) for s, sops in where.items()
                 if bindings.get(s) and bindings[s] not in set().union(*sops.values())}
        outage_studies = {r.study for r in rows if r.db_down and r.status in OK_STATUSES}
        unwritten = sorted(s for s in outage_studies if s not in bindings)
        statuses: dict[str, int] = {}
        for r in rows:
            key = "none" if r.status < 0 else f"0x{r.status:04X}"
            statuses[key] = statuses.get(key, 0) + 1
        summary = {
            "seconds": round(seconds), "stores": len(rows), "successes": len(successes), "statuses": statuses,
            "runproxy_restarts": self.restarts, "faults": len(self.faults),
            "fault_kinds": sorted(set(self.faults)), "studies": len({r.study for r in rows}),
            "studies_sent_during_database_outage": len(outage_studies),
            "false_successes": len(false_successes), "split_studies": len(split), "moved_studies": len(moved),
            "outage_bindings_not_written": len(unwritten),
        }
        (self.tmp / "ledger.json").write_text(json.dumps([asdict(r) for r in rows]))
        out = self.args.out or ROOT / "bench" / "results" / "chaos.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary | {"false_success_rows": [asdict(r) for r in false_successes[:20]],
                                             "split": split, "moved": moved, "unwritten": unwritten[:20]}, indent=2))
        print(json.dumps(summary, indent=2))
        failed = (false_successes or split or moved or unwritten or len(rows) < self.args.stores
                  or self.restarts < self.args.restarts or len(set(self.faults)) < FAULT_KINDS)
        print(f"chaos: {'FAILED' if failed else 'OK'} ({out}; work dir {self.tmp})")
        return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=1200, help="C-STOREs to send (the ledger's length)")
    parser.add_argument("--restarts", type=int, default=20, help="runproxy SIGKILL + restart cycles")
    parser.add_argument("--restart-every", type=float, default=12.0, help="seconds between runproxy restarts")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--per-study", type=int, default=8, help="instances per study (sent over 2 associations)")
    parser.add_argument("--fault-gap", type=float, default=1.0, help="seconds between two faults")
    parser.add_argument("--db-outage-seconds", type=float, default=6.0)
    parser.add_argument("--max-minutes", type=float, default=20)
    parser.add_argument("--tmp-dir")
    parser.add_argument("--out", type=Path)
    return Campaign(parser.parse_args()).run()


if __name__ == "__main__":
    sys.exit(main())
