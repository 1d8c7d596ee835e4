#!/usr/bin/env bash
# Installs the Debian packages that the local node (containerd, runc, the CNI plugins)
# and the local image build (mmdebstrap, umoci, busybox-static) need. Idempotent: only
# the packages that are not installed yet are installed, and nothing runs when none is
# missing. Progress goes to stderr; stdout stays empty.
#
# Usage: scripts/install-node-packages.sh [--check]
#   --check   install nothing; exit 1 and name what is missing if anything is.
# Exit codes: 0 all installed, 1 missing (--check), 2 cannot install here (not root,
# not Debian/apt), or apt-get's own exit code when it fails.
set -euo pipefail

# One line per package: why the project needs it.
packages=(
  containerd                  # the node's container runtime (CRI), run in a private mount namespace
  runc                        # the OCI runtime containerd starts containers with
  containernetworking-plugins # the bridge, host-local and loopback CNI plugins (the pod network)
  iptables                    # kube-proxy's rules, only inside the node's network namespace
  umoci                       # turns a root filesystem into an OCI image, without a registry
  busybox-static              # the small test image, and a static shell for it
  mmdebstrap                  # the Debian root filesystem of the project image
)

say() { echo "install-node-packages: $*" >&2; }

is_installed() {
  [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  say "this is not a Debian system with apt: install these packages (Debian bookworm names)"
  say "with your system's package manager: ${packages[*]}"
  say "the node-level tests are skipped without them"
  exit 2
fi

missing=()
for package in "${packages[@]}"; do
  is_installed "$package" || missing+=("$package")
done

if ((${#missing[@]} == 0)); then
  say "all present: ${packages[*]}"
  exit 0
fi

install_command="apt-get update && apt-get install --no-install-recommends ${missing[*]}"
if [[ "${1:-}" == --check ]]; then
  say "missing: ${missing[*]}"
  say "install them with: sudo scripts/install-node-packages.sh (or: sudo sh -c '$install_command')"
  exit 1
fi
if [[ "$(id -u)" != 0 ]]; then
  say "missing: ${missing[*]}, and installing them needs root"
  say "run: sudo scripts/install-node-packages.sh (or: sudo sh -c '$install_command')"
  exit 2
fi

start=$(date +%s)
say "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# A fresh machine may have no package lists yet; refresh them once before installing.
apt-get update -q -o DPkg::Lock::Timeout=300 >&2
apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${missing[@]}" >&2
for package in "${missing[@]}"; do
  is_installed "$package" || { say "apt-get did not install $package"; exit 1; }
done
say "installed ${missing[*]} in $(($(date +%s) - start)) s"
