"""The container images of the local node, built without Docker or a registry.

Owns the local recipe of the project image ``secure-keys:dev`` (kept identical to the
``Dockerfile`` that kind users build: ``tests/unit/test_image_recipe.py`` compares them),
the small pause and busybox images the node and the pod tests use, the image lock file
(``requirements/image.lock``) and how it is regenerated, and the build cache under
``build/image/`` where each image is an OCI archive named by a digest of its inputs, so
it is rebuilt only when an input changes. ``ctr -n k8s.io images import`` loads an archive
under the name in its ``io.containerd.image.name`` annotation.

The project image is two layers. The base is Debian's essential set plus Python, made by
mmdebstrap and cached on its own (it changes only with the Debian recipe). On top,
``scripts/image-venv.sh`` (the same script the Dockerfile runs) creates the virtual
environment from the lock file and the project's wheel, in a chroot of the unpacked base;
``umoci repack`` turns what it changed into the second layer.

Pure parts (recipes, digests, the lock file's text, the archive's index) are plain
functions over frozen values; the build functions at the bottom do the I/O. Needs root
and the Debian packages ``scripts/install-node-packages.sh`` installs.

    PYTHONPATH=devtools python -m secure_keys_dev.image build   # or: make image-local
    PYTHONPATH=devtools python -m secure_keys_dev.image lock    # regenerate the lock
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = ROOT / "build" / "image"
# Bump when the build steps change in a way the recipes below do not show.
BUILD_FORMAT = 1

# --- The project image: the values the Dockerfile must repeat. ---------------------------
DEBIAN_SUITE = "bookworm"
DOCKER_BASE = f"debian:{DEBIAN_SUITE}-slim"
# Debian's python3 in bookworm is 3.11; the lock is resolved for it.
PYTHON_VERSION = "3.11"
DEBIAN_PACKAGES = ("python3", "python3-venv", "libstdc++6")  # grpcio (gcp) links libstdc++
VENV = "/opt/secure-keys"
USER_ID = 65532
EXTRAS = ("server", "aws", "gcp", "azure", "pkcs11")
LOCK_FILE = "requirements/image.lock"
INSTALL_SCRIPT = "scripts/image-venv.sh"
PROJECT_REFERENCE = "docker.io/library/secure-keys:dev"  # `secure-keys:dev` in a pod spec
# The files the wheel is built from (what the Dockerfile copies into its wheel stage).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "operator", "sidecar")

# --- The small images. --------------------------------------------------------------------
PAUSE_REFERENCE = "localhost/pause:secure-keys"
BUSYBOX_REFERENCE = "localhost/busybox:secure-keys"
PAUSE_SOURCE = "tools/pause"
BUSYBOX_BINARY = Path("/bin/busybox")  # from the busybox-static package

# As in debian:bookworm-slim: no manuals, documentation (but copyrights) or translations.
DPKG_PATH_FILTERS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/groff/*",
    "path-exclude=/usr/share/lintian/*",
)
# Debian's essential set, merged /usr without the usrmerge package (and the Perl it pulls
# in), no host resolv.conf or hostname left in the image: the runtime provides both.
MMDEBSTRAP_ARGS = (
    "--mode=root",
    "--format=tar",
    "--variant=essential",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    "--include=" + ",".join(DEBIAN_PACKAGES),
    *(f"--dpkgopt={rule}" for rule in DPKG_PATH_FILTERS),
    '--customize-hook=rm -f "$1/etc/hostname" && : >"$1/etc/resolv.conf"',
)
# A mount namespace of its own: whatever a step mounts (mmdebstrap's chroot, /proc for
# the install) goes away with it, even if the build is killed.
PRIVATE_NAMESPACES = ("unshare", "--mount", "--propagation", "private")
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_IGNORE = ("__pycache__", "*.pyc", "*.egg-info", ".*")


class ImageBuildError(RuntimeError):
    """A prerequisite is missing or a build step failed; the message says what to do."""


@dataclass(frozen=True)
class OciConfig:
    """The parts of an OCI image configuration the recipes set."""

    user: str
    workdir: str
    env: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()

    def umoci_args(self) -> list[str]:
        args = ["--clear=config.env", "--clear=config.cmd", "--clear=config.entrypoint"]
        args += [f"--config.user={self.user}", f"--config.workingdir={self.workdir}"]
        args += [f"--config.env={entry}" for entry in self.env]
        args += [f"--config.cmd={word}" for word in self.cmd]
        args += [f"--config.entrypoint={word}" for word in self.entrypoint]
        return args


PROJECT_CONFIG = OciConfig(
    user=f"{USER_ID}:{USER_ID}",
    workdir="/",
    env=(
        f"PATH={VENV}/bin:{SYSTEM_PATH}",
        f"VIRTUAL_ENV={VENV}",
        "PYTHONUNBUFFERED=1",
    ),
    cmd=("secure-keys", "--help"),
)
PAUSE_CONFIG = OciConfig(user="65535:65535", workdir="/", env=(), entrypoint=("/pause",))
BUSYBOX_CONFIG = OciConfig(user="0:0", workdir="/", env=("PATH=/bin",), cmd=("sh",))


@dataclass(frozen=True)
class BuiltImage:
    """An OCI archive in the cache and the name containerd gives it on import."""

    reference: str
    archive: Path
    inputs: str  # the digest of everything it was built from


@dataclass(frozen=True)
class LocalImages:
    project: BuiltImage
    pause: BuiltImage
    busybox: BuiltImage

    def all(self) -> tuple[BuiltImage, ...]:
        return (self.project, self.pause, self.busybox)


# --- Pure: digests, recipes, the lock file, the archive index. ---------------------------


def digest(parts: Mapping[str, object]) -> str:
    """A stable sha256 of JSON-serialisable inputs."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _ignored(name: str) -> bool:
    return any(Path(name).match(pattern) for pattern in SOURCE_IGNORE)


def tree_digest(root: Path, entries: Sequence[str]) -> str:
    """A sha256 over the paths, executable bits and contents of files under ``entries``.

    Caches, bytecode, egg-info and dotfiles are skipped: they do not go into the wheel.
    """
    hasher = hashlib.sha256()
    for entry in entries:
        top = root / entry
        files = [top] if top.is_file() else sorted(_walk(top))
        for path in files:
            relative = path.relative_to(root).as_posix()
            hasher.update(f"{relative}\0{os.access(path, os.X_OK):d}\0".encode())
            hasher.update(hashlib.sha256(path.read_bytes()).digest())
    return hasher.hexdigest()


def _walk(top: Path) -> Iterator[Path]:
    for directory, subdirs, names in os.walk(top):
        subdirs[:] = [d for d in subdirs if not _ignored(d)]
        for name in names:
            if not _ignored(name):
                yield Path(directory) / name


def base_inputs() -> dict[str, object]:
    return {"format": BUILD_FORMAT, "suite": DEBIAN_SUITE, "mmdebstrap": MMDEBSTRAP_ARGS}


def project_inputs(root: Path) -> dict[str, object]:
    return {
        "format": BUILD_FORMAT,
        "base": digest(base_inputs()),
        "lock": hashlib.sha256((root / LOCK_FILE).read_bytes()).hexdigest(),
        "script": hashlib.sha256((root / INSTALL_SCRIPT).read_bytes()).hexdigest(),
        "source": tree_digest(root, WHEEL_SOURCES),
        "install": [VENV, USER_ID, EXTRAS],
        "config": asdict(PROJECT_CONFIG),
        "reference": PROJECT_REFERENCE,
    }


def mmdebstrap_command(output: Path) -> list[str]:
    """The base root filesystem's mmdebstrap command line (a tarball at ``output``)."""
    return ["mmdebstrap", "--quiet", *MMDEBSTRAP_ARGS, DEBIAN_SUITE, str(output)]


def install_command(stage: str, *, find_links: str | None) -> list[str]:
    """The install script's command line, files staged in ``stage`` inside the root."""
    command = ["sh", f"{stage}/{Path(INSTALL_SCRIPT).name}", VENV, str(USER_ID)]
    command += [",".join(EXTRAS), f"{stage}/{Path(LOCK_FILE).name}", f"{stage}/dist"]
    return command + ([find_links] if find_links else [])


def pip_target_args(arch: str = "x86_64") -> list[str]:
    """pip options that select wheels for the image (CPython 3.11, glibc 2.36), not the host."""
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 4, -1)]
    platforms += [f"manylinux{legacy}_{arch}" for legacy in ("2014", "2010", "1")]
    return [
        "--only-binary=:all:",
        f"--python-version={PYTHON_VERSION}",
        "--implementation=cp",
        *(f"--abi={abi}" for abi in (f"cp{PYTHON_VERSION.replace('.', '')}", "abi3", "none")),
        *(f"--platform={platform}" for platform in platforms),
    ]


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(pyproject: Mapping[str, object]) -> list[str]:
    """The base requirements and those of ``EXTRAS``, as pyproject.toml writes them."""
    project = pyproject["project"]
    if not isinstance(project, dict):
        raise ImageBuildError("pyproject.toml has no [project] table")
    requirements = list(project["dependencies"])
    for extra in EXTRAS:
        requirements += project["optional-dependencies"][extra]
    return [str(r) for r in requirements]


def requirements_digest(requirements: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(requirements)).encode()).hexdigest()


def lock_text(requirements: Sequence[str], pins: Mapping[str, str]) -> str:
    """The lock file: a header saying how it was made, then one ``name==version`` a line."""
    header = [
        "# The project image's pinned dependencies: secure-keys' own requirements and those",
        f"# of its {'/'.join(EXTRAS)} extra, resolved for CPython {PYTHON_VERSION} on Debian"
        f" {DEBIAN_SUITE}.",
        "# Both image recipes (the Dockerfile and devtools/secure_keys_dev/image.py) install",
        "# exactly these, then the wheel with no index, so nothing else can come in.",
        "# After changing the dependencies in pyproject.toml, regenerate it: make image-lock",
        "# (PYTHONPATH=devtools .venv/bin/python -m secure_keys_dev.image lock).",
        f"# extras: {','.join(EXTRAS)}",
        f"# requirements-digest: {requirements_digest(requirements)}",
    ]
    lines = [f"{name}=={pins[name]}" for name in sorted(pins, key=canonical_name)]
    return "\n".join(header + lines) + "\n"


def parse_lock(text: str) -> tuple[dict[str, str], dict[str, str]]:
    """The lock's header fields and its pins (canonical name to version)."""
    fields: dict[str, str] = {}
    pins: dict[str, str] = {}
    for line in text.splitlines():
        if match := re.fullmatch(r"# ([a-z-]+): (\S+)", line):
            fields[match[1]] = match[2]
        elif line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            if not sep or not version or canonical_name(name) in pins:
                raise ValueError(f"not one exact pin: {line!r}")
            pins[canonical_name(name)] = version
    return fields, pins


def archive_index(layout_index: Mapping[str, object], reference: str) -> dict[str, object]:
    """The layout's index.json with the single manifest named for containerd's import."""
    manifests = layout_index["manifests"]
    if not isinstance(manifests, list) or len(manifests) != 1:
        raise ImageBuildError(f"expected one image in the layout, found {manifests!r}")
    manifest = dict(manifests[0])
    manifest["annotations"] = {
        "io.containerd.image.name": reference,
        "org.opencontainers.image.ref.name": reference.rpartition(":")[2],
    }
    return {**layout_index, "manifests": [manifest]}


def busybox_layer(busybox: bytes, applets: Sequence[str]) -> bytes:
    """A one-layer root filesystem: static busybox, a link per applet, /tmp and users."""
    files: dict[str, bytes] = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, mode in (("bin", 0o755), ("etc", 0o755), ("root", 0o700), ("tmp", 0o1777)):
            tar.addfile(_tar_entry(directory, tarfile.DIRTYPE, mode))
        tar.addfile(
            _tar_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), io.BytesIO(busybox)
        )
        for applet in sorted(set(applets) - {"busybox"}):
            link = _tar_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777)
            link.linkname = "busybox"
            tar.addfile(link)
        for name, content in files.items():
            tar.addfile(_tar_entry(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def single_file_layer(name: str, content: bytes) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_tar_entry(name, tarfile.REGTYPE, 0o755, len(content)), io.BytesIO(content))
    return buffer.getvalue()


def _tar_entry(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.uid, info.gid, info.mtime = kind, mode, size, 0, 0, 0
    return info


# --- I/O: the build steps. ----------------------------------------------------------------


def _say(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _step(name: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    _say(f"{name}: {time.monotonic() - start:.1f} s")


def _run(command: Sequence[str | Path], *, quiet: bool = False, **kwargs: object) -> None:
    """Runs a build step; its output goes to stderr (when ``quiet``, only if it fails)."""
    argv = [str(word) for word in command]
    output = subprocess.PIPE if quiet else sys.stderr
    result = subprocess.run(  # type: ignore[call-overload]  # noqa: S603 - our own argv
        argv, stdout=output, stderr=subprocess.STDOUT, check=False, **kwargs
    )
    if result.returncode != 0:
        if quiet:
            sys.stderr.write(result.stdout.decode(errors="replace")[-4000:])
        raise ImageBuildError(f"{' '.join(argv[:4])} ... failed with exit code {result.returncode}")


def _output(command: Sequence[str | Path]) -> str:
    """The standard output of a query (a tool's version, its list of things)."""
    argv = [str(word) for word in command]
    found = shutil.which(argv[0])
    if found is None:
        raise ImageBuildError(f"{argv[0]} is not installed: sudo scripts/install-node-packages.sh")
    result = subprocess.run(  # noqa: S603 - our own argv, the tool resolved on PATH
        [found, *argv[1:]], capture_output=True, text=True, check=True
    )
    return result.stdout


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build the images, each with the command that fixes it."""
    fix = "sudo scripts/install-node-packages.sh"
    missing = []
    if os.geteuid() != 0:
        missing.append("root (mmdebstrap, chroot and umoci unpack need it): run as root")
    for tool, package in (
        ("mmdebstrap", "mmdebstrap"),
        ("umoci", "umoci"),
        ("unshare", "util-linux"),
    ):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (Debian package {package}): {fix}")
    if not BUSYBOX_BINARY.is_file():
        missing.append(f"{BUSYBOX_BINARY} (Debian package busybox-static): {fix}")
    if shutil.which("go") is None:
        missing.append("go (for the pause binary): install Go 1.26, as for the control plane")
    return missing


def _debian_arch() -> str:
    arch = _output(["dpkg", "--print-architecture"]).strip()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)


@contextlib.contextmanager
def _cache_lock(cache: Path) -> Iterator[None]:
    """One build at a time per cache; a leftover work directory is removed first."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        shutil.rmtree(cache / "work", ignore_errors=True)
        try:
            yield
        finally:
            shutil.rmtree(cache / "work", ignore_errors=True)


def _workdir(cache: Path, name: str) -> Path:
    work = cache / "work"
    work.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))


def _umoci(*args: str | Path) -> None:
    _run(["umoci", "--log=error", *args])


def _replace_old(cache: Path, prefix: str, keep: Path) -> None:
    for old in cache.glob(f"{prefix}-*"):
        if old != keep:
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink()


def _write_archive(layout: Path, reference: str, archive: Path) -> None:
    """An OCI archive of the layout (index, oci-layout, blobs), written atomically."""
    index = archive_index(json.loads((layout / "index.json").read_text()), reference)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (
            ("oci-layout", (layout / "oci-layout").read_bytes()),
            ("index.json", json.dumps(index, indent=2).encode()),
        ):
            tar.addfile(_tar_entry(name, tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content))
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_tar_entry(directory, tarfile.DIRTYPE, 0o755))
        for blob in sorted((layout / "blobs" / "sha256").iterdir()):
            entry = _tar_entry(
                f"blobs/sha256/{blob.name}", tarfile.REGTYPE, 0o644, blob.stat().st_size
            )
            with blob.open("rb") as source:
                tar.addfile(entry, source)
    partial.replace(archive)


def _layout_with_layer(work: Path, tag: str, layer: bytes, config: OciConfig) -> Path:
    layout = work / "oci"
    layer_file = work / "layer.tar"
    layer_file.write_bytes(layer)
    _umoci("init", f"--layout={layout}")
    _umoci("new", f"--image={layout}:{tag}")
    _umoci("raw", "add-layer", "--no-history", f"--image={layout}:{tag}", layer_file)
    _umoci("config", "--no-history", f"--image={layout}:{tag}", *config.umoci_args())
    return layout


def _base_layout(cache: Path) -> Path:
    """Debian with Python as a one-layer OCI layout tagged ``base``, cached by recipe."""
    layout = cache / f"base-{digest(base_inputs())[:16]}"
    if (layout / "index.json").is_file():
        return layout
    start = time.monotonic()
    work = _workdir(cache, "base")
    rootfs = work / "rootfs.tar"
    _say(f"making the Debian {DEBIAN_SUITE} root filesystem with mmdebstrap (about a minute)")
    # A private mount namespace: whatever mmdebstrap mounts in its chroot ends with it.
    env = {**os.environ, "TMPDIR": str(work)}
    with _step("mmdebstrap"):
        _run([*PRIVATE_NAMESPACES, *mmdebstrap_command(rootfs)], quiet=True, env=env)
    staging = work / "oci"
    with _step("base layer"):
        _umoci("init", f"--layout={staging}")
        _umoci("new", f"--image={staging}:base")
        _umoci("raw", "add-layer", "--no-history", f"--image={staging}:base", rootfs)
    staging.rename(layout)
    _replace_old(cache, "base", layout)
    _say(f"base layer ready in {time.monotonic() - start:.0f} s")
    return layout


def _build_wheel(root: Path, work: Path) -> Path:
    source = work / "source"
    for entry in WHEEL_SOURCES:
        if (root / entry).is_dir():
            shutil.copytree(
                root / entry, source / entry, ignore=shutil.ignore_patterns(*SOURCE_IGNORE)
            )
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / entry, source / entry)
    wheels = work / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    _run([*pip_wheel, f"--wheel-dir={wheels}", source], quiet=True)
    return wheels


def _wheelhouse(root: Path, cache: Path) -> Path:
    """The locked wheels for the image's platform, downloaded once per lock file."""
    lock = root / LOCK_FILE
    arch = _debian_arch()
    key = digest({"lock": lock.read_text(), "target": pip_target_args(arch)})[:16]
    house = cache / f"wheels-{key}"
    if house.is_dir():
        return house
    partial = _workdir(cache, "wheels")
    _run(
        [
            *(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps"),
            f"--dest={partial}",
            *pip_target_args(arch),
            f"--requirement={lock}",
        ]
    )
    partial.rename(house)
    _replace_old(cache, "wheels", house)
    return house


def _chroot_install(rootfs: Path, wheels: Path, wheelhouse: Path, root: Path) -> None:
    """Runs the shared install script in the unpacked base, with nothing mounted on the host."""
    inside = "/tmp/image"  # noqa: S108 - inside the image's root, removed afterwards
    stage = rootfs / inside.lstrip("/")
    stage.mkdir(parents=True)
    shutil.copy2(root / INSTALL_SCRIPT, stage / Path(INSTALL_SCRIPT).name)
    shutil.copy2(root / LOCK_FILE, stage / Path(LOCK_FILE).name)
    shutil.copytree(wheels, stage / "dist")
    shutil.copytree(wheelhouse, stage / "wheels")
    script = install_command(inside, find_links=f"{inside}/wheels")
    # A private mount and pid namespace: /proc is mounted for the chroot only, and every
    # process the install starts ends with it.
    mount_and_run = 'mount -t proc proc "$0/proc" && exec chroot "$0" "$@"'
    _run(
        [*PRIVATE_NAMESPACES, "--pid", "--fork", "sh", "-c", mount_and_run, rootfs, *script],
        env={"PATH": SYSTEM_PATH, "HOME": "/nonexistent", "LANG": "C.UTF-8"},
    )
    shutil.rmtree(stage)


def _project_image(root: Path, cache: Path) -> BuiltImage:
    key = digest(project_inputs(root))
    archive = cache / f"secure-keys-dev-{key[:16]}.oci.tar"
    if archive.is_file():
        return BuiltImage(PROJECT_REFERENCE, archive, key)
    base = _base_layout(cache)
    start = time.monotonic()
    work = _workdir(cache, "project")
    with _step("wheel"):
        wheels = _build_wheel(root, work)
    with _step("locked wheels"):
        wheelhouse = _wheelhouse(root, cache)
    layout = work / "oci"
    shutil.copytree(base, layout, copy_function=os.link)  # blobs never change in place
    bundle = work / "bundle"
    with _step("unpack the base"):
        _umoci("unpack", f"--image={layout}:base", bundle)
    with _step(f"install the lock and the wheel into {VENV}"):
        _chroot_install(bundle / "rootfs", wheels, wheelhouse, root)
    with _step("repack"):
        _umoci("repack", "--no-history", f"--image={layout}:dev", bundle)
        _umoci("config", "--no-history", f"--image={layout}:dev", *PROJECT_CONFIG.umoci_args())
        _umoci("rm", f"--image={layout}:base")
        _umoci("gc", f"--layout={layout}")
    _write_archive(layout, PROJECT_REFERENCE, archive)
    _replace_old(cache, "secure-keys-dev", archive)
    _say(f"built {PROJECT_REFERENCE} in {time.monotonic() - start:.0f} s: {archive}")
    return BuiltImage(PROJECT_REFERENCE, archive, key)


def _pause_image(root: Path, cache: Path) -> BuiltImage:
    go_version = _output(["go", "env", "GOVERSION"]).strip()
    inputs = {
        "format": BUILD_FORMAT,
        "source": tree_digest(root, [PAUSE_SOURCE]),
        "go": go_version,
        "config": asdict(PAUSE_CONFIG),
    }
    key = digest(inputs)
    archive = cache / f"pause-{key[:16]}.oci.tar"
    if archive.is_file():
        return BuiltImage(PAUSE_REFERENCE, archive, key)
    work = _workdir(cache, "pause")
    binary = work / "pause"
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
    _run(
        ["go", "build", "-trimpath", "-ldflags=-s -w", "-o", binary, "."],
        cwd=root / PAUSE_SOURCE,
        env=env,
    )
    layout = _layout_with_layer(
        work, "pause", single_file_layer("pause", binary.read_bytes()), PAUSE_CONFIG
    )
    _write_archive(layout, PAUSE_REFERENCE, archive)
    _replace_old(cache, "pause", archive)
    _say(f"built {PAUSE_REFERENCE}: {archive}")
    return BuiltImage(PAUSE_REFERENCE, archive, key)


def _busybox_image(cache: Path) -> BuiltImage:
    busybox = BUSYBOX_BINARY.read_bytes()
    applets = _output([BUSYBOX_BINARY, "--list"]).split()
    inputs = {
        "format": BUILD_FORMAT,
        "busybox": hashlib.sha256(busybox).hexdigest(),
        "applets": applets,
        "config": asdict(BUSYBOX_CONFIG),
    }
    key = digest(inputs)
    archive = cache / f"busybox-{key[:16]}.oci.tar"
    if archive.is_file():
        return BuiltImage(BUSYBOX_REFERENCE, archive, key)
    work = _workdir(cache, "busybox")
    layout = _layout_with_layer(work, "busybox", busybox_layer(busybox, applets), BUSYBOX_CONFIG)
    _write_archive(layout, BUSYBOX_REFERENCE, archive)
    _replace_old(cache, "busybox", archive)
    _say(f"built {BUSYBOX_REFERENCE}: {archive}")
    return BuiltImage(BUSYBOX_REFERENCE, archive, key)


def ensure_images(root: Path = ROOT, cache: Path = CACHE_DIR) -> LocalImages:
    """The three images' archives, built only where an input changed since the last build."""
    missing = missing_prerequisites()
    if missing:
        raise ImageBuildError("cannot build the images here; missing:\n  " + "\n  ".join(missing))
    with _cache_lock(cache):
        return LocalImages(
            project=_project_image(root, cache),
            pause=_pause_image(root, cache),
            busybox=_busybox_image(cache),
        )


def write_lock(root: Path = ROOT) -> Path:
    """Resolves the declared requirements for the image's platform and writes the lock."""
    requirements = declared_requirements(tomllib.loads((root / "pyproject.toml").read_text()))
    with tempfile.TemporaryDirectory() as work:
        wanted = Path(work) / "requirements.txt"
        wanted.write_text("\n".join(requirements) + "\n")
        report = Path(work) / "report.json"
        _run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--dry-run"),
                *("--ignore-installed", f"--report={report}"),
                *pip_target_args(_debian_arch()),
                f"--requirement={wanted}",
            ]
        )
        installs = json.loads(report.read_text())["install"]
    pins = {canonical_name(i["metadata"]["name"]): i["metadata"]["version"] for i in installs}
    lock = root / LOCK_FILE
    lock.parent.mkdir(exist_ok=True)
    lock.write_text(lock_text(requirements, pins))
    return lock


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m secure_keys_dev.image", description="Builds the local node's images."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build what changed; print 'reference archive' lines")
    commands.add_parser("lock", help=f"regenerate {LOCK_FILE} from pyproject.toml")
    args = parser.parse_args(argv)
    try:
        if args.command == "lock":
            _say(f"wrote {write_lock()}")
            return 0
        start = time.monotonic()
        images = ensure_images()
    except ImageBuildError as error:
        print(f"image: {error}", file=sys.stderr)
        return 2
    for image in images.all():
        print(f"{image.reference} {image.archive}")
    _say(f"done in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
