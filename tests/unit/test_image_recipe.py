"""The two recipes of the project image cannot drift, and the lock file follows pyproject.

The ``Dockerfile`` (kind users) and ``secure_keys_dev.image`` (the local node, without
Docker) must build the same image: the same Debian release and packages, the same lock
file and install script with the same arguments (venv, user id, extras), the same wheel
sources and the same configuration (user, environment, working directory, command).
Each recipe is read into one ``Recipe`` value and the two are compared; a second test
changes the Dockerfile in each of those ways and checks the comparison notices.

The lock file must pin every requirement pyproject.toml declares for the image (the base
and ``EXTRAS``: the server and every KMS provider), at versions the declared ranges
allow, and record which declaration it was resolved from, so a dependency change
without ``make image-lock`` fails here. The cache keys must change with every input, and
only with inputs.
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tarfile
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from secure_keys_dev import image

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile"


@dataclass(frozen=True)
class Recipe:
    debian: str  # the release, e.g. bookworm
    packages: tuple[str, ...]
    lock_file: str
    install_script: str
    venv: str
    uid: str
    extras: str
    wheel_sources: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str
    workdir: str
    cmd: tuple[str, ...]
    entrypoint: tuple[str, ...]


def _instructions(text: str) -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n", " ", text)
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _variable(assignment: str) -> tuple[str, str]:
    name, equals, value = assignment.partition("=")
    assert equals, f"not NAME=value: {assignment!r}"
    return name, value


def _apt_packages(run: str) -> tuple[str, ...]:
    words = shlex.split(run)
    start = words.index("install") + 1
    packages = []
    for word in words[start:]:
        if word == "&&":
            break
        if not word.startswith("-"):
            packages.append(word)
    return tuple(packages)


def dockerfile_recipe(text: str) -> Recipe:
    """What the Dockerfile's final stage installs and sets (the wheel stage's sources too)."""
    instructions = _instructions(text)
    bases = [rest.split()[0] for keyword, rest in instructions if keyword == "FROM"]
    assert len(set(bases)) == 1, f"every stage starts from the same base: {bases}"
    debian = re.fullmatch(r"debian:([a-z]+)-slim", bases[0])
    assert debian, bases[0]
    final = len(instructions) - [k for k, _ in instructions][::-1].index("FROM")
    stage = instructions[final:]
    wheel_stage = instructions[:final]
    runs = [rest for keyword, rest in stage if keyword == "RUN"]
    copies = [shlex.split(rest) for keyword, rest in stage if keyword == "COPY"]
    sources = [word for words in copies if not words[0].startswith("--") for word in words[:-1]]
    [lock] = [s for s in sources if s.endswith(".lock")]
    [script] = [s for s in sources if s.endswith(".sh")]
    [install] = [run for run in runs if Path(script).name in run]
    words = shlex.split(install)
    args = words[words.index(next(w for w in words if w.endswith(Path(script).name))) + 1 :]
    args = args[: args.index("&&")] if "&&" in args else args
    venv, uid, extras, lock_arg, _wheel_dir = args
    assert Path(lock_arg).name == Path(lock).name, "the script installs the copied lock"
    wheel_copies = [shlex.split(rest)[:-1] for keyword, rest in wheel_stage if keyword == "COPY"]
    env: list[tuple[str, str]] = []
    for keyword, rest in stage:
        if keyword == "ENV":
            env += [_variable(word) for word in shlex.split(rest)]
    singles = {keyword: rest for keyword, rest in stage if keyword in {"USER", "WORKDIR"}}
    commands = {
        keyword: tuple(json.loads(rest))
        for keyword, rest in stage
        if keyword in {"CMD", "ENTRYPOINT"}
    }
    apt = [run for run in runs if "apt-get install" in run]
    return Recipe(
        debian=debian[1],
        packages=tuple(sorted(p for run in apt for p in _apt_packages(run))),
        lock_file=lock,
        install_script=script,
        venv=venv,
        uid=uid,
        extras=extras,
        wheel_sources=tuple(sorted(s for words in wheel_copies for s in words)),
        env=tuple(sorted(env)),
        user=singles.get("USER", ""),
        workdir=singles.get("WORKDIR", ""),
        cmd=commands.get("CMD", ()),
        entrypoint=commands.get("ENTRYPOINT", ()),
    )


def local_recipe() -> Recipe:
    """The same, read from the commands and configuration the local build uses."""
    mmdebstrap = image.mmdebstrap_command(Path("/out/rootfs.tar"))
    [include] = [arg for arg in mmdebstrap if arg.startswith("--include=")]
    install = image.install_command("/stage", find_links=None)
    script, venv, uid, extras, lock, _wheel_dir = install[1:]
    assert Path(script).name == Path(image.INSTALL_SCRIPT).name
    assert Path(lock).name == Path(image.LOCK_FILE).name
    config = image.PROJECT_CONFIG
    return Recipe(
        debian=mmdebstrap[-2],
        packages=tuple(sorted(include.removeprefix("--include=").split(","))),
        lock_file=image.LOCK_FILE,
        install_script=image.INSTALL_SCRIPT,
        venv=venv,
        uid=uid,
        extras=extras,
        wheel_sources=tuple(sorted(image.WHEEL_SOURCES)),
        env=tuple(sorted(_variable(entry) for entry in config.env)),
        user=config.user,
        workdir=config.workdir,
        cmd=config.cmd,
        entrypoint=config.entrypoint,
    )


def test_the_dockerfile_and_the_local_build_make_the_same_image() -> None:
    assert dockerfile_recipe(DOCKERFILE.read_text()) == local_recipe()


def test_the_recipe_values_are_the_ones_we_promise() -> None:
    recipe = local_recipe()
    assert recipe.debian == "bookworm"  # whose python3 is the 3.11 the lock is resolved for
    assert recipe.uid == "65532"
    assert recipe.user == "65532:65532"  # non-root
    assert dict(recipe.env)["PATH"].startswith(f"{recipe.venv}/bin:")
    # Every KMS provider the chart offers runs from the one image (docs/kms.md).
    assert recipe.extras == "server,aws,gcp,azure,pkcs11"
    assert (ROOT / recipe.lock_file).is_file()
    assert (ROOT / recipe.install_script).is_file()


DRIFTS = {
    "another Debian release": ("debian:bookworm-slim", "debian:trixie-slim"),
    "a package fewer": (" python3-venv libstdc++6 \\\n && rm", " python3-venv \\\n && rm"),
    "another user": ("USER 65532:65532", "USER 10001"),
    "another venv": ("image-venv.sh /opt/secure-keys ", "image-venv.sh /venv "),
    "another user id for the install": (" 65532 server,", " 1000 server,"),
    "other extras": (" 65532 server,aws,gcp,azure,pkcs11 ", " 65532 server,aws "),
    "another lock file": ("requirements/image.lock", "requirements/other.lock"),
    "another PATH": ("ENV PATH=/opt/secure-keys/bin:", "ENV PATH="),
    "an extra variable": ("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 DEBUG=1"),
    "another command": ('CMD ["secure-keys", "--help"]', 'CMD ["secure-keys-controller"]'),
    "an entry point": ('CMD ["secure-keys", "--help"]', 'ENTRYPOINT ["python", "-m"]'),
    "fewer wheel sources": ("COPY sidecar /src/sidecar\n", ""),
}


@pytest.mark.parametrize("drift", sorted(DRIFTS))
def test_a_drifted_dockerfile_is_noticed(drift: str) -> None:
    old, new = DRIFTS[drift]
    text = DOCKERFILE.read_text()
    assert old in text, f"the drift {drift!r} no longer applies to the Dockerfile"
    with pytest.raises((AssertionError, ValueError)):
        assert dockerfile_recipe(text.replace(old, new, 1)) == local_recipe()


def test_a_drifted_local_recipe_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    dockerfile = dockerfile_recipe(DOCKERFILE.read_text())
    monkeypatch.setattr(image, "VENV", "/venv")
    assert dockerfile != local_recipe()
    monkeypatch.undo()
    config = replace(image.PROJECT_CONFIG, user="0:0")
    monkeypatch.setattr(image, "PROJECT_CONFIG", config)
    assert dockerfile != local_recipe()


# --- The lock file. ----------------------------------------------------------------------


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_lock_was_resolved_from_the_current_declarations() -> None:
    fields, _ = image.parse_lock((ROOT / image.LOCK_FILE).read_text())
    declared = image.declared_requirements(_pyproject())
    assert fields["extras"] == ",".join(image.EXTRAS)
    assert fields["requirements-digest"] == image.requirements_digest(declared), (
        "pyproject.toml's dependencies changed: run `make image-lock` and commit the lock"
    )


def test_every_declared_requirement_is_pinned_within_its_range() -> None:
    _, pins = image.parse_lock((ROOT / image.LOCK_FILE).read_text())
    target = {"python_version": image.PYTHON_VERSION, "sys_platform": "linux"}
    for declared in image.declared_requirements(_pyproject()):
        requirement = Requirement(declared)
        if requirement.marker and not requirement.marker.evaluate(target):
            continue
        name = image.canonical_name(requirement.name)
        assert name in pins, f"{name} is declared but not in the lock"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {declared}"
    assert "secure-keys" not in pins  # the wheel is installed on its own


def test_the_lock_text_round_trips_and_rejects_loose_pins() -> None:
    text = image.lock_text(["b>=1", "A_b>=2"], {"a-b": "2.1", "b": "1.0"})
    fields, pins = image.parse_lock(text)
    assert pins == {"a-b": "2.1", "b": "1.0"}
    assert fields["requirements-digest"] == image.requirements_digest(["A_b>=2", "b>=1"])
    for loose in ("a-b>=2", "a-b==", "b==1\nB==2"):
        with pytest.raises(ValueError, match="not one exact pin"):
            image.parse_lock(loose)


def test_the_wheels_are_chosen_for_the_image_not_the_host() -> None:
    args = image.pip_target_args("x86_64")
    assert "--python-version=3.11" in args
    assert "--only-binary=:all:" in args
    # cryptography ships abi3 wheels for glibc 2.34; bookworm has glibc 2.36.
    assert {"--abi=abi3", "--platform=manylinux_2_34_x86_64"} <= set(args)
    assert "--platform=manylinux_2_38_x86_64" not in args


# --- Cache keys. -------------------------------------------------------------------------


def _tree(root: Path) -> Path:
    for name, content in {
        "pyproject.toml": "[project]\n",
        "README.md": "readme\n",
        "operator/secure_keys/a.py": "A = 1\n",
        "sidecar/secure_keys_sidecar/b.py": "B = 1\n",
        image.LOCK_FILE: "x==1\n",
        image.INSTALL_SCRIPT: "#!/bin/sh\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content)
    return root


def test_the_project_key_changes_with_each_input_and_only_with_inputs(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    before = image.digest(image.project_inputs(root))
    (root / "operator/secure_keys/__pycache__").mkdir()
    (root / "operator/secure_keys/__pycache__/a.cpython-311.pyc").write_bytes(b"\0")
    (root / "operator/.mypy_cache").mkdir()
    assert image.digest(image.project_inputs(root)) == before
    seen = {before}
    for name, content in (
        ("operator/secure_keys/a.py", "A = 2\n"),
        ("sidecar/secure_keys_sidecar/new.py", ""),
        ("pyproject.toml", "[project]\nname = 'x'\n"),
        ("README.md", "readme 2\n"),
        (image.LOCK_FILE, "x==2\n"),
        (image.INSTALL_SCRIPT, "#!/bin/sh\nexit 0\n"),
    ):
        (root / name).write_text(content)
        key = image.digest(image.project_inputs(root))
        assert key not in seen, name
        seen.add(key)


def test_the_archive_names_its_image_for_containerd() -> None:
    layout = {
        "schemaVersion": 2,
        "manifests": [
            {"digest": "sha256:ab", "annotations": {"org.opencontainers.image.ref.name": "dev"}}
        ],
    }
    index = image.archive_index(layout, image.PROJECT_REFERENCE)
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    [manifest] = manifests
    assert manifest["digest"] == "sha256:ab"
    assert (
        manifest["annotations"]["io.containerd.image.name"] == "docker.io/library/secure-keys:dev"
    )
    with pytest.raises(image.ImageBuildError):
        image.archive_index({"manifests": []}, image.PROJECT_REFERENCE)


def test_the_busybox_layer_links_every_applet_to_one_binary() -> None:
    layer = image.busybox_layer(b"\x7fELF", ["sh", "sleep", "busybox"])
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {member.name: member for member in tar.getmembers()}
    assert members["bin/sh"].issym()
    assert members["bin/sh"].linkname == "busybox"
    assert members["bin/sleep"].linkname == "busybox"
    assert "bin/busybox" in members
    assert members["bin/busybox"].isfile()
    assert members["tmp"].mode == 0o1777
    assert {m.uid for m in members.values()} == {0}
