# SynthIQ: `make run` for the demo, `make test` for the whole suite, `make bench` for §12.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := $(shell grep -v '^\#' requirements/apt.txt)

.PHONY: setup deps apt migrate run test check test-sqlite test-postgres bench soak chaos interop lint clean

setup: deps apt migrate

deps: $(VENV)/.deps

$(VENV)/.deps: requirements/base.txt requirements/dev.txt requirements/postgres.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	touch $@

# Debian tools the tests use (dcmtk, orthanc, chromium, haproxy): installed when
# running as root and something is missing; otherwise say what to install.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; \
	  fi; \
	fi

# This checkout's settings: a generated SECRET_KEY, so every manage.py command in the README
# works here as written (the environment still wins over the file; production sets its own).
# umask first: the shell creates the file for the redirection, owner-only from the start.
.env:
	@umask 077 && $(PYTHON) -c 'import secrets; print("# written by make setup for this checkout\nSECRET_KEY=" + secrets.token_urlsafe(50))' > $@
	@echo "wrote $@ (a generated SECRET_KEY for this checkout)"

migrate: deps .env
	$(PY) manage.py migrate -v0
	$(PY) manage.py collectstatic --noinput -v0

# The demo needs no Debian package: it does not install the test tools.
run: deps migrate
	$(PY) manage.py demo

test: setup check test-sqlite test-postgres

# Static checks: lint, the import contracts (pyproject.toml), strict types where they pay.
check: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

# Two pytest workers (pytest-xdist), a test file per worker at a time: each worker has its own
# database, temp dir and free ports; the suite mostly waits on real processes, so two at once
# fit two cores. PYTEST_WORKERS=0 runs it in one process.
PYTEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadfile)

test-sqlite: deps
	SYNTHIQ_TEST_DB=sqlite $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-postgres: deps
	SYNTHIQ_TEST_DB=postgresql $(PY) -m pytest -m postgres $(XDIST) $(PYTEST_ARGS)

# W1-W5 side by side (W2 also with the study ledger's background verifier active), then the
# ledger's adoption of 100,000 studies into SQLite and PostgreSQL (bench/adopt.py).
ADOPT_ARGS ?= $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)
bench: setup
	$(PY) -m bench.run --verify $(BENCH_ARGS)
	$(PY) -m bench.adopt $(ADOPT_ARGS)
	$(PY) -m bench.dicomweb $(if $(findstring --quick,$(BENCH_ARGS)),--quick) $(DICOMWEB_BENCH_ARGS)

# The fault campaign (docs/reliability.md): >= 1,200 ledgered C-STOREs under faults and
# 20 runproxy restarts, 10,000 hypothesis PDU sequences against a live runproxy, and the
# protocol decoders under atheris for a minute. Needs root (network namespace, iptables).
chaos: setup
	$(PY) -m bench.chaos $(CHAOS_ARGS)
	SYNTHIQ_FUZZ_EXAMPLES=10000 SYNTHIQ_TEST_DB=sqlite $(PY) -m pytest -q -s --timeout=5400 tests/routing/test_fuzz_pdus.py
	mkdir -p var/fuzz-corpus && $(PY) -m bench.fuzz_decoders -max_total_time=60 -rss_limit_mb=2048 var/fuzz-corpus

# The whole interop matrix (make test runs it with pynetdicom sending 3 of its 11 syntax files):
# real senders x real backends, each backend twinned behind SynthIQ and direct; the table lands
# in bench/results/interop.md.
interop: setup
	SYNTHIQ_INTEROP=full SYNTHIQ_TEST_DB=sqlite $(PY) -m pytest -q tests/routing/test_interop.py \
	  tests/routing/test_commitment_drop_in.py \
	  tests/routing/test_front_door.py::test_modalities_calling_an_old_ae_title_are_accepted_as_the_pool_says $(PYTEST_ARGS)

# A steady mixed load for 30 minutes; fails if runproxy's RSS, fds or tasks keep growing.
soak: setup
	$(PY) -m bench.soak $(SOAK_ARGS)

lint: check

clean:
	rm -rf $(VENV) var
