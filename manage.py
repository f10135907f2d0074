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
    from django.db import InterfaceError, OperationalError

    try:
        execute_from_command_line(sys.argv)
    except (OperationalError, InterfaceError) as exc:
        # The database is down, refuses these credentials or does not exist: one line naming
        # it (password masked) and what it said, for every command (migrate, loadconfig, demo).
        from synthiq_project.dburl import mask_password

        where = mask_password(os.environ.get("DATABASE_URL", "")) or settings.DATABASES["default"].get("NAME")
        said = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        sys.exit(f"synthiq: database {where} unavailable: {said}")
