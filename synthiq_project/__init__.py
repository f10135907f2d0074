# Every process that loads SynthIQ sets the owner-only umask first (synthiq_project.filemodes).
#
# The Celery app is not imported here, as Django's Celery recipe would: only the processes
# `celery -A synthiq_project worker|beat` send or run tasks (nothing calls .delay()), and
# Celery finds synthiq_project.celery there by itself. Imported here, it cost every other
# process (runproxy, each of its workers, runbackend, every manage.py command) 0.2 s of
# CPU at start.
from synthiq_project.filemodes import files_owner_only

files_owner_only()
