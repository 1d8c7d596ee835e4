"""The local store's second factor: TOTP as ``core.totp`` owns it (one owner of pyotp
for the store and the gateway alike; see that module for what it promises)."""

from __future__ import annotations

from secure_keys.core.totp import check_secret, matching_step, new_secret, provisioning_uri

__all__ = ["check_secret", "matching_step", "new_secret", "provisioning_uri"]
