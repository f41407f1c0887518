#!/usr/bin/env bash
# What the attack tests (tests/security/) need besides the Docker engine: Debian's Python with
# pyzmq and msgpack, which a second local user can run (the project's venv may live under a
# directory other users cannot enter). Idempotent; needs root for the install.
set -euo pipefail

log() { echo "[provision-test-deps] $*" >&2; }

if /usr/bin/python3 -c 'import zmq, msgpack' >/dev/null 2>&1; then
  log "Debian python3 with zmq and msgpack present"
  exit 0
fi
log "installing python3-zmq and python3-msgpack (Debian's packages)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3-zmq python3-msgpack >/dev/null
