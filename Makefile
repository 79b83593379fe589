# Two commands for a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Server mode runs against a PostgreSQL and a Redis that `make test` starts itself
# (tests/servers/services.sh); set both to use servers of your own instead.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:54329/kstudio
TEST_REDIS_URL ?= redis://127.0.0.1:63799/0

.PHONY: run cluster kube-build kube-build-tried install test lint test-embedded test-server test-servers test-services test-services-stop test-packages chromium bench clean

$(STAMP): pyproject.toml cli/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e ./cli -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed
	$(PY) manage.py serve

test: install test-packages test-servers test-services kube-build-tried lint test-embedded test-server
# A failed control-plane build does not stop `make test`: the other tests run, and every
# Kubernetes test fails with the build's one line, said again without building again.
test: export KSTUDIO_KUBE_BUILD = reuse

# A real Kubernetes control plane on this machine (devcluster/): etcd, kube-apiserver,
# controller manager and scheduler built from their Go modules, nodes run by our process
# kubelet. Prints KUBECONFIG=<path> once Ready; Ctrl-C stops it. NODES=N for N nodes.
cluster: install kube-build
	$(PY) -m devcluster

# Built once per Kubernetes version into ~/.cache/kstudio/kube/<version>/ (Go 1.26 and the
# module proxy); says when it builds and how long it took.
kube-build:
	@KSTUDIO_KUBE_BUILD= devcluster/build.sh >/dev/null

kube-build-tried:
	@KSTUDIO_KUBE_BUILD= devcluster/build.sh >/dev/null || \
		echo "The Kubernetes tests will fail with the line above; the others run." >&2

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy .
	$(VENV)/bin/lint-imports
	$(PY) manage.py makemigrations --check --dry-run
	$(PY) manage.py spectacular --fail-on-warn --file /dev/null
	DEBUG=0 SECRET_KEY=check-deploy-only-$$(date +%s)-0123456789abcdefghijklmnopqrstuvwxyz \
		$(PY) manage.py check --deploy --fail-level ERROR

# Embedded mode: SQLite, the in-memory channel layer, the controller in the web process.
test-embedded: install
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest

# Server mode: PostgreSQL and Redis, as several processes would share them.
# The tests run many short-lived event loops and worker threads in one process, each of
# which may hold a pooled connection until its thread ends: a bigger pool than a server's.
# Kubernetes tests ran in embedded mode already: here only those the mode matters to.
test-server: install
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) DATABASE_POOL_SIZE=40 \
		$(PY) -m pytest -m "not kubernetes or both_modes"

# The artifact store is tested on real object stores: moto's S3 server (a dev dependency)
# and Azurite, Microsoft's Azure Storage emulator, from npm (Node.js 18 or later).
SERVERS_STAMP := tests/servers/node_modules/.installed-stamp
$(SERVERS_STAMP): tests/servers/package.json tests/servers/package-lock.json
	@command -v npm >/dev/null || { echo "npm is needed for the test servers (Azurite): install Node.js"; exit 1; }
	npm ci --prefix tests/servers --no-audit --no-fund --loglevel=error
	@touch $@

test-servers: $(SERVERS_STAMP)

# PostgreSQL and Redis for server mode, on ports of their own (54329, 63799) under
# ${TMPDIR:-/tmp}/kstudio-services-<uid>; left running for the next run, stopped by
# `make test-services-stop`. Not started when TEST_DATABASE_URL and TEST_REDIS_URL
# both name servers of yours.
test-services: test-packages
	@case "$(origin TEST_DATABASE_URL) $(origin TEST_REDIS_URL)" in \
		*file*) tests/servers/services.sh start;; esac

test-services-stop:
	tests/servers/services.sh stop

# Browser tests use Debian's Chromium (Playwright's own browser download cannot work offline).
# Debian packages the tests drive: chromium (the browser tests), libnss-wrapper (the fake
# cluster's DNS, so that pods reach each other by name), openmpi-bin (MPI jobs), and
# postgresql and redis-server (server mode). Installed with apt as root.
test-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	ls /usr/lib/*/libnss_wrapper.so >/dev/null 2>&1 || missing="$$missing libnss-wrapper"; \
	command -v mpirun >/dev/null 2>&1 || missing="$$missing openmpi-bin"; \
	if [ -z "$$missing" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing Debian's$$missing for the tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	else echo "WARNING: missing Debian packages:$$missing; the tests that need them are skipped (apt-get install$$missing)"; fi

chromium: test-packages

BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP) test-services
	@command -v ab >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -qq apache2-utils; }
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache tests/servers/node_modules
