"""The AdmissionReview wire format: decode a request body, encode a response. Pure.

``decode`` accepts a body only if it is an AdmissionReview (``admission.k8s.io/v1`` or
``v1beta1``) whose ``request`` carries a non-empty string ``uid``; anything else raises
``NotAdmissionReview`` (the server answers HTTP 400). Everything past that point is
answered with a well-formed AdmissionReview echoing the uid, whatever the request holds:
the other request fields are read defensively and a field of the wrong type reads as
absent.

Both directions go through orjson, several times faster than the standard library, and
both give exactly what the standard library gives:

* Decoding: orjson reads an integer past 64 bits as a float, so a body with a run of 19
  or more digits is read by the standard library, as is any body orjson refuses (NaN, a
  lone surrogate, UTF-16, a byte-order mark), which the standard library then accepts
  or refuses as it always did.
* Encoding: its bytes are checked to be what ``json.dumps(..., separators=(",", ":"))``
  gives: anything orjson refuses (an integer past 64 bits, a lone surrogate) or writes
  differently (non-ASCII text and DEL, which the standard library escapes; the answer
  holds no floats, whose NaN would differ) is encoded by the standard library instead.

An answer is encoded as a ``ReviewTemplate``: the review without its uid, split where
the uid goes, so that the same answer for another request is two joins away
(``ReviewTemplate.fill``), byte for byte what encoding it afresh would give.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from secure_keys.gateway.webhook.patch import PatchOp

API_VERSIONS = frozenset({"admission.k8s.io/v1", "admission.k8s.io/v1beta1"})
MAX_UID = 128
_DIGITS = bytes(ord("0") if chr(i).isdigit() and i < 128 else ord(" ") for i in range(256))
_LONG_NUMBER = b"0" * 19
"""A run of 19 digits, after ``translate(_DIGITS)``: where orjson and the standard
library could read a number differently (past 64 bits). Two C passes over the body,
fifteen times faster than the equivalent regular expression."""


class NotAdmissionReview(ValueError):
    """The body is not an AdmissionReview with a request uid."""


@dataclass(frozen=True, slots=True)
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
    sub_resource: str = ""
    body_size: int = 0
    """The length of the AdmissionReview body it was read from."""

    @property
    def is_pod_create(self) -> bool:
        return (
            self.operation == "CREATE"
            and self.group == ""
            and self.kind == "Pod"
            and not self.sub_resource
        )

    @property
    def is_ephemeral_update(self) -> bool:
        """An UPDATE of ``pods/ephemeralcontainers`` (``kubectl debug``)."""
        return (
            self.operation == "UPDATE"
            and self.group == ""
            and self.kind == "Pod"
            and self.sub_resource == "ephemeralcontainers"
        )


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def read_json(body: bytes) -> object:
    """``json.loads(body)``, by orjson where the two agree (see the module)."""
    if _LONG_NUMBER not in body.translate(_DIGITS):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # the standard library decides: it is more lenient, or raises too
    return json.loads(body)


def decode(body: bytes) -> AdmissionRequest:
    """The request of an AdmissionReview body, or ``NotAdmissionReview``."""
    try:
        document = read_json(body)
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
        sub_resource=_text(request.get("subResource")),
        body_size=len(body),
    )


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class ReviewTemplate:
    """An encoded AdmissionReview answer without its uid: ``head + uid + tail``."""

    head: bytes
    tail: bytes

    def fill(self, uid: str) -> bytes:
        """The answer to the request with this uid (JSON bytes)."""
        return self.head + compact_json(uid) + self.tail


_UID_SLOT = b'"response":{"uid":""'


def template(response: AdmissionResponse, api_version: str) -> ReviewTemplate:
    """The encoded answer for ``response`` whatever its uid (which is ignored)."""
    raw = _encode(response, "", api_version)
    # apiVersion (one of API_VERSIONS) and kind come first, so the first such slot is
    # the response's uid, whatever the patch or the message hold.
    at = raw.index(_UID_SLOT) + len(_UID_SLOT) - 2
    return ReviewTemplate(raw[:at], raw[at + 2 :])


def encode(response: AdmissionResponse, api_version: str = "admission.k8s.io/v1") -> bytes:
    """The AdmissionReview answering a request (JSON bytes)."""
    return _encode(response, response.uid, api_version)


def _encode(response: AdmissionResponse, uid: str, api_version: str) -> bytes:
    body: dict[str, Any] = {"uid": uid, "allowed": response.allowed}
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
