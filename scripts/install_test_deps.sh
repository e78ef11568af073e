#!/usr/bin/env bash
# Installs the Debian tools the deployment tests drive for real: nginx (gRPC load balancer),
# prometheus + promtool (scraping, rule checks) and docker-compose (compose file validation,
# no engine needed). Idempotent: does nothing when all of them are already on PATH.
# Then scripts/install_container_engine.sh: docker.io + dockerd + the local base image for the
# image tests (tests/deploy/test_deploy_containers.py), equally idempotent.
# Non-interactive; needs root (or sudo without a password). Exit status 0 when every tool is
# present afterwards, 1 otherwise (the tests then skip with this script's message).
set -uo pipefail

engine_status=0
bash "$(dirname "$0")/install_container_engine.sh" || engine_status=1

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v prometheus >/dev/null 2>&1 || need+=(prometheus)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -eq 0 ]; then
  exit $engine_status
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)

if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  echo "install_test_deps: need root to apt-get install ${need[*]}" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_test_deps: apt-get not found; install ${need[*]} by hand" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "[install_test_deps] apt-get install ${need[*]}" >&2
"${SUDO[@]}" apt-get update -qq >&2 || { echo "install_test_deps: apt-get update failed" >&2; exit 1; }
# --no-install-recommends keeps it small; policy-rc.d-less containers have no systemd, the
# packages' postinst may try to start daemons and fail harmlessly, so do not trust its status:
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >&2 || true

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(promtool)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
if [ ${#missing[@]} -ne 0 ]; then
  echo "install_test_deps: still missing after apt-get: ${missing[*]}" >&2
  exit 1
fi
exit $engine_status
