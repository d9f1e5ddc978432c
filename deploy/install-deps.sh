#!/usr/bin/env bash
# Install every build, test and run dependency of archipel from Debian
# packages. Idempotent and quiet; run as root (or with sudo) on Debian 12.
# docs/architecture.md says why each package is here.
set -euo pipefail

packages=(
  # build
  build-essential cmake pkg-config clang libclang-rt-14-dev
  # libraries
  libraft-dev libuv1-dev libsqlite3-dev libmsgpack-dev libmicrohttpd-dev
  libjansson-dev libsodium-dev libcurl4-openssl-dev
  # tests
  libcmocka-dev python3 iptables iproute2 curl jq sqlite3 procps psmisc faketime
  # benchmarks: etcd is the peer the catalog is measured against
  etcd-server etcd-client
  # workloads: the oci driver
  runc
)

SUDO=
if [ "$(id -u)" != 0 ]; then
  SUDO=sudo
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
