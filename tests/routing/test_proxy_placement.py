"""Studies stay whole on one backend across associations (real associations on loopback)."""

from __future__ import annotations

import pytest

from routing.synthetic import write_study
from tests.harness import placement, send_files

pytestmark = pytest.mark.postgres


def test_one_study_over_three_associations_interleaved_with_two_others_stays_whole(cluster, tmp_path):
    from health.models import BackendHealth  # noqa: F401  (rows written below)

    backends = [cluster.backend(f"node-{c}") for c in "abc"]
    proxy = cluster.proxy(cluster.config(backends))
    _healthy(backends)
    main, main_files = write_study(tmp_path / "main", count=9)
    other1, other1_files = write_study(tmp_path / "o1", count=4)
    other2, other2_files = write_study(tmp_path / "o2", count=4)

    # Three associations each carry a third of the main study, interleaved with the others.
    for n in range(3):
        files = main_files[n * 3:(n + 1) * 3]
        batch = [files[0], other1_files[n], files[1], other2_files[n], files[2]]
        assert all(s.status == 0 for s in send_files(proxy.port, batch))
    assert all(s.status == 0 for s in send_files(proxy.port, [other1_files[3], other2_files[3]]))

    where = placement(backends)
    for suid, count in ((main, 9), (other1, 4), (other2, 4)):
        assert len(where[suid]) == 1, f"study {suid} split over {where[suid]}"
        holder = next(b for b in backends if b.id in where[suid])
        assert len(holder.holdings()[suid]) == count


def _healthy(backends, load: float = 0.0):
    """Health rows as the heartbeat service would write them (that service is tested apart)."""
    import datetime as dt

    from health.models import BackendHealth

    now = dt.datetime.now(dt.UTC)
    for b in backends:
        BackendHealth.objects.update_or_create(
            backend_id=b.id, defaults={"healthy": True, "load": load, "capacity": 50, "last_ok_utc": now,
                                       "last_check_utc": now},
        )
