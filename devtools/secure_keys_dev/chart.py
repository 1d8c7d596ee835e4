"""Owns what is generated from the Helm chart ``charts/secure-keys`` and what it is made from.

* The values table of the chart's README comes from ``values.yaml``: each value is
  documented there by a ``# --`` comment above it.
* The chart's CRD templates (``templates/crds/``) come from ``crds/``, the canonical copy:
  the same text, gated by ``crds.enabled``, with the release labels added and
  ``helm.sh/resource-policy: keep`` when ``crds.keep``.
* ``deploy/`` is the chart rendered (``helm template``) for the release ``secure-keys`` in
  ``secure-keys-system``, one file per template, for the tests and tools that apply
  single objects (RBAC under test, the admission policy) without installing the chart.

``python -m secure_keys_dev.chart`` rewrites both; ``tests/unit/dev/test_chart.py`` fails
when the committed files differ from what this module makes. helm itself is built by
``scripts/build-helm.sh`` into ``build/bin``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "secure-keys"
CRDS = REPO / "crds"
DEPLOY = REPO / "deploy"
RELEASE = "secure-keys"
NAMESPACE = "secure-keys-system"

DEPLOYED = {
    "controller-rbac.yaml": "templates/controller-rbac.yaml",
    "gateway-rbac.yaml": "templates/gateway-rbac.yaml",
    "gateway-broker-rbac.yaml": "templates/gateway-broker-rbac.yaml",
    "gateway-webhook.yaml": "templates/gateway-webhook.yaml",
    "secretref-policy.yaml": "templates/secretref-policy.yaml",
    "secret-types-policy.yaml": "templates/secret-types-policy.yaml",
    "gateway-self-policy.yaml": "templates/gateway-self-policy.yaml",
    "access-policy.yaml": "templates/access-policy.yaml",
    "gateway-access-rbac.yaml": "templates/gateway-access-rbac.yaml",
}
"""deploy/ file -> the chart template it is rendered from."""

_GENERATED = "# Generated from {source} by `python -m secure_keys_dev.chart`; do not edit.\n"


README = CHART / "README.md"
TABLE_BEGIN = "<!-- values table: generated from values.yaml -->\n"
TABLE_END = "<!-- end of values table -->\n"
_PIPE = "\\|"
_KEY = re.compile(r"^( *)([A-Za-z][A-Za-z0-9_]*):")


def documented_values(text: str) -> list[tuple[str, str]]:
    """Each value ``values.yaml`` documents (a ``# --`` comment, continued by the comment
    lines after it, right above the key) as (dotted path, description), in file order."""
    rows: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    pending: list[str] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# --"):
            pending = [stripped[4:].strip()]
            continue
        if stripped.startswith("#"):
            if pending is not None:
                pending.append(stripped[1:].strip())
            continue
        match = _KEY.match(line)
        if match is None:
            continue
        indent, key = len(match[1]), match[2]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = ".".join([*(k for _, k in stack), key])
        if pending is not None:
            rows.append((path, " ".join(pending)))
            pending = None
        stack.append((indent, key))
    return rows


def _leaves(value: Any, prefix: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def undocumented(text: str) -> list[str]:
    """Values in ``values.yaml`` that no ``# --`` comment covers (on them or a parent)."""
    documented = {path for path, _ in documented_values(text)}
    return [
        leaf
        for leaf in _leaves(yaml.safe_load(text))
        if not any(leaf == d or leaf.startswith(d + ".") for d in documented)
    ]


def values_table(text: str) -> str:
    """The README's values table (Markdown) for the text of ``values.yaml``."""
    defaults = yaml.safe_load(text)
    lines = ["| Value | Default | Description |\n", "|---|---|---|\n"]
    for path, description in documented_values(text):
        value: Any = defaults
        for part in path.split("."):
            value = value[part]
        shown = json.dumps(value, separators=(",", ":")).replace("|", _PIPE)
        lines.append(f"| `{path}` | `{shown}` | {description.replace('|', _PIPE)} |\n")
    return "".join(lines)


def readme_with_table(readme: str, values_text: str) -> str:
    """``readme`` with the text between the table markers replaced by ``values_table``."""
    head, begin, rest = readme.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError("the chart README lacks the values table markers")
    return head + begin + values_table(values_text) + end + tail


def helm_binary() -> Path:
    """build/bin/helm (``scripts/build-helm.sh``), or $SECUREKEYS_HELM."""
    return Path(os.environ.get("SECUREKEYS_HELM", REPO / "build" / "bin" / "helm"))


def crd_template(crd_text: str, source: str) -> str:
    """The chart template for one CRD file of ``crds/`` (pure).

    The CRD's own text is kept byte for byte apart from two insertions under
    ``metadata``: the release labels and, with ``crds.keep``, the keep annotation.
    """
    if "{{" in crd_text or "}}" in crd_text:
        raise ValueError(f"{source}: template delimiters in a CRD would need escaping")
    lines = crd_text.splitlines(keepends=True)
    try:
        meta = lines.index("metadata:\n")
        labels = lines.index("  labels:\n", meta)
    except ValueError:
        raise ValueError(f"{source}: expected 'metadata:' with '  labels:'") from None
    release_labels = [
        "    app.kubernetes.io/instance: {{ .Release.Name }}\n",
        "    app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}\n",
        "    app.kubernetes.io/managed-by: {{ .Release.Service }}\n",
    ]
    keep = [
        "  {{- if .Values.crds.keep }}\n",
        "  annotations:\n",
        "    helm.sh/resource-policy: keep\n",
        "  {{- end }}\n",
    ]
    body = [*lines[: meta + 1], *keep, *lines[meta + 1 : labels + 1], *release_labels]
    body += lines[labels + 1 :]
    return "".join(
        [
            "{{- if .Values.crds.enabled }}\n",
            _GENERATED.format(source=source),
            *body,
            "" if body[-1].endswith("\n") else "\n",
            "{{- end }}\n",
        ]
    )


def crd_templates() -> dict[Path, str]:
    """Each chart CRD template's path and the text it must have."""
    return {
        CHART / "templates" / "crds" / path.name: crd_template(
            path.read_text(), f"crds/{path.name}"
        )
        for path in sorted(CRDS.glob("*.yaml"))
    }


def helm_template(*args: str, values: tuple[str, ...] = ()) -> str:
    """``helm template`` of the chart for the reference release; raises on failure."""
    command = [str(helm_binary()), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for value in values:
        command += ["--set", value]
    result = subprocess.run(  # noqa: S603 - our own helm, fixed arguments
        [*command, *args], capture_output=True, text=True, check=False, timeout=120
    )
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr.strip()[:2000]}")
    return result.stdout


def deploy_files() -> dict[Path, str]:
    """Each deploy/ file's path and the text it must have (rendered by helm)."""
    files = {}
    for name, template in DEPLOYED.items():
        rendered = helm_template("--show-only", template)
        documents = [d.strip("\n") for d in rendered.split("\n---\n")]
        text = "\n---\n".join(d.removeprefix("---\n") for d in documents if d) + "\n"
        files[DEPLOY / name] = _GENERATED.format(source=f"charts/secure-keys/{template}") + text
    return files


def main(argv: list[str] | None = None) -> int:
    del argv
    readme = readme_with_table(README.read_text(), (CHART / "values.yaml").read_text())
    written = {**crd_templates(), **deploy_files(), README: readme}
    for path, text in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
