#!/usr/bin/env bash
# Make sure a Docker engine runs here: install Debian's engine if missing, start dockerd if it
# is not running, wait until `docker info` answers. Idempotent; needs root for the install.
set -euo pipefail

log() { echo "[provision-docker] $*" >&2; }
PID_FILE=/tmp/stigmer-dockerd.pid

if docker info >/dev/null 2>&1; then
  log "Docker engine already running"
  exit 0
fi

cannot() {
  log "no Docker engine answers here and this script cannot start one: $1"
  log "start Docker yourself (Docker Desktop on macOS, or your distribution's engine), then run"
  log "this again; local mode (the default) needs no Docker at all"
  exit 1
}

if ! command -v dockerd >/dev/null 2>&1; then
  if [ "$(uname -s)" != Linux ]; then
    cannot "dockerd is not installed, and installing it is done only on Debian-like Linux"
  fi
  command -v apt-get >/dev/null 2>&1 || cannot "dockerd is not installed and there is no apt-get"
  [ "$(id -u)" = 0 ] || cannot "dockerd is not installed, and installing it needs root"
  log "installing docker.io (Debian's engine)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq docker.io >/dev/null
fi

start_dockerd() {
  # A dockerd that was killed leaves its pid file, and a new one then refuses to start.
  rm -f /var/run/docker.pid
  log "starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  started_pid=$!
  # Who started this engine: scripts/fault_engine_restart.py stops only an engine of ours.
  echo "$started_pid" >"$PID_FILE"
}

started_pid=""

[ "$(id -u)" = 0 ] || cannot "starting dockerd needs root"

for attempt in 1 2 3; do
  # A dockerd still shutting down (or its containerd) can make a new one fail: wait, retry.
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    start_dockerd
  fi
  for _ in $(seq 1 40); do
    if docker info >/dev/null 2>&1; then
      log "Docker engine ready: $(docker version --format '{{.Server.Version}}')"
      exit 0
    fi
    sleep 0.5
  done
  log "dockerd not ready (attempt $attempt)"
  # Only the dockerd this script started is ended (by its pid), never someone else's.
  if [ -n "$started_pid" ]; then
    kill "$started_pid" 2>/dev/null || true
    started_pid=""
  fi
  sleep 2
done
log "dockerd did not become ready; last lines of /tmp/dockerd.log:"
tail -n 20 /tmp/dockerd.log >&2 || true
exit 1
