"""Kubeconfig documents: a pure builder and a minimal reader.

Kubeconfigs are written as JSON (which is YAML) with the certificates embedded,
so a file stands alone and can be handed to kubectl, kopf or the Python client.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import yaml


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build(
    *,
    server: str,
    ca_pem: bytes,
    user: str,
    cert_pem: bytes | None = None,
    key_pem: bytes | None = None,
    token: str | None = None,
    cluster_name: str = "securekeys-local",
) -> dict[str, Any]:
    """A single-context kubeconfig for `user`, by client certificate or bearer token."""
    if (cert_pem is None) != (key_pem is None):
        raise ValueError("a client certificate needs both cert_pem and key_pem")
    if (cert_pem is None) == (token is None):
        raise ValueError("give exactly one credential: a client certificate or a token")
    credentials: dict[str, str] = {}
    if cert_pem is not None and key_pem is not None:
        credentials["client-certificate-data"] = _b64(cert_pem)
        credentials["client-key-data"] = _b64(key_pem)
    if token is not None:
        credentials["token"] = token
    context = f"{user}@{cluster_name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
    }


def write(path: Path, document: dict[str, Any]) -> Path:
    """Write a kubeconfig readable only by its owner (it holds a private key or token)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def current_cluster(path: Path) -> tuple[str, bytes | None, str]:
    """(server URL, CA PEM or None, cluster name) of a kubeconfig's current context."""
    document = yaml.safe_load(path.read_text())
    contexts = {c["name"]: c["context"] for c in document.get("contexts") or []}
    clusters = {c["name"]: c["cluster"] for c in document.get("clusters") or []}
    current = document.get("current-context")
    if current not in contexts:
        raise ValueError(f"{path}: current-context {current!r} is not defined")
    name = contexts[current]["cluster"]
    cluster = clusters[name]
    ca: bytes | None = None
    if "certificate-authority-data" in cluster:
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif "certificate-authority" in cluster:
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return cluster["server"], ca, name
