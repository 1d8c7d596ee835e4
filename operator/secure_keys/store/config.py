"""Owns ``config.json``: the store's identity, its KMS and its rotation rules (no secret).

Parsed strictly into a frozen ``StoreConfig``; anything unexpected is ``StoreCorrupt``
naming the field. The KMS options are the provider's own (file paths, endpoints, a key
label), never credentials: the registry's providers read those from their usual places.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from secure_keys.core.kms.base import PROVIDER_NAME
from secure_keys.store.errors import StoreCorrupt

__all__ = ["CONFIG_KIND", "StoreConfig", "new_store_id"]

CONFIG_KIND = "secure-keys/local-store"
CONFIG_FORMAT = 1
MAX_CONFIG_SIZE = 64 * 1024
DEFAULT_GRACE_SECONDS = 3600
"""As the cluster's default ``gracePeriod`` (1h): ``get --previous`` works this long."""
DEFAULT_RETAIN = 3
"""As the cluster's default ``retain``: versions kept, the current one included."""
MAX_RETAIN = 100
_STORE_ID = re.compile(r"store-[0-9a-f]{16}\Z")


def new_store_id() -> str:
    """A fresh store id. Bound into every envelope (as the binding's namespace), so an
    envelope copied from another store does not open here."""
    return f"store-{secrets.token_hex(8)}"


@dataclass(frozen=True, slots=True)
class StoreConfig:
    store_id: str
    kms_provider: str
    kms_key_id: str
    kms_options: Mapping[str, str] = field(default_factory=dict)
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    retain: int = DEFAULT_RETAIN
    mfa: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kms_options", MappingProxyType(dict(self.kms_options)))
        if not _STORE_ID.match(self.store_id):
            raise ValueError("storeId must be 'store-' and 16 hex digits")
        if not PROVIDER_NAME.match(self.kms_provider):
            raise ValueError("kms.provider is not a provider name")
        if not self.kms_key_id or len(self.kms_key_id) > 2048:
            raise ValueError("kms.keyId must be 1 to 2048 characters")
        if not 0 <= self.grace_seconds <= 10 * 365 * 86400:
            raise ValueError("gracePeriodSeconds must be 0 to ten years")
        if not 1 <= self.retain <= MAX_RETAIN:
            raise ValueError(f"retain must be 1 to {MAX_RETAIN}")

    def to_json(self) -> str:
        document: dict[str, Any] = {
            "kind": CONFIG_KIND,
            "format": CONFIG_FORMAT,
            "storeId": self.store_id,
            "kms": {
                "provider": self.kms_provider,
                "keyId": self.kms_key_id,
                "options": dict(self.kms_options),
            },
            "rotation": {"gracePeriodSeconds": self.grace_seconds, "retain": self.retain},
            "mfa": {"totp": self.mfa},
        }
        return json.dumps(document, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str) -> StoreConfig:
        if len(text) > MAX_CONFIG_SIZE:
            raise StoreCorrupt(f"{where} is larger than {MAX_CONFIG_SIZE} bytes")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise StoreCorrupt(f"{where} is not valid JSON") from None
        try:
            if not isinstance(data, dict) or data.get("kind") != CONFIG_KIND:
                raise ValueError(f"kind must be {CONFIG_KIND!r}")
            if data.get("format") != CONFIG_FORMAT:
                raise ValueError(f"unsupported format {str(data.get('format'))[:16]!r}")
            kms, rotation, mfa = data["kms"], data["rotation"], data["mfa"]
            options = kms.get("options", {})
            if not isinstance(options, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in options.items()
            ):
                raise ValueError("kms.options must map strings to strings")
            values = (
                data["storeId"],
                kms["provider"],
                kms["keyId"],
                rotation["gracePeriodSeconds"],
                rotation["retain"],
                mfa["totp"],
            )
            store_id, provider, key_id, grace, retain, totp = values
            if not all(isinstance(v, str) for v in (store_id, provider, key_id)):
                raise ValueError("storeId, kms.provider and kms.keyId must be strings")
            if not all(type(v) is int for v in (grace, retain)):
                raise ValueError("gracePeriodSeconds and retain must be integers")
            if type(totp) is not bool:
                raise ValueError("mfa.totp must be true or false")
            return cls(store_id, provider, key_id, options, grace, retain, totp)
        except (KeyError, TypeError, AttributeError) as exc:
            raise StoreCorrupt(f"{where}: missing or malformed field {str(exc)[:64]}") from None
        except ValueError as exc:
            raise StoreCorrupt(f"{where}: {exc}") from None
