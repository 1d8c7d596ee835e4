"""scripts/install-node-packages.sh installs only what is missing, and says what it cannot.

The script runs against stand-ins for dpkg-query, apt-get and id on PATH, so every branch
(all present, some missing as root, not root, ``--check``, not Debian, apt-get lying) is
exercised without touching the machine's packages.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "scripts" / "install-node-packages.sh"
PACKAGES = [
    line.split("#")[0].strip()
    for line in SCRIPT.read_text().split("packages=(\n", 1)[1].split("\n)", 1)[0].splitlines()
    if line.split("#")[0].strip()
]
"""The script's own list, in its order (spelled once, there)."""

DPKG_QUERY = """#!/bin/sh
package="$3"
if grep -qx "$package" "$STATE/installed" 2>/dev/null; then printf installed; exit 0; fi
printf not-installed; exit 1
"""
# Records each call; `install` marks its packages installed unless $STATE/broken exists.
APT_GET = """#!/bin/sh
echo "$*" >>"$STATE/apt.log"
[ "$1" = update ] && exit 0
[ -e "$STATE/broken" ] && exit 0
seen=
for word in "$@"; do
  case "$word" in
    install) seen=1 ;;
    -*) ;;
    *) [ -n "$seen" ] && echo "$word" >>"$STATE/installed" ;;
  esac
done
exit 0
"""
ID = """#!/bin/sh
echo "$FAKE_UID"
"""


def _stubs(tmp_path: Path, *, debian: bool = True) -> Path:
    stubs = tmp_path / "bin"
    stubs.mkdir()
    tools = {"id": ID}
    if debian:
        tools |= {"dpkg-query": DPKG_QUERY, "apt-get": APT_GET}
    for name, body in tools.items():
        (stubs / name).write_text(body)
        (stubs / name).chmod(0o755)
    return stubs


def _run(
    tmp_path: Path, *args: str, uid: int = 0, installed: tuple[str, ...] = (), debian: bool = True
) -> subprocess.CompletedProcess[str]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    (state / "installed").write_text("".join(f"{p}\n" for p in installed))
    stubs = _stubs(tmp_path, debian=debian)
    path = f"{stubs}:/usr/bin:/bin" if debian else str(stubs)
    return subprocess.run(  # noqa: S603 - our script, our stubs
        ["/bin/bash", SCRIPT, *args],
        env={"PATH": path, "STATE": str(state), "FAKE_UID": str(uid)},
        capture_output=True,
        text=True,
        check=False,
    )


def _apt_calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "state" / "apt.log"
    return log.read_text().splitlines() if log.exists() else []


def test_nothing_runs_when_everything_is_installed(tmp_path: Path) -> None:
    result = _run(tmp_path, installed=tuple(PACKAGES))
    assert result.returncode == 0, result.stderr
    assert _apt_calls(tmp_path) == []
    assert result.stdout == ""


def test_only_the_missing_packages_are_installed(tmp_path: Path) -> None:
    result = _run(tmp_path, installed=("containerd", "runc", "umoci"))
    assert result.returncode == 0, result.stderr
    update, install = _apt_calls(tmp_path)
    assert update.startswith("update")
    words = install.split()
    assert words[0] == "install"
    assert "--no-install-recommends" in words
    assert [w for w in words[1:] if not w.startswith("-") and "=" not in w] == [
        "containernetworking-plugins",
        "iptables",
        "busybox-static",
        "mmdebstrap",
    ]
    assert result.stdout == ""  # progress goes to stderr only


def test_without_root_it_names_what_is_missing_and_the_command(tmp_path: Path) -> None:
    result = _run(tmp_path, uid=1000, installed=("containerd",))
    assert result.returncode == 2
    assert _apt_calls(tmp_path) == []
    assert "mmdebstrap" in result.stderr
    assert "containerd," not in result.stderr  # installed: not listed as missing
    assert "sudo scripts/install-node-packages.sh" in result.stderr


def test_check_installs_nothing_and_fails_when_something_is_missing(tmp_path: Path) -> None:
    result = _run(tmp_path, "--check", installed=tuple(PACKAGES[:-1]))
    assert result.returncode == 1
    assert _apt_calls(tmp_path) == []
    assert "missing: mmdebstrap" in result.stderr


@pytest.mark.parametrize("uid", [0, 1000])
def test_off_debian_it_lists_every_package(tmp_path: Path, uid: int) -> None:
    result = _run(tmp_path, uid=uid, debian=False)
    assert result.returncode == 2
    assert "not a Debian system" in result.stderr
    for package in PACKAGES:
        assert package in result.stderr


def test_a_package_apt_get_did_not_install_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "broken").touch()
    result = _run(tmp_path, installed=tuple(PACKAGES[1:]))
    assert result.returncode == 1
    assert "did not install containerd" in result.stderr
