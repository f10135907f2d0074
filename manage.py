#!/usr/bin/env python
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    from synthiq_project.filemodes import files_owner_only

    files_owner_only()  # before the settings create var/ and anything is written
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "synthiq_project.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        settings.INSTALLED_APPS  # noqa: B018 - reading a setting loads them all, and checks them
    except ImproperlyConfigured as exc:
        # A bad or missing variable: one line that names it, not a traceback.
        sys.exit(f"synthiq: {exc}")
    execute_from_command_line(sys.argv)
