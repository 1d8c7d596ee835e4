"""The AdmissionReview wire format: decode a request body, encode a response. Pure.

``decode`` accepts a body only if it is an AdmissionReview (``admission.k8s.io/v1`` or
``v1beta1``) whose ``request`` carries a non-empty string ``uid``; anything else raises
``NotAdmissionReview`` (the server answers HTTP 400). Everything past that point is
answered with a well-formed AdmissionReview echoing the uid, whatever the request holds:
the other request fields are read defensively and a field of the wrong type reads as
absent.

Encoding goes through orjson, an order of magnitude faster than the standard library on
a patch (the gateway's largest cost per review). Its bytes are checked to be what
``json.dumps(..., separators=(",", ":"))`` gives: anything orjson refuses (an integer
past 64 bits, a lone surrogate) or writes differently (non-ASCII text and DEL, which the
standard library escapes; the answer holds no floats, whose NaN would differ) is encoded
by the standard library instead, so the answer is byte for byte the same either way.
Decoding stays with the standard library: orjson would read an integer past 64 bits as a
float, and the review would read differently.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from secure_keys.gateway.patch import PatchOp

API_VERSIONS = frozenset({"admission.k8s.io/v1", "admission.k8s.io/v1beta1"})
MAX_UID = 128


class NotAdmissionReview(ValueError):
    """The body is not an AdmissionReview with a request uid."""


@dataclass(frozen=True)
class AdmissionRequest:
    uid: str
    api_version: str
    """Echoed in the response, as the API server expects."""
    operation: str
    namespace: str
    group: str
    kind: str
    object: Mapping[str, Any] | None = field(repr=False)
    dry_run: bool = False

    @property
    def is_pod_create(self) -> bool:
        return self.operation == "CREATE" and self.group == "" and self.kind == "Pod"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def decode(body: bytes) -> AdmissionRequest:
    """The request of an AdmissionReview body, or ``NotAdmissionReview``."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise NotAdmissionReview("body is not JSON") from None
    if not isinstance(document, dict):
        raise NotAdmissionReview("body is not a JSON object")
    api_version = document.get("apiVersion")
    if document.get("kind") != "AdmissionReview" or not isinstance(api_version, str):
        raise NotAdmissionReview("not an admission.k8s.io/v1 AdmissionReview")
    if api_version not in API_VERSIONS:
        raise NotAdmissionReview("not an admission.k8s.io/v1 AdmissionReview")
    request = document.get("request")
    if not isinstance(request, dict):
        raise NotAdmissionReview("AdmissionReview has no request")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID:
        raise NotAdmissionReview("AdmissionReview request has no uid")
    kind = request.get("kind")
    kind = kind if isinstance(kind, dict) else {}
    obj = request.get("object")
    return AdmissionRequest(
        uid=uid,
        api_version=api_version,
        operation=_text(request.get("operation")),
        namespace=_text(request.get("namespace")),
        group=_text(kind.get("group")),
        kind=_text(kind.get("kind")),
        object=obj if isinstance(obj, dict) else None,
        dry_run=request.get("dryRun") is True,
    )


@dataclass(frozen=True)
class AdmissionResponse:
    uid: str
    allowed: bool
    patch: tuple[PatchOp, ...] = ()
    code: int = 200
    reason: str = ""
    message: str = ""
    warnings: tuple[str, ...] = ()


def compact_json(value: object) -> bytes:
    """``json.dumps(value, separators=(",", ":")).encode()``, by orjson when it agrees."""
    try:
        raw = orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError: a big integer, a surrogate, another type
        raw = b""
    if raw and raw.isascii() and b"\x7f" not in raw:
        return raw
    return json.dumps(value, separators=(",", ":")).encode()


def encode(response: AdmissionResponse, api_version: str = "admission.k8s.io/v1") -> bytes:
    """The AdmissionReview answering a request (JSON bytes)."""
    body: dict[str, Any] = {"uid": response.uid, "allowed": response.allowed}
    if response.patch:
        raw = compact_json(response.patch)
        body["patchType"] = "JSONPatch"
        body["patch"] = base64.b64encode(raw).decode("ascii")
    if not response.allowed:
        status: dict[str, Any] = {"code": response.code, "message": response.message}
        if response.reason:
            status["reason"] = response.reason
        body["status"] = status
    if response.warnings:
        body["warnings"] = list(response.warnings)
    review = {"apiVersion": api_version, "kind": "AdmissionReview", "response": body}
    return compact_json(review)
