"""Routing-decision latency and affinity write rate against the database in DATABASE_URL.

Run by bench/run.py (``python -m bench.dbbench``) once for SQLite and once for
PostgreSQL, in its own process (the database is a process-wide Django setting). Times
the objects runproxy uses in-process:
``Router.route`` on a cache miss (database lookup + waterfall + durable insert-if-absent
binding, through the routing thread) and on a hit (hot cache, no I/O),
``Bindings.cached`` alone, sustained binding claims per second when many
associations route new studies at once (``Router.submit`` from 64 threads: the routing
thread claims them in batches), the same one claim at a time (the unbatched reference),
and the write-behind batch of per-instance touches.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "synthiq_project.settings")
SUBMITTERS = 64


def pct(values: list[float], scale: float) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] * scale

    return {"p50": at(50), "p95": at(95), "p99": at(99), "max": ordered[-1] * scale, "n": len(ordered)}


def _timed(call: Any, times: list[float]) -> Any:
    t = time.perf_counter()
    out = call()
    times.append(time.perf_counter() - t)
    return out


def _bench_pool() -> None:
    """The pool the benchmark routes into: three backends, all healthy, no bindings yet."""
    from affinity.models import Binding
    from health.models import BackendHealth
    from pools.config import config_load
    from pools.services import config_sync

    backends = [{"Id": f"node-{c}", "AeTitle": f"NODE{c.upper()}", "Host": "127.0.0.1", "Port": 10400 + n,
                 "Health": {"Mode": "native", "Url": f"http://127.0.0.1:{18080 + n}/api/health"}}
                for n, c in enumerate("abc")]
    cfg_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"dbbench-{os.getpid()}.json"
    cfg_path.write_text(json.dumps({"HeartbeatTimeoutSeconds": 86400,
                                    "Pools": [{"Id": "bench", "AeTitle": "BENCH", "Port": 11112,
                                               "Backends": backends}]}))
    config_sync(config=config_load(path=cfg_path))
    cfg_path.unlink()
    now = dt.datetime.now(dt.UTC)
    for b in backends:
        BackendHealth.objects.update_or_create(
            backend_id=b["Id"],
            defaults={"healthy": True, "load": 0.1, "capacity": 50, "last_ok_utc": now, "last_check_utc": now},
        )
    Binding.objects.all().delete()


def _route_latencies(router: Any, bindings: Any, uids: list[str]) -> dict[str, Any]:
    """A new study (miss), then the same studies from the hot cache (hit), and the cache alone."""
    miss: list[float] = []
    hit: list[float] = []
    cache: list[float] = []
    for uid in uids:
        route = _timed(lambda u=uid: router.route(pool_id="bench", study_uid=u), miss)
        assert route.backend_id and not route.cache_hit
    for _ in range(3):
        for uid in uids:
            route = _timed(lambda u=uid: router.route_cached(pool_id="bench", study_uid=u), hit)
            assert route is not None and route.cache_hit
    for _ in range(3):
        for uid in uids:
            _timed(lambda u=uid: bindings.cached(("bench", u)), cache)
    return {"route_miss_ms": pct(miss, 1e3), "route_hit_us": pct(hit, 1e6), "cache_get_us": pct(cache, 1e6)}


def _claims_one_at_a_time(prefix: str, count: int) -> float:
    """Binding claims one at a time: the durable write of a new study, one transaction each. Per second."""
    from django.db import close_old_connections, connection

    from affinity import services

    close_old_connections()
    stamp = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    for n in range(count):
        services.binding_claim(pool_id="bench", study_uid=f"{prefix}.{n}", backend_id="node-a", now=stamp)
    rate = count / (time.perf_counter() - t)
    connection.close()
    return rate


def _claims_batched(router: Any, prefix: str, count: int) -> float:
    """Sustained claims as runproxy makes them: many associations waiting on new studies at
    once, the routing thread taking whatever is queued as one batch. Per second."""
    def submitter(thread_prefix: str, n_each: int) -> None:
        pending = [router.submit(pool_id="bench", study_uid=f"{thread_prefix}.{n}") for n in range(n_each)]
        for future in pending:
            assert future.result().backend_id

    per_thread = count // SUBMITTERS
    workers = [threading.Thread(target=submitter, args=(f"{prefix}.{k}", per_thread)) for k in range(SUBMITTERS)]
    t = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return per_thread * SUBMITTERS / (time.perf_counter() - t)


def _touches(count: int) -> float:
    """Write-behind: per-instance touches batched in one transaction per flush. Per second."""
    from affinity import services
    from affinity.models import Binding

    keys = list(Binding.objects.values_list("pool_id", "study_uid")[:count])
    stamp = dt.datetime.now(dt.UTC)
    t = time.perf_counter()
    services.bindings_touch(touches={tuple(k): (1, stamp) for k in keys})
    return len(keys) / (time.perf_counter() - t)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n_route = 500 if args.quick else 3000
    n_claims = 2000 if args.quick else 10000

    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    from affinity.bindings import Bindings
    from affinity.models import Binding
    from routing.router import Router

    _bench_pool()
    bindings = Bindings(window_hours=96)
    router = Router(bindings=bindings, heartbeat_timeout=86400)
    router.refresh(pool_ids=["bench"])
    pid = os.getpid()
    result: dict[str, Any] = {"database": connection.vendor}
    result |= _route_latencies(router, bindings, [f"1.2.826.0.1.3680043.10.999.{pid}.{n}" for n in range(n_route)])
    result["claims_per_s"] = _claims_one_at_a_time(f"1.2.826.0.1.3680043.10.998.{pid}", n_claims // 4)
    result["claims_per_s_batched"] = _claims_batched(router, f"1.2.826.0.1.3680043.10.997.{pid}", n_claims)
    router.stop()
    result |= {"submitters": SUBMITTERS, "touches_per_s": _touches(n_claims), "claims": n_claims}
    Binding.objects.all().delete()
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
