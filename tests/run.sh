#!/usr/bin/env bash
# Install everything the tests need, then run lint, types and the tests.
#
#   bash tests/run.sh [PYTEST ARGS]         the whole suite (what CI runs)
#   bash tests/run.sh --fast [PYTEST ARGS]  lint, types and the tests marked
#                                           neither live nor slow (tests/README.md)
#
# The whole suite works on a fresh Debian 12 machine as root (or with sudo
# available); the fast lane needs no Debian package beyond python3 and, to
# make .venv, python3-venv (installed like the others when missing: Debian's
# python3 has no ensurepip), so no root once those are there.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=false
if [ "${1:-}" = "--fast" ]; then
  fast=true
  shift
fi

# Debian packages the live tests start for real (php-fpm pools, Prometheus,
# Alertmanager, process-exporter for the side-by-side test) or call
# (systemd-analyze, openssl, setpriv).
pkgs=()
if ! $fast; then
  command -v php-fpm8.2 >/dev/null || [ -x /usr/sbin/php-fpm8.2 ] || pkgs+=(php8.2-fpm)
  command -v prometheus >/dev/null || pkgs+=(prometheus)
  command -v prometheus-alertmanager >/dev/null || pkgs+=(prometheus-alertmanager)
  [ -x /usr/bin/prometheus-process-exporter ] || pkgs+=(prometheus-process-exporter)
  command -v systemd-analyze >/dev/null || pkgs+=(systemd)
  command -v openssl >/dev/null || pkgs+=(openssl)
  command -v setpriv >/dev/null || pkgs+=(util-linux)
fi
[ -x .venv/bin/python ] || python3 -c 'import venv, ensurepip' 2>/dev/null || pkgs+=(python3-venv)
if [ ${#pkgs[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${pkgs[@]}"
  # The package starts its service on :9256; the side-by-side test runs its own.
  if [[ " ${pkgs[*]} " == *" prometheus-process-exporter "* ]] && command -v systemctl >/dev/null; then
    $SUDO systemctl disable --now prometheus-process-exporter 2>/dev/null || true
  fi
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

.venv/bin/ruff check exporter tests alerts bench
.venv/bin/ruff format --check exporter tests alerts bench
.venv/bin/mypy --strict exporter

if $fast; then
  exec .venv/bin/python -m pytest -p tests.lane_guard -m "not live and not slow" "$@"
fi
exec .venv/bin/python -m pytest "$@"
