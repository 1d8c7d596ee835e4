#!/bin/sh
# Installs secure-keys into the image's root filesystem: the one step both image recipes
# share. The Dockerfile RUNs it in a debian:bookworm-slim stage; the local build
# (devtools/secure_keys_dev/image.py) runs it with chroot in a bookworm root filesystem
# made by mmdebstrap. POSIX sh: the image has dash, not bash.
#
# Usage: image-venv.sh VENV UID EXTRAS LOCK WHEEL_DIR [FIND_LINKS]
#   VENV        the virtual environment to create (its bin/ goes first on the image's PATH)
#   UID         the unprivileged user (and group) id the image runs as
#   EXTRAS      the wheel's extras, comma-separated (the lock was resolved for them)
#   LOCK        the pinned requirements: every dependency, nothing else
#   WHEEL_DIR   a directory holding exactly one secure_keys-*.whl
#   FIND_LINKS  install from these wheel files only, without an index (the local build)
#
# The lock is installed first without dependency resolution, then the wheel with its
# extras and no index: pip fails there if the lock misses anything the wheel needs.
# pip and setuptools are removed from the virtual environment afterwards; nothing in the
# image installs packages at run time.
set -eu

if [ "$#" -lt 5 ] || [ "$#" -gt 6 ]; then
  echo "usage: $0 VENV UID EXTRAS LOCK WHEEL_DIR [FIND_LINKS]" >&2
  exit 2
fi
venv=$1 uid=$2 extras=$3 lock=$4 wheel_dir=$5 find_links=${6:-}

set -- "$wheel_dir"/secure_keys-*.whl
if [ "$#" -ne 1 ] || [ ! -f "$1" ]; then
  echo "image-venv.sh: expected exactly one secure_keys-*.whl in $wheel_dir" >&2
  exit 2
fi
wheel=$1

if [ -n "$find_links" ]; then
  source_args="--no-index --find-links $find_links"
else
  source_args=""
fi

# A named user and group, so that tools in the image show a name rather than a number.
grep -q "^secure-keys:" /etc/group || echo "secure-keys:x:$uid:" >>/etc/group
grep -q "^secure-keys:" /etc/passwd ||
  echo "secure-keys:x:$uid:$uid:secure-keys:/nonexistent:/usr/sbin/nologin" >>/etc/passwd

python3 -m venv "$venv"
pip="$venv/bin/python -m pip --disable-pip-version-check --no-input --quiet"
# shellcheck disable=SC2086 # source_args is a list of words on purpose
$pip install --no-cache-dir --no-deps --only-binary=:all: $source_args --requirement "$lock"
$pip install --no-cache-dir --no-index "$wheel[$extras]"
$pip check
$pip uninstall --yes pip setuptools
