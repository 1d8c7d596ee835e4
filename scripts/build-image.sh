#!/usr/bin/env bash
# Builds the local node's images into build/image/ without Docker or a registry: the
# project image secure-keys:dev (the same contents as the Dockerfile), the pause image
# and the busybox test image. Each is rebuilt only when its inputs changed (see
# devtools/secure_keys_dev/image.py). Installs the Debian packages it needs first (as
# root; without root it says what is missing and how to install it).
#
# Usage: scripts/build-image.sh
# Prints one line per image on stdout, "<containerd reference> <OCI archive>", for
# `ctr -n k8s.io images import <archive>`; progress goes to stderr.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/install-node-packages.sh"
python="$root/.venv/bin/python"
[[ -x "$python" ]] || python=python3
export PYTHONPATH="$root/devtools${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m secure_keys_dev.image build
