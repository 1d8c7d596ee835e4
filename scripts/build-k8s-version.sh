#!/usr/bin/env bash
# Builds another Kubernetes version's control plane and node (kube-apiserver,
# kube-controller-manager, kubectl, kube-scheduler, kubelet, kube-proxy) into a
# directory of its own, to run the e2e suite against a version other than the pin
# (the oldest one the project claims, for example):
#
#   bin=$(scripts/build-k8s-version.sh v1.30.14)
#   SECUREKEYS_BIN_DIR=$bin .venv/bin/pytest tests/e2e      # or some modules of it
#
# It writes a private copy of tools/k8s under build/k8s-<version>/ (ignored by git):
# a go.mod that requires k8s.io/kubernetes at that version and maps each of its
# staging modules to the matching published v0.x.y, as tools/k8s does for the pin,
# then runs scripts/build-control-plane.sh on it. etcd, CoreDNS, helm and the KMS
# test servers are not version-bound: they are linked from build/bin (build them
# first with `make control-plane helm kms-servers`). Prints the binaries' directory on
# stdout; progress goes to stderr. From an empty build cache this takes about 35
# minutes on 2 busy cores (kube-apiserver alone about 20).
set -euo pipefail

version="${1:?usage: scripts/build-k8s-version.sh vX.Y.Z}"
[[ "$version" =~ ^v1\.[0-9]+\.[0-9]+$ ]] || { echo "not a version like v1.30.14: $version" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
main_bin="$root/build/bin"
work="$root/build/k8s-$version"
private="$work/root"
bin="$work/bin"
mkdir -p "$private/scripts" "$private/tools/k8s" "$bin"
cp "$root/scripts/build-control-plane.sh" "$private/scripts/"
for dir in etcd coredns; do ln -sfn "$root/tools/$dir" "$private/tools/$dir"; done

pin_module() { # writes go.mod, tools.go and go.sum of the private tools/k8s
  local dir="$private/tools/k8s" staging_version="v0.${version#v1.}" gomod
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$version" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "// A private copy of tools/k8s pinned to Kubernetes $version (scripts/build-k8s-version.sh)."
    echo "module securekeys.io/tools/k8s"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$gomod")"
    echo
    echo "require k8s.io/kubernetes $version"
    echo
    awk -v v="$staging_version" \
      '$2 == "=>" && $3 ~ /^\.\/staging\// {print "replace " $1 " => " $1 " " v}' "$gomod"
  } >"$dir/go.mod"
  cat >"$dir/tools.go" <<'EOF'
//go:build tools

// Package tools names the commands this module builds, so `go mod tidy` keeps them.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
EOF
  echo "resolving k8s.io/kubernetes $version" >&2
  (cd "$dir" && go mod tidy >&2)
}

# Resolved once: a second run builds from the same go.mod and go.sum (nothing, if built).
[[ -f "$private/tools/k8s/go.sum" ]] || pin_module

# Not version-bound: the main build's, with their pin stamps (no rebuild here).
for name in etcd coredns; do
  [[ -x "$main_bin/$name" ]] || { echo "$main_bin/$name missing: run make control-plane" >&2; exit 1; }
  cp -p "$main_bin/$name" "$main_bin/.$name.pin" "$bin/"
done
for name in helm helm-unittest local-kms gcpkms; do
  [[ -e "$main_bin/$name" ]] && ln -sfn "$main_bin/$name" "$bin/$name"
done

SECUREKEYS_BIN_DIR="$bin" "$private/scripts/build-control-plane.sh"
echo "$bin"
