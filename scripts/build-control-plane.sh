#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager and kubectl, the node's
# kubelet, kube-scheduler and kube-proxy, and the cluster DNS (CoreDNS, with only
# the plugins it needs: tools/coredns/main.go), from the pinned wrapper modules in
# tools/ into build/bin (ignored by git).
#
# A binary is rebuilt only when it is missing or when its pin changed: each
# one has a stamp file holding the checksum of the go.mod/go.sum it came from.
# Usage: scripts/build-control-plane.sh [--force]
# Prints nothing on stdout: progress goes to stderr, so that `make -s cluster-up`
# (which runs this first) prints only the kubeconfig path.
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

module_version() { # <tools-dir> <module>
  (cd "$root/tools/$1" && go list -m -f '{{.Version}}' "$2")
}

build() { # <binary> <tools-dir> <package> <ldflags>
  local name="$1" dir="$2" pkg="$3" ldflags="$4" start
  start=$(date +%s)
  echo "building $name from tools/$dir ($pkg)" >&2
  (cd "$root/tools/$dir" && go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv -f "$bin/$name.tmp" "$bin/$name"
  pin_of "$dir" >"$bin/.$name.pin"
  echo "built $name in $(( $(date +%s) - start )) s" >&2
}

k8s_ldflags() {
  local v major minor date
  v="$(module_version k8s k8s.io/kubernetes)"
  major="$(cut -d. -f1 <<<"${v#v}")"; minor="$(cut -d. -f2 <<<"$v")"
  date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  local f="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    f+=" -X $p.gitVersion=$v -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    f+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  echo "$f"
}

if needs_build etcd etcd; then
  build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
fi
for cmd in kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy; do
  if needs_build "$cmd" k8s; then
    build "$cmd" k8s "k8s.io/kubernetes/cmd/$cmd" "$(k8s_ldflags)"
  fi
done
if needs_build coredns coredns; then
  build coredns coredns . "-s -w"
fi
echo "control-plane and node binaries are in $bin" >&2
