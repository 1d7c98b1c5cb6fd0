#!/usr/bin/env bash
# Everything a fresh machine needs for the demo and the tests: PostgreSQL server binaries and
# pgbench from Debian, a virtualenv with pgloupe and its test and demo dependencies from PyPI, and a
# second one with pgloupe alone (no extras) for the packaging tests.
set -euo pipefail
cd "$(dirname "$0")/.."

have_pg() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && command -v pgbench >/dev/null 2>&1
}
if ! have_pg; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: PostgreSQL server binaries are missing; install Debian's postgresql and postgresql-contrib" >&2
    exit 1
  fi
  echo "setup: installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postgresql postgresql-contrib >/dev/null
  # Debian starts a cluster on install; pgloupe runs its own throwaway servers instead.
  service postgresql stop >/dev/null 2>&1 || true
fi

# HypoPG lets the index advisor prove a suggested index lowers the plan cost (hypothetical indexes).
major=$(ls -d /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sed -E 's#.*/postgresql/([0-9]+)/.*#\1#' | sort -n | tail -1)
if [ -n "$major" ] && [ ! -f "/usr/share/postgresql/$major/extension/hypopg.control" ] && [ "$(id -u)" -eq 0 ]; then
  echo "setup: installing HypoPG for PostgreSQL $major from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "postgresql-$major-hypopg" >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "postgresql-$major-hypopg" >/dev/null
  } || echo "setup: HypoPG unavailable; index suggestions will be reported unverified" >&2
fi

# promtool and amtool check the Prometheus/Alertmanager files in deploy/; the dashboard test runs a real Prometheus.
if { ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; } && [ "$(id -u)" -eq 0 ]; then
  echo "setup: installing Prometheus and Alertmanager from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null 2>&1 || {
      apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null; }
  } || echo "setup: Prometheus unavailable; the deploy checks will be skipped" >&2
  # the packages start services where an init system runs; the tests start their own
  service prometheus stop >/dev/null 2>&1 || true
  service prometheus-alertmanager stop >/dev/null 2>&1 || true
fi

# Headless Chromium renders the findings page in its end-to-end test.
if ! command -v chromium >/dev/null && [ "$(id -u)" -eq 0 ]; then
  echo "setup: installing Chromium from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || {
      apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
  } || echo "setup: Chromium unavailable; the page's browser tests will be skipped" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.pgloupe-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test,demo]'
  # atheris (coverage-guided fuzzing, run on demand with -m slow) where a wheel exists; never fatal
  .venv/bin/python -m pip install -q -e '.[test,demo,fuzz]' >/dev/null 2>&1 \
    || echo "setup: atheris unavailable here; the fuzzing run will be skipped" >&2
  touch "$stamp"
fi

# The compiled hot path (setup.py, Cython): the editable install above builds it in place; it is built
# again here whenever a compiled module's source is newer than its build (a stale build never runs: the
# source does, see proxy/__init__.py). Without a C compiler pgloupe runs as pure Python.
if ! .venv/bin/python -c "import sys, proxy; sys.exit(proxy.implementation() != 'compiled')"; then
  echo "setup: building the compiled hot path"
  .venv/bin/python -m pip install -q --no-deps -e . >/dev/null 2>&1 || true
  .venv/bin/python -c "import proxy; print('setup: pgloupe runs', proxy.implementation())"
fi

# .venv-plain: pgloupe with its runtime dependencies only, as a plain `pip install .` leaves it; the
# packaging tests run the demo and the container's command from it. Editable, so it runs this tree.
if [ ! -x .venv-plain/bin/python ]; then
  "$PY" -m venv .venv-plain
fi
[ -f .venv-plain/.gitignore ] || echo '*' > .venv-plain/.gitignore  # keeps it out of git status
plain_stamp=.venv-plain/.pgloupe-installed
if [ ! -f "$plain_stamp" ] || [ pyproject.toml -nt "$plain_stamp" ]; then
  .venv-plain/bin/python -m pip install -q --upgrade pip
  .venv-plain/bin/python -m pip install -q -e .
  touch "$plain_stamp"
fi

# The real-application corpus's Node apps (Drizzle, TypeORM, express): their locked dependencies from npm.
node_dir=tests/realapps/node
if command -v npm >/dev/null 2>&1 && [ -f "$node_dir/package-lock.json" ]; then
  node_stamp="$node_dir/node_modules/.pgloupe-installed"
  if [ ! -f "$node_stamp" ] || [ "$node_dir/package-lock.json" -nt "$node_stamp" ]; then
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
      && touch "$node_stamp" \
      || echo "setup: npm ci failed in $node_dir; the Node apps of the corpus will be skipped" >&2
  fi
else
  echo "setup: npm not found; the Node apps of the corpus will be skipped" >&2
fi
