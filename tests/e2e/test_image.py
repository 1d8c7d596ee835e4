"""The locally built images load into containerd and run as their recipes say.

Builds the images (or takes them from the cache in build/image/), starts a containerd of
its own (root, state and socket under a temporary directory, in a private mount
namespace with a tmpfs over /run for the shims' sockets, CRI off), imports each archive
with ``ctr -n k8s.io images import`` and runs it with ``ctr run``. Each container gets a
cgroup under one top-level cgroup named for this test run, removed depth-first at the
end; the cgroups of the machine's supervisor (see /proc/self/cgroup) are never touched.
After stopping containerd by its pid, the host must be as it was: no mount, no process,
no cgroup, nothing under /run/containerd or /opt/containerd.

Skipped unless root with the node's Debian packages (scripts/install-node-packages.sh).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from secure_keys_dev import image

ROOT = Path(__file__).parents[2]
INSTALL = "sudo scripts/install-node-packages.sh"


def _prerequisites() -> list[str]:
    missing = image.missing_prerequisites()
    for tool in ("containerd", "ctr", "runc", "containerd-shim-runc-v2"):
        if shutil.which(tool) is None:
            missing.append(f"{tool}: {INSTALL}")
    return missing


pytestmark = pytest.mark.skipif(
    bool(_prerequisites()),
    reason="the image tests need root and the node packages; missing: "
    + "; ".join(_prerequisites()),
)


def _cgroup_mounts() -> list[Path]:
    """The mount points of every cgroup hierarchy (v1 controllers and the v2 one)."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in {"cgroup", "cgroup2"}:
            mounts.append(Path(fields[4]))
    return mounts


def _mount_table() -> list[tuple[str, str]]:
    table = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        table.append((fields[4], fields[fields.index("-") + 1]))
    return sorted(table)


def _processes_in(namespace: str) -> list[int]:
    """The pids whose mount namespace is ``namespace`` (a readlink of /proc/<pid>/ns/mnt)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == namespace:
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


class PrivateContainerd:
    """A containerd for this test alone; everything it does ends when it stops."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "containerd.sock"
        self.fifos = base / "fifo"
        # One top-level cgroup per run, beside (never under) the supervisor's cgroups.
        self.cgroup = f"/secure-keys-image-test-{os.getpid()}-{secrets.token_hex(4)}"
        self.process: subprocess.Popen[bytes] | None = None
        self.namespace = ""

    def config(self) -> str:
        disabled = [
            "io.containerd.grpc.v1.cri",  # ctr run needs no CRI
            "io.containerd.internal.v1.opt",  # it would create /opt/containerd on the host
            "io.containerd.snapshotter.v1.aufs",
            "io.containerd.snapshotter.v1.btrfs",
            "io.containerd.snapshotter.v1.devmapper",
            "io.containerd.snapshotter.v1.zfs",
            "io.containerd.tracing.processor.v1.otlp",
        ]
        return "\n".join(
            [
                "version = 2",
                f'root = "{self.base / "root"}"',
                f'state = "{self.base / "state"}"',
                "disabled_plugins = [" + ", ".join(f'"{p}"' for p in disabled) + "]",
                "[grpc]",
                f'  address = "{self.socket}"',
                "",
            ]
        )

    def start(self) -> None:
        self.fifos.mkdir(parents=True)
        config = self.base / "config.toml"
        config.write_text(self.config())
        # The shims' sockets live in /run/containerd/s whatever the state directory is:
        # a tmpfs over /run, in this mount namespace only, keeps them off the host.
        script = 'mount -t tmpfs -o mode=0755,size=16m tmpfs /run && exec containerd --config "$0"'
        log = (self.base / "containerd.log").open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own argv
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, config],  # noqa: S607
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 20
        while self.ctr("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((self.base / "containerd.log").read_text()[-3000:])
            time.sleep(0.05)
        self.namespace = os.readlink(f"/proc/{self.process.pid}/ns/mnt")
        assert self.namespace != os.readlink("/proc/self/ns/mnt")

    def ctr(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(  # noqa: S603 - our own argv
            ["ctr", f"--address={self.socket}", "--namespace=k8s.io", *map(str, args)],  # noqa: S607
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"ctr {args[:2]} failed: {result.stderr}")
        return result

    def run_args(self, reference: str, name: str) -> list[str]:
        cgroup = f"--cgroup={self.cgroup}/{name}"
        return ["run", "--rm", f"--fifo-dir={self.fifos}", cgroup, reference, name]

    def run(self, reference: str, name: str, *command: str) -> subprocess.CompletedProcess[str]:
        return self.ctr(*self.run_args(reference, name), *command, check=False)

    def stop(self) -> None:
        """Stops containerd by pid, then removes the cgroups this test made, depth first."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # A shim outlives containerd only while its container runs: end ours, by pid.
        for pid in _processes_in(self.namespace) if self.namespace else []:
            os.kill(pid, signal.SIGKILL)
        for mount in _cgroup_mounts():
            top = mount / self.cgroup.lstrip("/")
            if top.is_dir():
                for directory, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
                    Path(directory).rmdir()


@pytest.fixture(scope="module")
def images() -> image.LocalImages:
    return image.ensure_images()


@pytest.fixture(scope="module")
def containerd(
    images: image.LocalImages, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateContainerd]:
    daemon = PrivateContainerd(tmp_path_factory.mktemp("containerd"))
    daemon.start()
    try:
        for built in images.all():
            daemon.ctr("images", "import", built.archive)
        yield daemon
    finally:
        daemon.stop()


def test_the_images_import_under_their_names(
    containerd: PrivateContainerd, images: image.LocalImages
) -> None:
    listed = containerd.ctr("images", "ls", "--quiet").stdout.split()
    assert {built.reference for built in images.all()} <= set(listed)
    assert "docker.io/library/secure-keys:dev" in listed  # what `secure-keys:dev` names


CHECKS = """
id -u
echo "$PATH"
python -c 'import secure_keys, kopf; print("imports ok")'
python -c 'from secure_keys.core.kms import aws, gcp, azure, pkcs11; print("providers ok")'
secure-keys --help
secure-keys-controller --help
python -m pip --version 2>&1 || true
"""


def test_the_project_image_runs_as_its_recipe_says(containerd: PrivateContainerd) -> None:
    result = containerd.run(image.PROJECT_REFERENCE, "project", "sh", "-c", CHECKS)
    assert result.returncode == 0, result.stderr + result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == str(image.USER_ID)  # not root
    assert lines[1] == f"{image.VENV}/bin:{image.SYSTEM_PATH}"
    assert "imports ok" in lines
    # Every KMS provider the chart offers (kms.provider) runs from this one image.
    assert "providers ok" in lines, result.stderr
    assert "usage: secure-keys [-h]" in result.stdout
    assert "usage: secure-keys-controller" in result.stdout
    assert "No module named pip" in result.stdout  # nothing installs at run time


def test_the_busybox_image_has_a_shell(containerd: PrivateContainerd) -> None:
    result = containerd.run(image.BUSYBOX_REFERENCE, "busybox", "sh", "-c", "echo hello; id -u")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["hello", "0"]


def test_the_pause_image_sleeps_until_sigterm_then_exits_at_once(
    containerd: PrivateContainerd,
) -> None:
    ctr = ["ctr", f"--address={containerd.socket}", "--namespace=k8s.io"]
    run = subprocess.Popen(  # noqa: S603 - our own argv
        [*ctr, *containerd.run_args(image.PAUSE_REFERENCE, "pause")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while "RUNNING" not in containerd.ctr("tasks", "ls").stdout:
            assert run.poll() is None, run.communicate()[1]
            assert time.monotonic() < deadline, "the pause container did not start"
            time.sleep(0.05)
        time.sleep(1.0)
        assert run.poll() is None, "pause must sleep until told to stop"
        start = time.monotonic()
        containerd.ctr("tasks", "kill", "--signal=SIGTERM", "pause")
        _, errors = run.communicate(timeout=10)
        assert run.returncode == 0, errors  # ctr run exits with the task's status
        assert time.monotonic() - start < 2.0
    finally:
        if run.poll() is None:
            run.kill()
        run.communicate()


def test_a_second_build_takes_every_image_from_the_cache(images: image.LocalImages) -> None:
    stamps = {built.archive: built.archive.stat().st_mtime_ns for built in images.all()}
    start = time.monotonic()
    again = image.ensure_images()
    assert time.monotonic() - start < 5.0
    assert again == images
    assert {built.archive: built.archive.stat().st_mtime_ns for built in again.all()} == stamps


def test_stopping_containerd_leaves_the_host_as_found(
    images: image.LocalImages, tmp_path: Path
) -> None:
    mounts_before = _mount_table()
    host_paths = [Path("/run/containerd"), Path("/opt/containerd"), Path("/var/lib/containerd")]
    existed = {path: path.exists() for path in host_paths}
    own_cgroups = Path("/proc/self/cgroup").read_text()
    daemon = PrivateContainerd(tmp_path)
    daemon.start()
    try:
        daemon.ctr("images", "import", images.project.archive)
        result = daemon.run(image.PROJECT_REFERENCE, "leak-check", "python", "-c", "print(1)")
        assert result.returncode == 0, result.stderr
        made = [m / daemon.cgroup.lstrip("/") for m in _cgroup_mounts()]
        assert any(path.is_dir() for path in made), "ctr run made no cgroup: nothing checked"
        assert not any(daemon.cgroup.lstrip("/") in line for line in own_cgroups.splitlines())
    finally:
        daemon.stop()
    assert _processes_in(daemon.namespace) == []
    assert _mount_table() == mounts_before
    assert not [line for line in _mount_table() if str(tmp_path) in line[0]]
    assert not [path for path in made if path.exists()]
    assert {path: path.exists() for path in host_paths} == existed
    assert Path("/proc/self/cgroup").read_text() == own_cgroups
