#!/usr/bin/env bash
# The container engine the image tests (tests/deploy/test_deploy_containers.py) build and run with:
#   1. Debian's docker.io (dockerd + docker CLI 20.10), debootstrap and docker-compose;
#   2. dockerd, started when none answers: no default bridge, no iptables (every test container
#      runs with host networking on 127.0.0.1), log in ${TEXTCLF_DOCKERD_LOG};
#   3. the local base image ${TEXTCLF_TEST_BASE_IMAGE}: no image registry is reachable here, so
#      the `python:3.11-slim-bookworm` base that deploy/Dockerfile defaults to is replaced by a
#      Debian bookworm root filesystem from Debian's archive (debootstrap, minbase + python3),
#      imported with `docker import`. It carries this host's CA bundle and pip's certificate
#      setting (PIP_CERT), so that pip inside a build reaches the package index exactly as pip
#      on this host does.
# Idempotent and fast when done (a few `command -v` and one `docker image inspect`). Needs root.
# Exit 0 when the engine answers and the base image exists; otherwise 1 with one line saying why.
set -uo pipefail

BASE_IMAGE=${TEXTCLF_TEST_BASE_IMAGE:-textclf-test/debian-python:bookworm}
DOCKERD_LOG=${TEXTCLF_DOCKERD_LOG:-/var/log/textclf-dockerd.log}
DEBIAN_MIRROR=${TEXTCLF_DEBIAN_MIRROR:-http://deb.debian.org/debian}
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

say() { echo "[install_container_engine] $*" >&2; }
fail() { echo "install_container_engine: $*" >&2; exit 1; }

if [ "$(id -u)" -eq 0 ]; then SUDO=(); elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n); else fail "needs root (or password-less sudo) to install and start dockerd"; fi

# Debian's client talks to Debian's daemon (another `docker` earlier on PATH may be newer).
docker_cli() { if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi; }

# 1. packages
need=()
[ -x /usr/sbin/dockerd ] || command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /usr/sbin/debootstrap ] || command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
if [ ${#need[@]} -ne 0 ]; then
  command -v apt-get >/dev/null 2>&1 || fail "apt-get not found; install ${need[*]} by hand"
  say "apt-get install ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq >&2 || fail "apt-get update failed"
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >&2 || true
fi
DOCKERD=$(command -v dockerd || echo /usr/sbin/dockerd)
DEBOOTSTRAP=$(command -v debootstrap || echo /usr/sbin/debootstrap)
[ -x "$DOCKERD" ] || fail "dockerd missing after apt-get install docker.io"
[ -x "$DEBOOTSTRAP" ] || fail "debootstrap missing after apt-get install debootstrap"
DOCKER=$(docker_cli)
[ -n "$DOCKER" ] || fail "docker CLI missing after apt-get install docker.io"

# 2. the daemon
if ! "${SUDO[@]}" "$DOCKER" info >/dev/null 2>&1; then
  say "starting dockerd (log: $DOCKERD_LOG)"
  # setsid: the daemon outlives this script and the test session, like a system service.
  "${SUDO[@]}" setsid "$DOCKERD" --bridge=none --iptables=false --ip-masq=false \
    >>"$DOCKERD_LOG" 2>&1 < /dev/null &
  for _ in $(seq 1 60); do
    "${SUDO[@]}" "$DOCKER" info >/dev/null 2>&1 && break
    sleep 0.5  # polling the daemon's socket; there is no readiness event to wait on
  done
  "${SUDO[@]}" "$DOCKER" info >/dev/null 2>&1 \
    || fail "dockerd did not start: $(tail -n 3 "$DOCKERD_LOG" 2>/dev/null | tr '\n' ' ')"
fi

# 3. the base image (built once; the engine keeps it)
if ! "${SUDO[@]}" "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d /var/tmp/textclf-rootfs.XXXXXX)
  trap '"${SUDO[@]}" rm -rf "$rootfs"' EXIT
  say "debootstrap bookworm -> $BASE_IMAGE (about a minute)"
  nice -n 5 "${SUDO[@]}" "$DEBOOTSTRAP" --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
    >/tmp/textclf-debootstrap.log 2>&1 \
    || fail "debootstrap failed: $(tail -n 3 /tmp/textclf-debootstrap.log | tr '\n' ' ')"
  # this host's trust store (it may hold a CA that the route to the package index needs)
  "${SUDO[@]}" cp "$HOST_CA_BUNDLE" "$rootfs$HOST_CA_BUNDLE"
  "${SUDO[@]}" rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  "${SUDO[@]}" tar -C "$rootfs" -c . | nice -n 5 "${SUDO[@]}" "$DOCKER" import \
    --change "ENV PIP_CERT=$HOST_CA_BUNDLE" \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' - "$BASE_IMAGE" >/dev/null \
    || fail "docker import of the bootstrapped root filesystem failed"
  say "built $BASE_IMAGE"
fi
exit 0
