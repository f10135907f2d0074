"""The Celery app: heartbeats (and binding expiry) when CELERY_BROKER_URL is set.

Run `celery -A synthiq_project worker` plus `celery -A synthiq_project beat` (or one
`worker -B` for small sites) with the same environment as runproxy, SYNTHIQ_CONFIG
included: pools and backends come from the database runproxy keeps in sync with the
file, the heartbeat interval and timeout from the file itself.
"""

from __future__ import annotations

import os

from celery import Celery

from synthiq_project.filemodes import files_owner_only

# `celery -A synthiq_project` imports this module before reading the settings or opening
# its log and beat-schedule files. (The package imports it too, so every process that
# loads SynthIQ's settings gets the same umask.)
files_owner_only()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "synthiq_project.settings")

app = Celery("synthiq_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Several installations (or test runs) may share one Redis: a queue name of their own
# keeps one's beat from feeding another's worker.
app.conf.task_default_queue = os.environ.get("SYNTHIQ_CELERY_QUEUE", "synthiq")
app.conf.broker_connection_retry_on_startup = True
app.autodiscover_tasks(["health", "affinity", "routing"])


@app.on_after_finalize.connect
def beat_schedule_define(sender: Celery, **kwargs) -> None:
    """The beat schedule, in code. Each periodic task expires after its own period: a
    heartbeat that waited longer than an interval in the queue (worker down, backlog)
    describes the past and is dropped rather than run late in a burst."""
    from affinity.services import BINDING_PURGE_SECONDS
    from health.services import heartbeat_policy_read
    from routing.verifier import VERIFY_ROUND_SECONDS

    interval = heartbeat_policy_read().interval_seconds
    sender.conf.beat_schedule = {
        "heartbeats": {"task": "health.heartbeat_run_all", "schedule": interval,
                       "options": {"expires": interval}},
        "binding-expiry": {"task": "affinity.bindings_purge_expired", "schedule": BINDING_PURGE_SECONDS,
                           "options": {"expires": BINDING_PURGE_SECONDS}},
        "ledger-verification": {"task": "routing.ledger_verify_due", "schedule": VERIFY_ROUND_SECONDS,
                                "options": {"expires": VERIFY_ROUND_SECONDS}},
    }
