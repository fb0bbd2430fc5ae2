#!/bin/sh
# What the test suite needs beyond the virtual environment, run by `make test` first:
# redis-server and redis-cli (the redis tests start redis servers of their own), Chromium (the
# dashboard's browser test) and wrk (the HTTP benchmark's smoke run). What is missing is
# installed from Debian when this runs as root on a machine with apt-get; otherwise one line
# says what to install, and it fails.
set -eu

missing=""
command -v redis-server >/dev/null 2>&1 || missing="redis-server"
command -v redis-cli >/dev/null 2>&1 || missing="$missing redis-tools"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
# Debian's python3 makes virtual environments only with python3-venv (ensurepip).
[ -x .venv/bin/python ] || python3 -c "import ensurepip" 2>/dev/null || missing="$missing python3-venv"
missing="${missing# }"
[ -n "$missing" ] || exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "The tests need $missing (Debian: apt-get install $missing), or run the rest alone: .venv/bin/python -m pytest -m 'not redis and not browser and not wrk'" >&2
    exit 1
fi
echo "Installing $missing from Debian for the tests"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086 # one word a package
apt-get install -y -qq $missing >/dev/null
