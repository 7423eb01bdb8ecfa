#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it.
#   bash scripts/test.sh              # the whole default suite
#   bash scripts/test.sh -k chat      # extra arguments go to pytest
#   PYTHON=/path/to/python3.12 VENV=.venv-3.12 bash scripts/test.sh   # another Python
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test,dev]'

# System packages used by the browser, multi-host, PHP and Pusher tests: Debian's
# Chromium (driven by playwright with executable_path), iproute2 (network namespaces),
# php-cli (a PHP script pushing through GatewayWorker's protocol, tests/test_php_e2e.py)
# and Node with npm (unchanged pusher-js and laravel-echo clients).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v php >/dev/null 2>&1 || need+=(php-cli)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing ${need[*]} with apt-get" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    else
        echo "warning: ${need[*]} missing and cannot be installed (not root or no apt-get)" >&2
    fi
fi

# The Pusher tests' npm packages (pusher-js, laravel-echo), pinned by tests/js/package-lock.json.
if command -v npm >/dev/null 2>&1 && [ ! -d tests/js/node_modules/pusher-js ]; then
    npm ci --prefix tests/js --no-audit --no-fund --silent
fi

exec "$VENV/bin/python" -m pytest "$@"
