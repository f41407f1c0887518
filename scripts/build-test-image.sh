#!/usr/bin/env bash
# Build the offline base image the sandbox tests use (no registry is reachable here):
# a Debian bookworm root made by debootstrap from the machine's apt mirror, imported into Docker.
# It has what the execution agent needs (python3 with pyzmq and msgpack, bash) plus pip.
# Idempotent: does nothing when the image exists. Usage: build-test-image.sh [IMAGE]
set -euo pipefail

IMAGE="${1:-stigmer-test-base:bookworm}"
log() { echo "[build-test-image] $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists"
  exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq debootstrap >/dev/null
fi

# The machine's Debian mirror (deb822 sources first, then the classic list).
MIRROR="$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | awk '{print $2}' | grep -v security | head -n 1 || true)"
if [ -z "$MIRROR" ]; then
  MIRROR="$(grep -hoE '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
    | grep -v security | head -n 1 || true)"
fi
MIRROR="${MIRROR:-http://deb.debian.org/debian}"

ROOTFS="$(mktemp -d /tmp/stigmer-rootfs-XXXXXX)"
trap 'rm -rf "$ROOTFS"' EXIT
log "debootstrap bookworm from $MIRROR (about a minute)"
debootstrap --variant=minbase \
  --include=python3,python3-zmq,python3-cffi-backend,python3-msgpack,python3-pip,ca-certificates,procps \
  bookworm "$ROOTFS" "$MIRROR" >/tmp/debootstrap.log 2>&1 || {
  tail -n 20 /tmp/debootstrap.log >&2
  exit 1
}
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
log "importing as $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["bash"]' - "$IMAGE" >/dev/null
log "built $IMAGE ($(docker image inspect "$IMAGE" --format '{{.Size}}') bytes)"
