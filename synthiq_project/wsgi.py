from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from synthiq_project.filemodes import files_owner_only

# The WSGI server (gunicorn) imports this before the app opens a database or a log file.
files_owner_only()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "synthiq_project.settings")
application = get_wsgi_application()
