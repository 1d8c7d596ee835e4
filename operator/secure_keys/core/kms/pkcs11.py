"""Owns the ``pkcs11`` KMS provider: data keys wrapped by an AES key inside a PKCS#11 token.

The only module that imports python-pkcs11. It owns, for a PKCS#11 library (a ``.so``
path) in this process: loading it, logging in to each token once, the bounded pool of
sessions each provider draws from, and re-initialising the library after a failure.

The key model (what ``generate_key_version`` makes and what the provider looks for):

- A KEK is a token object of class ``CKO_SECRET_KEY``, type AES, 32 bytes,
  ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false: its value never leaves the token.
  The provider reads those attributes back and refuses a key that does not have them.
- The provider's key id is the objects' ``CKA_LABEL``. Each KEK version is a separate
  object with that label whose ``CKA_ID`` is the version number, big-endian (written as 4
  bytes; 1 to 4 bytes are read). The highest version is the one new wraps use; rotating
  the KEK means generating the next version in the token. Older versions keep unwrapping.
  Each pooled session remembers the versions it found for ``versionCacheSeconds``
  (searching costs more than the GCM operation), so a rotation is seen within that time;
  a version it has not seen, or any refused or failed call, makes it search again.
- Disabling a key sets ``CKA_ENCRYPT`` and ``CKA_DECRYPT`` false on its versions (the
  token then refuses to use them: ``KmsDenied``); enabling sets them back. Destroying
  deletes the objects.

A wrapped DEK is ``0x01 || nonce (12) || AES-GCM(KEK, DEK) with its 16-byte tag`` (61
bytes), computed by the token (``CKM_AES_GCM``). The associated data binds the key label,
the KEK version and the caller's wrap context, so a wrapped DEK relabelled with another
version, moved to another key or another ApiKey does not unwrap. AES-GCM is used rather
than AES key wrap: it authenticates the context, and it has no padding rule (SoftHSM2
zero-pads key material that is not a multiple of 8 bytes before ``CKM_AES_KEY_WRAP``).

Errors: a library that does not load, a token that is not there, a dead session or a
failed login are ``KmsUnavailable`` (retried inside each call with backoff, after
re-initialising the library: ``C_Finalize`` then ``C_Initialize``, which is what brings
SoftHSM2 and many network HSM clients back after an outage); a key that is missing,
disabled or unfit, or a PIN the token refuses, is ``KmsDenied``; a wrapped key that does
not authenticate is ``KmsCorrupt`` (SoftHSM2 reports a failed GCM tag as
``CKR_GENERAL_ERROR``: the provider then checks the token still answers, so an outage is
not mistaken for corruption).

Threads: the controller calls providers from a thread pool. python-pkcs11 initialises a
library with ``C_Initialize(NULL_PTR)``, which promises the library that no two threads
call it at once (SoftHSM2 then disables its own locking; concurrent calls crashed the
process). So calls into one library are serialised by a per-library lock, whichever
provider makes them; each provider also has a bounded pool of logged-in sessions
(``sessionPoolSize``), reused across calls, which bounds how many of its callers hold a
session (and wait for the library) at once.

Timeouts: a PKCS#11 call cannot be interrupted once it is in the library. What is bounded
is each wait: for a session slot from the pool, then for the library lock
(``sessionTimeoutSeconds`` each); the number of attempts is ``retries + 1``.

The PIN comes from a file (``pinFile``), never from argv or the environment. It is kept
in a ``bytearray`` and handed to the library without ever becoming a ``str``; ``close``
zeroes it. python-pkcs11 returns the unwrapped DEK as ``bytes`` and takes the DEK to
wrap as ``bytes``: those two short-lived copies cannot be zeroed (see docs/memory.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
import structlog
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from secure_keys.core.binding import MAX_VERSION, WrapContext, length_prefixed
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsUnavailable
from secure_keys.core.kms.base import HealthStatus, WrappedKey, probe_health
from secure_keys.core.memory import read_secret_file, zero

__all__ = [
    "PROVIDER",
    "Pkcs11Kms",
    "Pkcs11Options",
    "destroy_key",
    "from_config",
    "generate_key_version",
    "set_key_enabled",
]

PROVIDER = "pkcs11"
KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
WRAP_FORMAT = 0x01
WRAPPED_SIZE = 1 + NONCE_SIZE + KEY_SIZE + TAG_SIZE
MAX_POOL_SIZE = 64
_AAD_DOMAIN = b"securekeys.io/pkcs11-wrap\x00"
_WRAP_HEADER = bytes((WRAP_FORMAT,))
_VERSION_TEXT = re.compile(r"[1-9][0-9]{0,9}\Z")
_MAX_BACKOFF = 1.0
# CKR_KEY_FUNCTION_NOT_PERMITTED: python-pkcs11 has no class for it and reports it as
# "Unmapped error code 0x68". It is what a key with CKA_ENCRYPT/CKA_DECRYPT false gives.
_CKR_KEY_FUNCTION_NOT_PERMITTED = 0x68
_UNMAPPED = re.compile(r"Unmapped error code (0x[0-9a-fA-F]+)")

_PIN_ERRORS = (
    p11.PinIncorrect,
    p11.PinInvalid,
    p11.PinLenRange,
    p11.PinExpired,
    p11.PinLocked,
    p11.UserPinNotInitialized,
)
# What a token says when GCM authentication fails, depending on the implementation.
_AUTH_FAILURES = (
    p11.GeneralError,
    p11.EncryptedDataInvalid,
    p11.EncryptedDataLenRange,
    p11.DataInvalid,
    p11.DataLenRange,
    p11.FunctionFailed,
)

_log = structlog.get_logger(__name__)

T = TypeVar("T")


# --------------------------------------------------------------------------- options


def _int_option(options: Mapping[str, object], name: str, default: int, low: int, high: int) -> int:
    raw = options.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise ValueError(f"pkcs11 KMS option {name} must be an integer")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"pkcs11 KMS option {name} must be an integer") from None
    if not low <= value <= high:
        raise ValueError(f"pkcs11 KMS option {name} must be from {low} to {high}")
    return value


def _float_option(
    options: Mapping[str, object], name: str, default: float, low: float, high: float
) -> float:
    raw = options.get(name, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ValueError(f"pkcs11 KMS option {name} must be a number")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"pkcs11 KMS option {name} must be a number") from None
    if not low <= value <= high:
        raise ValueError(f"pkcs11 KMS option {name} must be from {low} to {high}")
    return value


def _str_option(options: Mapping[str, object], name: str) -> str:
    raw = options.get(name)
    if not isinstance(raw, str) or not raw:
        raise ValueError(f"pkcs11 KMS option {name} is required (a non-empty string)")
    return raw


@dataclass(frozen=True, slots=True)
class Pkcs11Options:
    """Where the KEK lives and how hard to try. Parsed once from ``--kms-config`` options."""

    library: str
    token_label: str
    key_label: str
    pin_file: Path
    pool_size: int = 4
    session_timeout: float = 5.0
    retries: int = 2
    backoff: float = 0.05
    version_cache: float = 5.0

    @classmethod
    def parse(cls, key_id: str, options: Mapping[str, object]) -> Pkcs11Options:
        """Options ``library``, ``tokenLabel``, ``pinFile`` (required), ``sessionPoolSize``
        (1-64, default 4), ``sessionTimeoutSeconds`` (default 5), ``retries`` (0-10,
        default 2), ``versionCacheSeconds`` (0-3600, default 5: how long a session reuses
        the key versions it found; 0 looks them up on every call). The key id is the
        KEK's ``CKA_LABEL``."""
        if not key_id or len(key_id) > 255:
            raise ValueError("pkcs11 key id (the KEK's CKA_LABEL) must be 1 to 255 characters")
        token_label = _str_option(options, "tokenLabel")
        if len(token_label.encode()) > 32:
            raise ValueError("pkcs11 KMS option tokenLabel must be at most 32 bytes")
        return cls(
            library=_str_option(options, "library"),
            token_label=token_label,
            key_label=key_id,
            pin_file=Path(_str_option(options, "pinFile")),
            pool_size=_int_option(options, "sessionPoolSize", 4, 1, MAX_POOL_SIZE),
            session_timeout=_float_option(options, "sessionTimeoutSeconds", 5.0, 0.01, 300.0),
            retries=_int_option(options, "retries", 2, 0, 10),
            version_cache=_float_option(options, "versionCacheSeconds", 5.0, 0.0, 3600.0),
        )


class _Pin:
    """The user PIN in a zeroable buffer.

    python-pkcs11 calls ``user_pin.encode('utf-8')`` and passes the result to ``C_Login``
    as a byte pointer; answering with the ``bytearray`` itself means the PIN never exists
    as an immutable ``str`` or ``bytes`` in this process.
    """

    __slots__ = ("_buffer",)

    def __init__(self, buffer: bytearray) -> None:
        self._buffer = buffer

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytearray:
        del encoding, errors  # the file's bytes are passed as they are
        return self._buffer

    def wipe(self) -> None:
        zero(self._buffer)

    def __repr__(self) -> str:
        return "<PIN redacted>"


def _read_pin(path: Path) -> _Pin:
    buffer = read_secret_file(path)
    if buffer.endswith(b"\n"):  # one trailing newline, as `echo` writes; shrinks in place
        del buffer[-1]
        if buffer.endswith(b"\r"):
            del buffer[-1]
    if not buffer:
        raise ValueError(f"pkcs11 PIN file {path} is empty")
    return _Pin(buffer)


# --------------------------------------------------------------------------- the library


class _Transient(Exception):
    """An attempt failed in a way a later attempt may not: retry after a reset."""

    def __init__(self, detail: str, generation: int, *, reset: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.generation = generation
        self.reset = reset  # re-initialise the library first (False: just look again)


class _Library:
    """One PKCS#11 library in this process: its handle, logins and generation.

    ``generation`` counts re-initialisations; a session opened in an older generation is
    dead (its handle may even name a newer session), so it is dropped, never used or
    closed. Logins are per token and per process in PKCS#11, so they are kept here, once
    per token label, not per provider.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        # python-pkcs11 initialises every library with C_Initialize(NULL_PTR), which tells
        # the library that no two threads will call it at once (SoftHSM2 then turns its
        # own locking off, and concurrent calls crashed the process). So every call into
        # the library, and re-initialising it, happens under this lock.
        self.calls = threading.Lock()
        self.generation = 0
        self._lock = threading.Lock()
        self._lib: Any = None
        self._logged_in: dict[str, object] = {}

    def token(self, label: str) -> Any:
        """The token labelled ``label``. The caller holds ``calls``."""
        with self._lock:
            if self._lib is None:
                self._lib = pkcs11.lib(self.path)  # loads and initialises
            lib = self._lib
        if not lib.initialized:
            raise p11.PKCS11Error("the library is not initialised (the token was unreachable)")
        return lib.get_token(token_label=label)

    def login(self, token: Any, label: str, pin: _Pin) -> None:
        """Log in to ``token`` once for this process. The caller holds ``calls``.

        The session that logged in stays open until the next reset: closing it would log
        out every session of the token (``C_Logout`` is per application).
        """
        with self._lock:
            if label in self._logged_in:
                return
            try:
                self._logged_in[label] = token.open(user_pin=pin)
            except p11.UserAlreadyLoggedIn:
                # Someone else in this process logged in outside this module: that will do.
                self._logged_in[label] = None
            _log.info("kms.pkcs11.logged_in", library=self.path, token=label)

    def reset(self, seen_generation: int, timeout: float) -> None:
        """Re-initialise the library, unless someone already did since ``seen_generation``."""
        if not self.calls.acquire(timeout=timeout):
            return
        try:
            if self.generation != seen_generation:
                return
            self.generation += 1
            self._logged_in.clear()
            lib = self._lib
            if lib is None:
                return
            try:
                if lib.initialized:
                    lib.finalize()
            except p11.PKCS11Error:
                pass
            try:
                lib.initialize()
            except p11.PKCS11Error as exc:
                # Still unreachable: the next attempt sees an uninitialised library and
                # resets again.
                _log.info(
                    "kms.pkcs11.reinitialise_failed", library=self.path, error=type(exc).__name__
                )
            else:
                _log.info("kms.pkcs11.reinitialised", library=self.path, generation=self.generation)
        finally:
            self.calls.release()


_libraries: dict[str, _Library] = {}
_libraries_lock = threading.Lock()


def _library(path: str) -> _Library:
    key = os.path.realpath(path)
    with _libraries_lock:
        found = _libraries.get(key)
        if found is None:
            found = _libraries[key] = _Library(path)
        return found


class _Pool:
    """At most ``size`` sessions of one provider in use at once; idle ones are reused."""

    def __init__(self, size: int) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[tuple[int, Any]] = []
        self._lock = threading.Lock()

    def take_slot(self, timeout: float) -> bool:
        return self._slots.acquire(timeout=timeout)

    def give_slot(self) -> None:
        self._slots.release()

    def pop_idle(self, generation: int) -> Any:
        with self._lock:
            while self._idle:
                born, session = self._idle.pop()
                if born == generation:
                    return session
                # Older generation: the library was re-initialised, the handle is dead.
        return None

    def put_idle(self, generation: int, session: Any) -> None:
        with self._lock:
            self._idle.append((generation, session))

    def drain(self) -> list[tuple[int, Any]]:
        with self._lock:
            idle, self._idle = self._idle, []
        return idle

    @property
    def idle_count(self) -> int:
        with self._lock:
            return len(self._idle)


def _unmapped_code(exc: BaseException) -> int | None:
    found = _UNMAPPED.search(str(exc))
    return int(found.group(1), 16) if found else None


def _version_of(cka_id: object) -> int | None:
    if not isinstance(cka_id, bytes) or not 1 <= len(cka_id) <= 4:
        return None
    version = int.from_bytes(cka_id, "big")
    return version if 1 <= version <= MAX_VERSION else None


def _wrap_aad(key_label: str, version: int, context: WrapContext) -> bytes:
    return b"".join(
        (
            _AAD_DOMAIN,
            _WRAP_HEADER,
            length_prefixed(key_label),
            struct.pack(">I", version),
            context.canonical,
        )
    )


# --------------------------------------------------------------------------- the provider


class Pkcs11Kms:
    """A KEK in a PKCS#11 token: wraps with its newest version, unwraps with any."""

    def __init__(self, options: Pkcs11Options, pin: _Pin, *, rw: bool = False) -> None:
        self._options = options
        self._pin = pin
        self._rw = rw
        self._library = _library(options.library)
        self._pool = _Pool(options.pool_size)
        self._checked: set[tuple[int, int]] = set()  # (generation, handle) of fit KEKs
        self._checked_lock = threading.Lock()
        # (generation, session handle) -> (when found, version -> key object): finding the
        # versions is a C_FindObjects search, several times the cost of the GCM itself.
        self._found: dict[tuple[int, int], tuple[float, dict[int, Any]]] = {}
        self._pin_refused = False
        self._last_version = ""

    def __repr__(self) -> str:
        return (
            f"Pkcs11Kms(token={self._options.token_label!r}, "
            f"key_label={self._options.key_label!r}, pin=<redacted>)"
        )

    @property
    def name(self) -> str:
        return PROVIDER

    @property
    def key_id(self) -> str:
        return self._options.key_label

    @property
    def options(self) -> Pkcs11Options:
        return self._options

    def close(self) -> None:
        """Close idle sessions and zero the PIN. The provider is unusable afterwards."""
        idle = self._pool.drain()
        if idle and self._library.calls.acquire(timeout=self._options.session_timeout):
            try:
                for born, session in idle:
                    if born == self._library.generation:
                        with contextlib.suppress(p11.PKCS11Error):
                            session.close()
            finally:
                self._library.calls.release()
        self._pin.wipe()
        self._pin_refused = True

    # -- error helpers

    def _denied(self, detail: str) -> KmsDenied:
        return KmsDenied(PROVIDER, self.key_id, f"{detail} (token {self._options.token_label!r})")

    def _corrupt(self, detail: str) -> KmsCorrupt:
        return KmsCorrupt(PROVIDER, self.key_id, detail)

    def _classify(self, exc: p11.PKCS11Error, generation: int) -> KmsDenied | _Transient:
        """What a PKCS#11 error means for this call, when the operation did not say."""
        if isinstance(exc, _PIN_ERRORS):
            # Never try a refused PIN again: a few more tries lock the token's user PIN.
            self._pin_refused = True
            return self._denied(f"the token refused the PIN from pinFile ({type(exc).__name__})")
        if isinstance(exc, p11.MechanismInvalid | p11.MechanismParamInvalid):
            return self._denied("the token does not support AES-GCM (CKM_AES_GCM)")
        if _unmapped_code(exc) == _CKR_KEY_FUNCTION_NOT_PERMITTED:
            return self._denied("the key may not be used (CKA_ENCRYPT/CKA_DECRYPT false: disabled)")
        detail = str(exc) if type(exc) is p11.PKCS11Error else ""
        name = type(exc).__name__
        # A key object that vanished (destroyed, or a handle found before an outage): the
        # next attempt searches again, and only re-initialises if the token is gone.
        stale = isinstance(exc, p11.ObjectHandleInvalid | p11.KeyHandleInvalid)
        return _Transient(f"{name}: {detail}" if detail else name, generation, reset=not stale)

    # -- sessions and attempts

    def _open_session(self) -> Any:
        token = self._library.token(self._options.token_label)
        self._library.login(token, self._options.token_label, self._pin)
        return token.open(rw=self._rw)

    def _attempt(self, op: Callable[[Any], T]) -> T:
        timeout = self._options.session_timeout
        if not self._pool.take_slot(timeout):
            raise KmsUnavailable(
                PROVIDER,
                self.key_id,
                f"no PKCS#11 session free within {timeout:g} s "
                f"(pool of {self._options.pool_size}; a call inside the library cannot be "
                "interrupted)",
            )
        try:
            calls = self._library.calls
            if not calls.acquire(timeout=timeout):
                raise KmsUnavailable(
                    PROVIDER,
                    self.key_id,
                    f"the PKCS#11 library stayed busy for more than {timeout:g} s (calls into "
                    "one library are serialised, and one inside it cannot be interrupted)",
                )
            try:
                generation = self._library.generation
                try:
                    session = self._pool.pop_idle(generation)
                    if session is None:
                        session = self._open_session()
                except p11.PKCS11Error as exc:
                    raise self._classify(exc, generation) from None
                keep = False
                try:
                    result = op(session)
                    keep = True
                    return result
                except (KmsDenied, KmsCorrupt):
                    keep = True  # the session is fine; the key or the data is not
                    self._forget_versions(generation, session)  # look again next time
                    raise
                except p11.PKCS11Error as exc:
                    self._forget_versions(generation, session)
                    classified = self._classify(exc, generation)
                    keep = isinstance(classified, KmsDenied)
                    raise classified from None
                finally:
                    if keep:
                        self._pool.put_idle(generation, session)
                    # A broken session is dropped, not closed: the reset that follows
                    # closes every session of the library.
            finally:
                calls.release()
        finally:
            self._pool.give_slot()

    def _call(self, what: str, op: Callable[[Any], T]) -> T:
        if self._pin_refused:
            raise self._denied(
                "the token refused the PIN earlier (or the provider is closed); fix pinFile "
                "and rebuild the provider"
            )
        last = ""
        attempts = self._options.retries + 1
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self._options.backoff * 2 ** (attempt - 1), _MAX_BACKOFF))
            try:
                return self._attempt(op)
            except _Transient as exc:
                last = exc.detail
                if exc.reset:
                    self._library.reset(exc.generation, self._options.session_timeout)
        raise KmsUnavailable(
            PROVIDER,
            self.key_id,
            f"{what} on token {self._options.token_label!r} failed after {attempts} "
            f"attempt(s): {last}",
        )

    # -- key objects

    def _probe_token(self, session: Any) -> None:
        """Raise a PKCS#11 error if the token does not answer (``C_GetTokenInfo``)."""
        session.token.slot.get_token()

    def _find_versions(self, session: Any) -> dict[int, Any]:
        # python-pkcs11 gives each object the methods its CKA_ENCRYPT/CKA_DECRYPT allow
        # when it is found: a disabled key comes back without ``encrypt``/``decrypt``.
        template = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.key_id}
        found: dict[int, Any] = {}
        for obj in list(session.get_objects(template)):
            version = _version_of(obj[Attribute.ID])
            if version is None:
                continue  # not one of ours: a KEK version's CKA_ID is its number
            if version in found:
                raise self._denied(f"two key objects hold version {version}")
            found[version] = obj
        return found

    def _forget_versions(self, generation: int, session: Any) -> None:
        with self._checked_lock:
            self._found.pop((generation, int(session.handle)), None)

    def _versions(self, session: Any, need: int | None = None) -> dict[int, Any]:
        """The key versions, by number. Reused for ``versionCacheSeconds`` per session,
        unless version ``need`` is missing (a version made since): then searched again."""
        marker = (self._library.generation, int(session.handle))
        ttl = self._options.version_cache
        if ttl > 0:
            with self._checked_lock:
                hit = self._found.get(marker)
            if hit and time.monotonic() - hit[0] < ttl and (need is None or need in hit[1]):
                return hit[1]
        found = self._find_versions(session)
        if ttl > 0 and found:
            with self._checked_lock:
                self._found[marker] = (time.monotonic(), found)
        if not found:
            # An unreachable token can answer a search with nothing: ask it directly
            # before calling the key gone.
            self._probe_token(session)
            raise self._denied("no key object with this label (destroyed, or never generated)")
        return found

    def _fit(self, key: Any, version: int) -> Any:
        """Refuse a KEK that is not a sensitive, non-extractable 256-bit AES key."""
        marker = (self._library.generation, int(key.handle))
        with self._checked_lock:
            if marker in self._checked:
                return key
        if (
            key[Attribute.KEY_TYPE] != KeyType.AES
            or key[Attribute.VALUE_LEN] != KEY_SIZE
            or key[Attribute.SENSITIVE] is not True
            or key[Attribute.EXTRACTABLE] is not False
        ):
            raise self._denied(
                f"key version {version} is not a sensitive, non-extractable AES-256 key"
            )
        with self._checked_lock:
            self._checked.add(marker)
        return key

    def _newest(self, session: Any) -> int:
        version = max(self._versions(session))
        self._last_version = str(version)
        return version

    # -- the provider protocol

    def key_version(self) -> str:
        return str(self._call("reading the key versions", self._newest))

    def wrap(self, dek: bytes | bytearray, context: WrapContext) -> WrappedKey:
        if len(dek) != KEY_SIZE:
            raise ValueError(f"data keys are {KEY_SIZE} bytes")

        def op(session: Any) -> WrappedKey:
            versions = self._versions(session)
            version = max(versions)
            key = self._fit(versions[version], version)
            if not isinstance(key, pkcs11.EncryptMixin):
                raise self._denied(f"key version {version} is disabled (CKA_ENCRYPT false)")
            nonce = os.urandom(NONCE_SIZE)
            params = GCMParams(nonce, _wrap_aad(self.key_id, version, context), TAG_SIZE * 8)
            plain = bytes(dek)  # python-pkcs11 takes bytes (a bytearray is read as chunks)
            sealed = key.encrypt(plain, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            if not isinstance(sealed, bytes) or len(sealed) != KEY_SIZE + TAG_SIZE:
                raise self._denied("the token returned an AES-GCM result of the wrong size")
            self._last_version = str(version)
            return WrappedKey(PROVIDER, self.key_id, str(version), _WRAP_HEADER + nonce + sealed)

        return self._call("wrapping a data key", op)

    def unwrap(self, wrapped: WrappedKey, context: WrapContext) -> bytearray:
        if wrapped.provider != PROVIDER or wrapped.key_id != self.key_id:
            raise self._corrupt(f"wrapped by {wrapped.provider} key {wrapped.key_id[:64]!r}")
        if not _VERSION_TEXT.match(wrapped.key_version):
            raise self._corrupt("malformed KEK version")
        version = int(wrapped.key_version)
        if version > MAX_VERSION:
            raise self._corrupt("malformed KEK version")
        blob = wrapped.ciphertext
        if len(blob) != WRAPPED_SIZE or blob[0] != WRAP_FORMAT:
            raise self._corrupt("malformed wrapped key")
        nonce, sealed = blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :]

        def op(session: Any) -> bytearray:
            versions = self._versions(session, need=version)
            found = versions.get(version)
            if found is None:
                raise self._denied(f"key version {version} is not in the token (destroyed?)")
            key = self._fit(found, version)
            if not isinstance(key, pkcs11.DecryptMixin):
                raise self._denied(f"key version {version} is disabled (CKA_DECRYPT false)")
            params = GCMParams(nonce, _wrap_aad(self.key_id, version, context), TAG_SIZE * 8)
            try:
                plain = key.decrypt(sealed, mechanism=Mechanism.AES_GCM, mechanism_param=params)
            except _AUTH_FAILURES:
                self._probe_token(session)  # an outage raises here, and is retried
                raise self._corrupt("wrapped key did not authenticate for this context") from None
            if not isinstance(plain, bytes) or len(plain) != KEY_SIZE:
                raise self._corrupt("wrapped key decrypted to the wrong length")
            return bytearray(plain)

        return self._call("unwrapping a data key", op)

    def health(self) -> HealthStatus:
        """Round-trip a throwaway key under the newest version. Never raises a KMS error."""
        return probe_health(self, lambda: self._last_version)

    # -- administration (rotation, disable, destroy): used by ``secure-keys pkcs11`` and tests

    def _generate(self, session: Any) -> int:
        found = self._find_versions(session)
        version = max(found, default=0) + 1
        if version > MAX_VERSION:
            raise self._denied("no KEK version number left")
        session.generate_key(
            KeyType.AES,
            KEY_SIZE * 8,
            id=version.to_bytes(4, "big"),
            label=self.key_id,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.MODIFIABLE: True,  # so it can be disabled and enabled
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
                Attribute.WRAP: False,
                Attribute.UNWRAP: False,
                Attribute.SIGN: False,
                Attribute.VERIFY: False,
                Attribute.DERIVE: False,
            },
        )
        return version

    def _set_enabled(self, session: Any, enabled: bool) -> list[int]:
        versions = self._versions(session)
        for key in versions.values():
            key[Attribute.ENCRYPT] = enabled
            key[Attribute.DECRYPT] = enabled
        return sorted(versions)

    def _destroy(self, session: Any) -> list[int]:
        versions = self._versions(session)
        for key in versions.values():
            key.destroy()
        return sorted(versions)


def from_config(key_id: str, options: Mapping[str, object]) -> Pkcs11Kms:
    """Build a provider from ``--kms-config`` options (see ``Pkcs11Options.parse``).

    Reads the PIN file; does not touch the library or token, so a controller starts
    while its HSM is down (the first call then raises ``KmsUnavailable``).
    """
    parsed = Pkcs11Options.parse(key_id, options)
    return Pkcs11Kms(parsed, _read_pin(parsed.pin_file))


@contextlib.contextmanager
def _admin(options: Pkcs11Options) -> Iterator[Pkcs11Kms]:
    kms = Pkcs11Kms(options, _read_pin(options.pin_file), rw=True)
    try:
        yield kms
    finally:
        kms.close()


def generate_key_version(options: Pkcs11Options) -> int:
    """Generate the next KEK version in the token (version 1 for a new label).

    This is KEK rotation: new wraps use the new version from the next call on.
    """
    with _admin(options) as kms:
        version = kms._call("generating a key version", kms._generate)
    _log.info("kms.pkcs11.key_generated", key_label=options.key_label, version=version)
    return version


def set_key_enabled(options: Pkcs11Options, enabled: bool) -> list[int]:
    """Allow or forbid every version of the key (``CKA_ENCRYPT``/``CKA_DECRYPT``)."""
    with _admin(options) as kms:
        return kms._call("changing the key state", lambda s: kms._set_enabled(s, enabled))


def destroy_key(options: Pkcs11Options) -> list[int]:
    """Destroy every version of the key. Unrecoverable."""
    with _admin(options) as kms:
        return kms._call("destroying the key", kms._destroy)
