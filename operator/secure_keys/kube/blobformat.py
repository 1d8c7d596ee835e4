"""The blob Secret's format: the one place its name, labels, type, entries and tags are
spelled, read by the controller (which writes blob Secrets) and the gateway (which serves
from them). Pure functions over Secret bodies; no I/O.

An ApiKey's sealed versions live in Secret ``<name>.sealed`` (type
``securekeys.io/sealed-versions``), one ``v<N>`` entry per version, with the controller's
integrity tag of each entry in the ``securekeys.io/blob-tags`` annotation. The Secret is
the controller's for one ApiKey when it carries a controller owner reference to the
ApiKey's uid (or, after an orphaning delete removed it, the uid label written beside it),
the type and the managed-by label. (The controller's other Secret, its keys, has its
format in ``keysformat``.)
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

BLOB_SECRET_TYPE = "securekeys.io/sealed-versions"  # noqa: S105 - a Secret type
LABEL_APIKEY = "securekeys.io/apikey-uid"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "secure-keys"
TAGS_ANNOTATION = "securekeys.io/blob-tags"
"""JSON map ``{"v<N>": tag}``: the controller's integrity tag of each entry
(``core.integrity.blob_tag``), written in the same write as the entry. An entry without a
valid tag for this ApiKey's uid is never adopted or served."""
_BLOB_KEY = re.compile(r"v[1-9][0-9]{0,9}")


def blob_secret_name(apikey: str) -> str:
    """The Secret holding an ApiKey's sealed versions (fits the 253-character limit)."""
    name = f"{apikey}.sealed"
    if len(name) <= 253:
        return name
    digest = hashlib.sha256(apikey.encode()).hexdigest()[:16]
    return f"{apikey[:200]}.{digest}.sealed"


def blob_key(version: int) -> str:
    return f"v{version}"


def blob_versions(secret: Mapping[str, Any] | None) -> frozenset[int]:
    if secret is None:
        return frozenset()
    return frozenset(int(key[1:]) for key in secret.get("data") or {} if _BLOB_KEY.fullmatch(key))


def blob_bytes(secret: Mapping[str, Any] | None, version: int) -> bytes:
    """The sealed envelope of ``version`` (raises KeyError if absent, ValueError if garbled)."""
    data = (secret or {}).get("data") or {}
    return base64.b64decode(data[blob_key(version)], validate=True)


def blob_tags(secret: Mapping[str, Any] | None) -> dict[str, str]:
    """The entry tags recorded on the blob Secret (empty if absent or garbled)."""
    annotations = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    try:
        tags = json.loads(annotations.get(TAGS_ANNOTATION) or "{}")
    except ValueError:
        return {}
    if not isinstance(tags, dict):
        return {}
    return {k: v for k, v in tags.items() if isinstance(k, str) and isinstance(v, str)}


def foreign_reason(secret: Mapping[str, Any], uid: str) -> str | None:
    """Why ``secret`` is not this ApiKey's blob Secret (None: it is ours). Pure."""
    metadata = secret.get("metadata") or {}
    owners = [
        ref
        for ref in metadata.get("ownerReferences") or []
        if ref.get("controller") and ref.get("kind") == "ApiKey"
    ]
    labelled = (metadata.get("labels") or {}).get(LABEL_APIKEY) == uid
    # The owner reference, or (after an orphaning delete, when the garbage collector
    # has removed it) the uid label we wrote beside it.
    if not any(ref.get("uid") == uid for ref in owners) and not (labelled and not owners):
        return "no controller owner reference to this ApiKey's uid"
    if secret.get("type") != BLOB_SECRET_TYPE:
        return f"its type is not {BLOB_SECRET_TYPE}"
    if (metadata.get("labels") or {}).get(LABEL_MANAGED_BY) != MANAGED_BY:
        return f"it lacks the {LABEL_MANAGED_BY}={MANAGED_BY} label"
    return None
