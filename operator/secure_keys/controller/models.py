"""Typed, frozen views of the ApiKey custom resource, parsed once at the boundary.

The API server already enforces the CRD schema; these models re-check what the
controller relies on, so a hand-edited object or an older CRD cannot push a malformed
value deeper than this module. Unknown fields are ignored (status and metadata carry
many), missing optional blocks take the CRD's defaults.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from secure_keys.kube.names import (
    FINALIZER,
    GROUP,
    MAX_ROTATE_REQUEST,
    ROTATE_ANNOTATION,
    VERSION,
)

__all__ = [
    "FINALIZER",
    "GROUP",
    "ROTATE_ANNOTATION",
    "VERSION",
    "ApiKey",
    "ApiKeySpec",
    "InvalidSpec",
    "source_digest",
]


class InvalidSpec(ValueError):
    """The ApiKey spec is unusable; the message says which field and why."""


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")


class GenerateSource(_Model):
    length: Annotated[int, Field(ge=16, le=512)] = 40
    alphabet: Literal["base62", "hex", "base64url", "alphanumeric"] = "base62"
    prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{0,32}$")] = ""


class SecretRefSource(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    delete_after_seal: bool = Field(False, alias="deleteAfterSeal")


class SealedSource(_Model):
    recipient: Annotated[str, Field(pattern=r"^x25519:[0-9a-f]{16}$")]
    ciphertext: Annotated[str, Field(min_length=1, max_length=131072)]


class Source(_Model):
    generate: GenerateSource | None = None
    secret_ref: SecretRefSource | None = Field(None, alias="secretRef")
    sealed: SealedSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        chosen = [f for f in (self.generate, self.secret_ref, self.sealed) if f is not None]
        if len(chosen) != 1:
            raise ValueError(
                "exactly one of source.generate, source.secretRef or source.sealed must be set"
            )
        return self

    @property
    def kind(self) -> Literal["generate", "secretRef", "sealed"]:
        if self.generate is not None:
            return "generate"
        if self.secret_ref is not None:
            return "secretRef"
        return "sealed"


class KmsRef(_Model):
    provider: Literal["local", "aws", "gcp", "pkcs11", "azure"] | None = None
    key_id: Annotated[str, Field(max_length=2048)] | None = Field(None, alias="keyId")


class Delivery(_Model):
    file_name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")] | None = Field(
        None, alias="fileName"
    )
    format: Literal["raw", "env", "json"] = "raw"
    env_name: Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]{0,127}$")] | None = Field(
        None, alias="envName"
    )
    mode: Literal["0400", "0440"] = "0400"

    @model_validator(mode="after")
    def _no_traversal(self) -> Delivery:
        if self.file_name is not None and ".." in self.file_name:
            raise ValueError("delivery.fileName must be a plain file name: no '/', no '..'")
        return self


class ApiKeySpec(_Model):
    source: Source
    kms: KmsRef = KmsRef()
    rotation: dict[str, Any] | None = None
    delivery: Delivery = Delivery()


class Metadata(_Model):
    name: str
    namespace: str
    uid: str
    generation: int = 1
    resource_version: str = Field("", alias="resourceVersion")
    annotations: dict[str, str] = Field(default_factory=dict)
    deletion_timestamp: str | None = Field(None, alias="deletionTimestamp")
    finalizers: tuple[str, ...] = ()


class ApiKey(_Model):
    """An ApiKey object: metadata, parsed spec, and the raw status (read by the reconciler)."""

    metadata: Metadata
    spec: ApiKeySpec
    status: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def parse(cls, body: dict[str, Any]) -> ApiKey:
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise InvalidSpec(_describe(exc)) from None

    @property
    def rotation_request(self) -> str | None:
        """The rotate-now annotation as recorded in status: itself if short, else a digest."""
        value = self.metadata.annotations.get(ROTATE_ANNOTATION)
        if value is None or len(value) <= MAX_ROTATE_REQUEST:
            return value
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:32]

    @property
    def deleting(self) -> bool:
        return self.metadata.deletion_timestamp is not None


def _describe(exc: ValidationError) -> str:
    # Field paths and the rule broken; never the input value (it may be a secret).
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts)


def source_digest(spec: ApiKeySpec) -> str:
    """A digest of spec.source: when it changes, the next version comes from the source.

    The source holds no plaintext (a generator's parameters, a Secret's name, or a
    ciphertext), so its digest can sit in status.
    """
    source = spec.source.model_dump(by_alias=True, exclude_none=True)
    # deleteAfterSeal says what to do with the source, not what the value is.
    (source.get("secretRef") or {}).pop("deleteAfterSeal", None)
    canonical = json.dumps(source, sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:32]
