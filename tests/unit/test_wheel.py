"""The distribution: what the wheel holds, what it declares, and that `seal` works from it.

``pip install secure-keys`` (no extras) must be enough for ``secure-keys seal``, every
module the CLI and the shared layers import must be declared, and development-only code
(``devtools/``, the tests) must stay out of the wheel. The end-to-end check builds the
wheel from a copy of this checkout, installs it alone into a fresh virtual environment
(its dependencies from the package index, through pip's cache) and seals a key with it.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from secure_keys.core.sealing import RecipientPrivateKey, open_sealed
from tests.conftest import CANARY

ROOT = Path(__file__).parents[2]
# The layers the base install carries (the CLI, the local store, the Kubernetes client,
# the core). Modules whose library comes with an extra (the KMS providers' SDKs, the
# keychain, TOTP) are not listed here.
BASE_LAYERS = ("cli", "store", "kube", "core")
EXTRA_PROVIDERS = {"aws.py", "gcp.py", "pkcs11.py", "azure.py", "keychain.py", "totp.py", "qr.py"}
SOURCE_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "build", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "dist"
)


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _base_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_requirement_name(r) for r in project["dependencies"]}


def _third_party_imports(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m != "secure_keys"}


def test_every_import_of_the_base_layers_is_a_base_dependency() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _base_dependencies()
    sources = [
        path
        for layer in BASE_LAYERS
        for path in (ROOT / "operator" / "secure_keys" / layer).rglob("*.py")
        if path.name not in EXTRA_PROVIDERS
    ]
    assert len(sources) > 10
    undeclared: dict[str, set[str]] = {}
    for path in sources:
        for module in _third_party_imports(path):
            names = {_requirement_name(d) for d in distributions.get(module, [module])}
            if not names & declared:
                undeclared.setdefault(module, set()).add(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not in the base dependencies: {undeclared}"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the checkout (a build writes into its source tree)."""
    source = tmp_path_factory.mktemp("source") / "secure-keys"
    shutil.copytree(ROOT, source, ignore=SOURCE_IGNORE)
    wheelhouse = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run(  # noqa: S603 - our interpreter, our paths
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheelhouse, source],
        check=True,
        capture_output=True,
    )
    [built] = wheelhouse.glob("secure_keys-*.whl")
    return built


def test_the_wheel_holds_the_packages_and_nothing_for_development(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA")))
    top = {name.split("/")[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {
        "secure_keys",
        "secure_keys_sidecar",
    }
    for forbidden in ("secure_keys_dev", "devcluster", "tests/", "devtools", "conftest"):
        assert not [n for n in names if forbidden in n], forbidden
    assert "secure_keys/cli/main.py" in names
    assert "secure_keys/py.typed" in names
    requires = [
        line.split(":", 1)[1].strip()
        for line in metadata.decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    unconditional = {_requirement_name(r) for r in requires if ";" not in r}
    assert unconditional == _base_dependencies()
    assert {"aiohttp", "pyyaml"} <= unconditional
    assert not {"kopf", "kubernetes", "prometheus-client"} & unconditional


def test_seal_works_from_the_wheel_alone(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)  # noqa: S603
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG", "PYTHONHOME"}
    }
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["HOME"] = str(tmp_path / "home")  # no ~/.kube/config: --recipient-file needs none
    env["PIP_CACHE_DIR"] = os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip")
    install = subprocess.run(  # noqa: S603
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    installed = subprocess.run(  # noqa: S603
        [venv / "bin" / "python", "-m", "pip", "list", "--format=freeze"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.lower()
    for absent in ("kopf", "kubernetes", "prometheus"):
        assert absent not in installed, f"{absent} came with the base install"

    key = RecipientPrivateKey.generate()
    recipient = tmp_path / "recipient.json"
    recipient.write_text(key.public().to_json())
    sealed = subprocess.run(  # noqa: S603
        [
            venv / "bin" / "secure-keys",
            "seal",
            "stripe-live",
            "-n",
            "payments",
            "--recipient-file",
            recipient,
        ],
        input=(CANARY + "\n").encode(),
        env=env,
        cwd=tmp_path,  # not the checkout: nothing may come from the source tree
        capture_output=True,
        check=False,
    )
    assert sealed.returncode == 0, sealed.stderr.decode()
    assert CANARY.encode() not in sealed.stdout + sealed.stderr
    manifest = yaml.safe_load(sealed.stdout)
    assert manifest["metadata"] == {"name": "stripe-live", "namespace": "payments"}
    ciphertext = manifest["spec"]["source"]["sealed"]["ciphertext"]
    opened = open_sealed(key, ciphertext, namespace="payments", name="stripe-live")
    assert opened == CANARY.encode()
    assert b"SHA256:" in sealed.stderr  # it says which recipient it used
