"""Owns the binding of a sealed blob to the ApiKey version it belongs to.

A ``KeyBinding`` names one version of one ApiKey (namespace, name, version). It is what
makes a sealed blob useless anywhere else: the envelope's associated data and the KMS
wrap context are both built from it, so a blob copied onto another key, namespace or
version fails to open. ``WrapContext`` is the provider-neutral form of that binding
handed to a KMS (AWS's encryption context, Google's additional authenticated data, the
local provider's associated data).

Both encodings are canonical and length-prefixed, so no two distinct bindings encode to
the same bytes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

__all__ = ["MAX_VERSION", "KeyBinding", "WrapContext", "length_prefixed"]

MAX_VERSION = 2**32 - 1

# Kubernetes object-name rules (k8s.io/apimachinery validation): a namespace is a
# DNS-1123 label, an object name a DNS-1123 subdomain.
_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)

_WRAP_CONTEXT_DOMAIN = b"securekeys.io/wrap-context\x00"
_MEMO_LIMIT = 16

CONTEXT_NAMESPACE = "securekeys.io/namespace"
CONTEXT_NAME = "securekeys.io/name"
CONTEXT_VERSION = "securekeys.io/version"
CONTEXT_FORMAT = "securekeys.io/format"


def length_prefixed(value: str | bytes) -> bytes:
    """Encode ``value`` as a 2-byte big-endian length followed by its (UTF-8) bytes."""
    raw = value.encode() if isinstance(value, str) else value
    if len(raw) > 0xFFFF:
        raise ValueError("field longer than 65535 bytes")
    return struct.pack(">H", len(raw)) + raw


@dataclass(frozen=True, slots=True)
class WrapContext:
    """The binding as a KMS sees it: string pairs, plus one canonical byte encoding."""

    pairs: tuple[tuple[str, str], ...]
    canonical: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.pairs))
        if len({key for key, _ in ordered}) != len(ordered):
            raise ValueError("wrap context keys must be unique")
        object.__setattr__(self, "pairs", ordered)
        encoded = b"".join(length_prefixed(k) + length_prefixed(v) for k, v in ordered)
        object.__setattr__(self, "canonical", _WRAP_CONTEXT_DOMAIN + encoded)

    @classmethod
    def _presorted(cls, pairs: tuple[tuple[str, str], ...], canonical: bytes) -> WrapContext:
        # For KeyBinding, which builds the same encoding from pieces it already has;
        # a test checks the two constructions agree.
        context = object.__new__(cls)
        object.__setattr__(context, "pairs", pairs)
        object.__setattr__(context, "canonical", canonical)
        return context

    def as_dict(self) -> dict[str, str]:
        """The pairs as a mapping, e.g. for AWS KMS's ``EncryptionContext``."""
        return dict(self.pairs)


@dataclass(frozen=True, slots=True)
class KeyBinding:
    """One version of one ApiKey: the identity a sealed blob is bound to."""

    namespace: str
    name: str
    version: int
    encoded: bytes = field(init=False, repr=False, compare=False)
    _contexts: dict[int, WrapContext] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    _aads: dict[tuple[bytes, str, str], bytes] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        if len(self.namespace) > 63 or not _DNS1123_LABEL.match(self.namespace):
            raise ValueError(f"namespace {self.namespace!r} is not a valid DNS-1123 label")
        if len(self.name) > 253 or not _DNS1123_SUBDOMAIN.match(self.name):
            raise ValueError(f"name {self.name!r} is not a valid DNS-1123 subdomain")
        if (
            isinstance(self.version, bool)
            or not isinstance(self.version, int)
            or not 1 <= self.version <= MAX_VERSION
        ):
            raise ValueError(f"version must be an integer from 1 to {MAX_VERSION}")
        object.__setattr__(
            self,
            "encoded",
            length_prefixed(self.namespace)
            + length_prefixed(self.name)
            + struct.pack(">I", self.version),
        )

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}@v{self.version}"

    def associated_data(self, prefix: bytes, provider: str, key_id: str) -> bytes:
        """``prefix || encoded binding || lp(provider) || lp(key_id)``, built once per key.

        The envelope's AES-GCM associated data; ``prefix`` carries its domain label and
        format version (see ``docs/envelope-format.md``).
        """
        memo_key = (prefix, provider, key_id)
        aad = self._aads.get(memo_key)
        if aad is None:
            if len(self._aads) >= _MEMO_LIMIT:
                self._aads.clear()
            aad = prefix + self.encoded + length_prefixed(provider) + length_prefixed(key_id)
            self._aads[memo_key] = aad
        return aad

    def wrap_context(self, format_version: int) -> WrapContext:
        """The context a KMS wraps this version's data key under (built once per format)."""
        cached = self._contexts.get(format_version)
        if cached is not None:
            return cached
        fmt, version = str(format_version), str(self.version)
        # The keys in sorted order: format < name < namespace < version.
        context = WrapContext._presorted(
            (
                (CONTEXT_FORMAT, fmt),
                (CONTEXT_NAME, self.name),
                (CONTEXT_NAMESPACE, self.namespace),
                (CONTEXT_VERSION, version),
            ),
            b"".join(
                (
                    _CONTEXT_PREFIX_FORMAT,
                    length_prefixed(fmt),
                    _CONTEXT_PREFIX_NAME,
                    length_prefixed(self.name),
                    _CONTEXT_PREFIX_NAMESPACE,
                    length_prefixed(self.namespace),
                    _CONTEXT_PREFIX_VERSION,
                    length_prefixed(version),
                )
            ),
        )
        self._contexts[format_version] = context
        return context


_CONTEXT_PREFIX_FORMAT = _WRAP_CONTEXT_DOMAIN + length_prefixed(CONTEXT_FORMAT)
_CONTEXT_PREFIX_NAME = length_prefixed(CONTEXT_NAME)
_CONTEXT_PREFIX_NAMESPACE = length_prefixed(CONTEXT_NAMESPACE)
_CONTEXT_PREFIX_VERSION = length_prefixed(CONTEXT_VERSION)
