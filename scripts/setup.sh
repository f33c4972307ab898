#!/usr/bin/env bash
# Installs what the demo and the tests need on a fresh Debian machine, idempotently:
# Debian packages (the real programs we test and measure against) and the npm packages.
set -euo pipefail
cd "$(dirname "$0")/.."

# Node.js is the one prerequisite: Debian bookworm's own nodejs is 18, and the build needs 20's
# headers (include/node/node_api.h next to the node binary). Say so instead of failing later.
node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$node_major" -lt 20 ]; then
  echo "setup: Node.js 20 or newer is required (found: $(node --version 2>/dev/null || echo none)); install it from nodejs.org or NodeSource" >&2
  exit 1
fi

PKGS=(iproute2 iputils-ping procps psmisc make g++ python3 curl
      iperf3 nginx-light wrk redis-server redis-tools sockperf
      rdma-core ibverbs-utils rdmacm-utils perftest libibverbs-dev librdmacm-dev binutils libssl-dev
      containernetworking-plugins nftables util-linux clang llvm libbpf-dev)
missing=()
for p in "${PKGS[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "setup: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "setup: need root to install packages (and to create network namespaces)" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packaged services must not run on the machine itself; tests start their own.
  for svc in nginx redis-server; do
    (command -v systemctl >/dev/null && systemctl disable --now "$svc" >/dev/null 2>&1) || true
    service "$svc" stop >/dev/null 2>&1 || true
  done
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error
fi
