#!/usr/bin/env bash
# Builds or installs the KMS servers the provider tests run against (tests/integration/kms,
# tests/e2e/test_kms_providers.py), into build/bin (ignored by git):
#   local-kms   the AWS KMS API, from the Go module pinned in tools/local-kms
#   (Google Cloud KMS emulator, the Azure Key Vault test double and SoftHSM2: their own
#   sections below)
#
# A Go binary is rebuilt only when it is missing or its pin changed: each has a stamp
# file holding the checksum of the go.mod/go.sum it came from (as build-control-plane.sh).
# Usage: scripts/build-kms-servers.sh [--force]
# Prints nothing on stdout: all progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SECUREKEYS_BIN_DIR:-$root/build/bin}"
mkdir -p "$bin"
force="${1:-}"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false

pin_of() { cat "$root/tools/$1/go.mod" "$root/tools/$1/go.sum" | cksum | cut -d' ' -f1; }

needs_build() { # <binary> <tools-dir>
  [[ "$force" == --force ]] && return 0
  [[ -x "$bin/$1" && -f "$bin/.$1.pin" ]] || return 0
  [[ "$(cat "$bin/.$1.pin")" != "$(pin_of "$2")" ]]
}

build() { # <binary> <tools-dir> <package>
  local name="$1" dir="$2" pkg="$3" start
  start=$(date +%s)
  echo "building $name from tools/$dir ($pkg)" >&2
  (cd "$root/tools/$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/$name.tmp" "$pkg")
  mv -f "$bin/$name.tmp" "$bin/$name"
  pin_of "$dir" >"$bin/.$name.pin"
  echo "built $name in $(( $(date +%s) - start )) s" >&2
}

# ---------------------------------------------------------------------------------------
# local-kms (AWS KMS API) -- owner: the aws provider (tests/integration/kms/servers/aws.py)
# ---------------------------------------------------------------------------------------
if needs_build local-kms local-kms; then
  build local-kms local-kms github.com/nsmithuk/local-kms
fi

# ---------------------------------------------------------------------------------------
# Google Cloud KMS emulator -- owner: the gcp provider (tests/integration/kms/servers/gcp.py)
# ---------------------------------------------------------------------------------------
# gcpkms: our own Cloud KMS test double, source in tools/gcpkms (not a pinned upstream
# module), so its stamp also covers its Go sources: editing the emulator rebuilds it.
gcpkms_pin() {
  local f
  for f in "$root/tools/gcpkms/go.mod" "$root/tools/gcpkms/go.sum" "$root"/tools/gcpkms/*.go; do
    [[ "$f" == *_test.go ]] || cat "$f"
  done | cksum | cut -d' ' -f1
}
if [[ "$force" == --force || ! -x "$bin/gcpkms" || ! -f "$bin/.gcpkms.pin" ]] \
  || [[ "$(cat "$bin/.gcpkms.pin")" != "$(gcpkms_pin)" ]]; then
  build gcpkms gcpkms .
  gcpkms_pin >"$bin/.gcpkms.pin"
fi

# ---------------------------------------------------------------------------------------
# Azure Key Vault test double -- owner: the azure provider (tests/integration/kms/servers/azure.py)
# ---------------------------------------------------------------------------------------
# azurekv: our own Key Vault test double, in Python (tools/azurekv/azurekv.py), run from
# source by the interpreter of the tests. Nothing to build: check that the interpreter
# has what it imports (aiohttp and cryptography, from the project's own dependencies).
python="${SECUREKEYS_PYTHON:-$root/.venv/bin/python}"
if [[ -x "$python" ]] && "$python" -c 'import aiohttp, cryptography' 2>/dev/null; then
  echo "azurekv: runs from tools/azurekv with $python" >&2
else
  echo "azurekv: $python cannot import aiohttp and cryptography; run make test (it installs .venv)" >&2
fi

# ---------------------------------------------------------------------------------------
# SoftHSM2 (PKCS#11) -- owner: the pkcs11 provider (tests/integration/kms/servers/pkcs11.py)
# ---------------------------------------------------------------------------------------
# A library, not a Go binary: Debian's softhsm2 package (libsofthsm2.so and softhsm2-util),
# installed with apt when missing. Nothing is built or copied into build/bin.
softhsm_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' softhsm2 2>/dev/null || true)" == installed ]]
}
if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "softhsm2: not a Debian system with apt; install SoftHSM2 (libsofthsm2.so) yourself" >&2
  echo "softhsm2: the pkcs11 provider tests are skipped without it" >&2
  exit 2
elif softhsm_installed; then
  echo "softhsm2: installed" >&2
elif [[ "$(id -u)" != 0 ]]; then
  echo "softhsm2: missing, and installing it needs root" >&2
  echo "softhsm2: run: sudo scripts/build-kms-servers.sh" >&2
  echo "softhsm2: (or: sudo sh -c 'apt-get update && apt-get install --no-install-recommends softhsm2')" >&2
  exit 2
else
  echo "softhsm2: installing with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends softhsm2 >&2; then
    apt-get update >&2
    apt-get install -y --no-install-recommends softhsm2 >&2
  fi
  echo "softhsm2: installed" >&2
fi

echo "KMS test servers are in $bin" >&2
