"""Owns the broker's access to key material: blob Secrets in, plaintext out, checked.

The broker reads what the controller wrote and trusts none of it blindly:

* the blob Secret ``<name>.sealed`` must be the controller's for this ApiKey (controller
  owner reference to the ApiKey's uid, our type, our managed-by label), as the
  controller's ``blobs.foreign_reason`` checks;
* the entry ``v<N>`` must carry a valid integrity tag (``core.integrity.blob_tag`` under
  the controller's fingerprint key, annotation ``securekeys.io/blob-tags``), so a blob
  copied in by someone who may write Secrets is never served;
* it must open as exactly that namespace, ApiKey and version (the envelope's binding);
* its keyed fingerprint must equal the one status records for the version.

The fingerprint key comes from the controller keys Secret, opened under the default KMS
key (as ``controller_keys.open_keys`` does), once. Data keys are unwrapped through
``core.kms.cache.CachedUnwraps``: one KMS call per version per replica, then none while
the cache holds it (its TTL is the broker's ``--dek-cache-ttl``). Every KMS call (and
building a provider: PBKDF2, SDK clients) runs in a thread pool, never on the event
loop. An envelope whose data key is cached is opened on the loop, through the cache
alone (``CachedUnwraps.cache_only``: AES-GCM over a key of a few bytes and an HMAC, some
microseconds): a hop to the pool and back costs more than that (up to the interpreter's
5 ms switch interval when the loop is busy), and a first delivery waits on it.

The blob Secret's format comes from ``secure_keys.kube.blobformat``, which the controller
writes by; the entry checks and the opening from ``secure_keys.kube.blobcheck``
(``checked_blob``, ``open_blob``), and the controller keys Secret's format from
``secure_keys.kube.keysformat``, which the controller uses too: the gateway may not import
the controller (same layer), so both read one definition.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsError
from secure_keys.core.fingerprint import fingerprint, fingerprints_match
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.kms.cache import CachedUnwraps, DekCache, NotCached
from secure_keys.core.kms.registry import KmsRegistry, default_registry
from secure_keys.core.kms.settings import KmsSettings
from secure_keys.core.memory import zero
from secure_keys.gateway.broker.policy import DeliveryKeyView
from secure_keys.kube import keysformat
from secure_keys.kube.blobcheck import BlobRefused, checked_blob, open_blob
from secure_keys.kube.blobcheck import Refusal as BlobRefusal
from secure_keys.kube.blobformat import (
    BLOB_SECRET_TYPE,
    LABEL_APIKEY,
    LABEL_MANAGED_BY,
    MANAGED_BY,
    TAGS_ANNOTATION,
    blob_secret_name,
    foreign_reason,
)
from secure_keys.kube.client import SECRETS, ApiError, JsonObject
from secure_keys.kube.names import KEYS_SECRET

__all__ = [
    "BLOB_SECRET_TYPE",
    "KEYS_SECRET",
    "LABEL_APIKEY",
    "LABEL_MANAGED_BY",
    "MANAGED_BY",
    "TAGS_ANNOTATION",
    "CachedProviders",
    "MaterialSource",
    "MaterialUnavailable",
    "blob_secret_name",
]

_REFUSED: dict[BlobRefusal, tuple[str, str, bool]] = {
    "missing": ("BlobMissing", "no blob entry", True),
    "garbled": ("BlobInvalid", "garbled entry", False),
    "untagged": ("BlobTagInvalid", "the blob's integrity tag is missing or wrong", False),
}
"""What ``kube.blobcheck``'s refusals mean for the broker: reason, message, retry."""


class MaterialUnavailable(Exception):
    """A version cannot be served now; ``reason`` is CamelCase, the message names no
    material. ``retry`` says whether trying later may help (KMS down, keys not open)."""

    def __init__(self, reason: str, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry = retry


# --- the KMS keys the broker may unwrap with -----------------------------------------


class CachedProviders:
    """Each configured KMS key built once, behind its own DEK cache."""

    def __init__(
        self,
        keys: KmsSettings,
        *,
        dek_ttl: float = 24 * 3600.0,
        registry: KmsRegistry | None = None,
        observe: Callable[[bool], None] | None = None,
    ) -> None:
        self.keys = keys
        self._registry = registry or default_registry()
        self._dek_ttl = dek_ttl
        self._observe = observe
        self._built: dict[tuple[str, str], CachedUnwraps] = {}
        self._lock = threading.Lock()

    def provider(self, provider: str, key_id: str) -> KmsProvider:
        """Build (once) and return the provider; blocking (PBKDF2, SDK clients)."""
        wanted = (provider, key_id)
        with self._lock:
            built = self._built.get(wanted)
            if built is not None:
                return built
            config = self.keys.keys.get(wanted)
            if config is None:
                raise MaterialUnavailable(
                    "KmsNotConfigured",
                    f"KMS key {provider}/{key_id} is not configured",
                    retry=False,
                )
            try:
                inner = self._registry.create(config)
            except (KmsError, OSError, ValueError, LookupError) as exc:
                raise MaterialUnavailable(
                    "KmsUnavailable",
                    f"KMS key {provider}/{key_id}: {type(exc).__name__}",
                    retry=True,
                ) from None
            built = CachedUnwraps(inner, DekCache(ttl=self._dek_ttl), self._observe)
            self._built[wanted] = built
            return built

    def default(self) -> KmsProvider:
        return self.provider(*self.keys.default)

    def cache_only(self, provider: str, key_id: str) -> KmsProvider:
        """The provider, if built, answering from its DEK cache alone (never blocks);
        raises ``NotCached`` when the KMS (or building the provider) would be needed."""
        with self._lock:
            built = self._built.get((provider, key_id))
        if built is None:
            raise NotCached
        return built.cache_only()


# --- reading and opening blobs ---------------------------------------------------------


class SecretReader(Protocol):
    async def get_secret(self, namespace: str, name: str) -> JsonObject | None: ...


class KubeSecrets:
    def __init__(self, api: Any) -> None:
        self._api = api

    async def get_secret(self, namespace: str, name: str) -> JsonObject | None:
        try:
            secret: JsonObject = await self._api.get(SECRETS, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise MaterialUnavailable(
                "SecretReadFailed", f"reading Secret failed (HTTP {exc.status})", retry=True
            ) from None
        return secret


class MaterialSource:
    """Checked plaintext of ApiKey versions (the caller zeroes what it gets)."""

    def __init__(
        self,
        secrets: SecretReader,
        providers: CachedProviders,
        controller_namespace: str,
        *,
        pool: ThreadPoolExecutor | None = None,
        max_blobs: int = 4096,
    ) -> None:
        self._secrets = secrets
        self._providers = providers
        self._namespace = controller_namespace
        self._pool = pool or ThreadPoolExecutor(4, thread_name_prefix="broker-kms")
        self._fingerprint_key: bytearray | None = None
        self._key_lock = asyncio.Lock()
        self._blobs: OrderedDict[tuple[str, str, str, int], bytes] = OrderedDict()
        self._max_blobs = max_blobs

    async def _off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def run_off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the broker's KMS pool: for the access path's KMS calls (the
        cluster key, the MFA secrets), which must not block the event loop."""
        return await self._off_loop(fn, *args)

    @property
    def controller_namespace(self) -> str:
        return self._namespace

    def default_kms(self) -> KmsProvider:
        """The default KMS key, behind its DEK cache (blocking: call it off the loop)."""
        return self._providers.default()

    async def controller_keys(self) -> Mapping[str, str]:
        """The controller keys Secret's entries (still sealed), read now."""
        secret = await self._secrets.get_secret(self._namespace, KEYS_SECRET)
        data: Mapping[str, str] = (secret or {}).get("data") or {}
        return data

    async def fingerprint_key(self) -> bytearray:
        """The controller's fingerprint key, opened once under the default KMS key."""
        async with self._key_lock:
            if self._fingerprint_key is not None:
                return self._fingerprint_key
            secret = await self._secrets.get_secret(self._namespace, KEYS_SECRET)
            data = (secret or {}).get("data") or {}
            if keysformat.FINGERPRINT_SLOT not in data:
                raise MaterialUnavailable(
                    "ControllerKeysUnavailable",
                    f"Secret {self._namespace}/{KEYS_SECRET} is missing or incomplete",
                    retry=True,
                )
            self._fingerprint_key = await self._off_loop(self._open_fingerprint_key, data)
            return self._fingerprint_key

    def _open_fingerprint_key(self, data: Mapping[str, str]) -> bytearray:
        try:
            key = keysformat.open_slot(
                self._providers.default(), self._namespace, keysformat.FINGERPRINT_SLOT, data
            )
        except (InvalidEnvelope, KmsError, ValueError) as exc:
            raise MaterialUnavailable(
                "ControllerKeysUnavailable",
                f"the controller's fingerprint key did not open ({type(exc).__name__})",
                retry=True,
            ) from None
        if len(key) != keysformat.FINGERPRINT_KEY_SIZE:
            zero(key)
            raise MaterialUnavailable(
                "ControllerKeysUnavailable", "the fingerprint key has the wrong size", retry=False
            )
        return key

    async def _blob(self, view: DeliveryKeyView, version: int, tag_key: bytearray) -> bytes:
        slot = (view.namespace, view.name, view.uid, version)
        cached = self._blobs.get(slot)
        if cached is not None:
            self._blobs.move_to_end(slot)
            return cached
        secret = await self._secrets.get_secret(view.namespace, blob_secret_name(view.name))
        where = f"ApiKey {view.namespace}/{view.name} v{version}"
        if secret is None:
            raise MaterialUnavailable("BlobMissing", f"{where}: no blob Secret", retry=True)
        why = foreign_reason(secret, view.uid)
        if why is not None:
            raise MaterialUnavailable(
                "BlobForeign", f"{where}: blob Secret is not ours ({why})", retry=False
            )
        try:
            blob = checked_blob(secret, view.uid, version, tag_key)
        except BlobRefused as exc:
            reason, message, retry = _REFUSED[exc.reason]
            raise MaterialUnavailable(reason, f"{where}: {message}", retry=retry) from None
        self._blobs[slot] = blob
        while len(self._blobs) > self._max_blobs:
            self._blobs.popitem(last=False)
        return blob

    def _open(
        self,
        view: DeliveryKeyView,
        version: int,
        expected: str,
        blob: bytes,
        tag_key: bytearray,
        cached_only: bool = False,
    ) -> bytearray:
        """The checked plaintext; with ``cached_only``, on the loop: ``NotCached`` if the
        KMS would be needed."""
        where = f"ApiKey {view.namespace}/{view.name} v{version}"
        providers = self._providers
        get = providers.cache_only if cached_only else providers.provider
        try:
            plaintext = open_blob(
                blob,
                KeyBinding(view.namespace, view.name, version),
                lambda wrapped: get(wrapped.provider, wrapped.key_id),
            )
        except InvalidEnvelope as exc:
            raise MaterialUnavailable("BlobInvalid", str(exc), retry=False) from None
        except KmsError as exc:
            raise MaterialUnavailable(
                "KmsUnavailable", f"{where}: {type(exc).__name__}", retry=True
            ) from None
        actual = fingerprint(
            tag_key, plaintext, namespace=view.namespace, name=view.name, uid=view.uid
        )
        if not fingerprints_match(actual, expected):
            zero(plaintext)
            raise MaterialUnavailable(
                "FingerprintMismatch",
                f"{where}: the blob does not match status's fingerprint",
                retry=False,
            )
        return plaintext

    async def plaintext(
        self, view: DeliveryKeyView, version: int, expected_fingerprint: str
    ) -> bytearray:
        """The checked plaintext of one version (a fresh buffer the caller zeroes)."""
        tag_key = await self.fingerprint_key()
        blob = await self._blob(view, version, tag_key)
        try:
            return self._open(view, version, expected_fingerprint, blob, tag_key, True)
        except NotCached:
            pass  # the KMS is needed: off the loop
        result: bytearray = await self._off_loop(
            self._open, view, version, expected_fingerprint, blob, tag_key
        )
        return result
