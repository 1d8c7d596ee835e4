#!/usr/bin/env bash
# Builds helm (helm.sh/helm/v4) and helm-unittest from the pinned wrapper modules in
# tools/helm and tools/helm-unittest into build/bin (ignored by git), as
# scripts/build-control-plane.sh builds the control plane: a binary is rebuilt only when
# it is missing or its pin (go.mod/go.sum checksum) changed.
# helm-unittest is built from its module source rather than `go install`, which refuses
# a module that carries a replace directive (tools/helm-unittest/go.mod repeats it).
# Usage: scripts/build-helm.sh [--force]. Progress goes to stderr.
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

if needs_build helm helm; then
  v="$(module_version helm helm.sh/helm/v4)"
  build helm helm helm.sh/helm/v4/cmd/helm \
    "-s -w -X helm.sh/helm/v4/internal/version.version=$v -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
fi
if needs_build helm-unittest helm-unittest; then
  build helm-unittest helm-unittest github.com/helm-unittest/helm-unittest/cmd/helm-unittest "-s -w"
fi
echo "helm and helm-unittest are in $bin" >&2
