"""manage.py loadtest as an operator meets it: every option explained, and a summary that
says where the studies went."""

from __future__ import annotations

import subprocess

from tests.harness import PYTHON, ROOT


def test_every_loadtest_option_has_help_text():
    from routing.management.commands.loadtest import Command

    parser = Command().create_parser("manage.py", "loadtest")
    own = [a for a in parser._actions if a.dest not in ("help", "version", "verbosity", "settings", "pythonpath",
                                                         "traceback", "no_color", "force_color", "skip_checks")]
    assert own and all(a.help for a in own), [a.dest for a in own if not a.help]


def test_the_summary_counts_studies_per_backend(cluster, tmp_path):
    backends = [cluster.backend("node-a"), cluster.backend("node-b")]
    proxy = cluster.proxy(cluster.config(backends))
    argv = [PYTHON, "manage.py", "loadtest", "--port", str(proxy.port), "--studies", "4", "--instances", "3",
            "--rows", "16", "--columns", "16", "--associations", "2", "--no-progress", "--reset-holdings"]
    for b in backends:
        argv += ["--backend-url", b.url]
    done = subprocess.run(argv, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = [int(line.rsplit(":", 1)[1]) for line in done.stdout.splitlines() if line.startswith("studies on")]
    assert len(counts) == 2 and sum(counts) == 4, done.stdout
    assert "split       0 of 4 studies" in done.stdout
