"""Owns the broker <-> sidecar wire protocol: its message types, their parsing, and the
sealing of delivered key material to the sidecar's ephemeral key.

Both ends import this module (the sidecar may import only ``secure_keys.core``), so the
protocol has one definition. It is pure: no I/O, no clock (callers pass times in).

The protocol (``POST /v1/stream`` on the gateway, one long-lived NDJSON response):

- the request body is a ``StreamRequest``: the keys wanted, the sidecar's X25519 public
  key (fresh per connection) and the versions it already holds (``have``);
- the response is one JSON object per line: a ``StateMessage`` (first a full state for
  every requested key, later only what changed, plus keys ``revoked``), a
  ``HeartbeatMessage`` every ``heartbeatSeconds``, an ``ErrorMessage`` that ends the
  stream, or a ``ReconnectMessage`` that ends it too and asks the sidecar to connect
  again at once, without backing off (the broker is shutting down: another replica, or
  this one restarted, takes over; the files stay until their leases end);
- a refusal before the stream starts is an HTTP error whose body is a ``Refusal``.

Parsing is strict about what it knows (types, ranges, names, the fingerprint and time
formats) and ignores members it does not know, so a newer broker can add fields without
breaking an older sidecar. Every problem raises ``ProtocolError`` with a message that
names the member, never a value that could be key material.

Delivered material is sealed with ``core.sealing`` (ECIES over X25519, AES-256-GCM), to
the sidecar's ephemeral public key, bound to the pod's namespace and to
``<apikey>.v<version>``: a sealed value moved to another key, another version (current
swapped with previous) or another namespace does not open. No new primitive is added.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias

from secure_keys.core.sealing import (
    Recipient,
    RecipientPrivateKey,
    open_sealed,
    seal_to_recipient,
    sealed_name,
)

__all__ = [
    "AUDIENCE",
    "CONTENT_TYPE",
    "DEFAULT_HEARTBEAT_SECONDS",
    "MAX_KEYS",
    "MAX_REQUEST_SIZE",
    "MISSED_HEARTBEATS",
    "STREAM_PATH",
    "DeliveryFormat",
    "DeliveryMode",
    "ErrorMessage",
    "HeartbeatMessage",
    "HeldVersions",
    "KeyState",
    "Message",
    "ProtocolError",
    "ReconnectMessage",
    "Refusal",
    "StateMessage",
    "StreamRequest",
    "VersionState",
    "encode_message",
    "format_time",
    "open_delivered",
    "parse_message",
    "parse_refusal",
    "parse_stream_request",
    "seal_for_sidecar",
]

STREAM_PATH: Final = "/v1/stream"
AUDIENCE: Final = "securekeys.io"
"""The audience of the projected ServiceAccount token the sidecar presents."""
CONTENT_TYPE: Final = "application/x-ndjson"
DEFAULT_HEARTBEAT_SECONDS: Final = 10
MISSED_HEARTBEATS: Final = 3
"""A sidecar that hears nothing for this many heartbeat periods reconnects."""
MAX_KEYS: Final = 64
"""The most keys one stream may ask for (the webhook's limit on ``securekeys.io/keys``)."""
MAX_REQUEST_SIZE: Final = 64 * 1024
MAX_LINE_SIZE: Final = 16 * 1024 * 1024
"""The longest response line a parser accepts: 64 keys x 2 versions of 64 KiB, sealed."""

DeliveryFormat: TypeAlias = Literal["raw", "env", "json"]
DeliveryMode: TypeAlias = Literal["0400", "0440"]

_FORMATS: Final = frozenset({"raw", "env", "json"})
_MODES: Final = frozenset({"0400", "0440"})
_KEY_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,127}\Z")
_FINGERPRINT = re.compile(r"hs256:[0-9a-f]{32}\Z")
_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,63}\Z")
_MAX_KEY_NAME = 246
"""An ApiKey name leaves room for its blob Secret's ``.sealed`` suffix (253 in all)."""
_MAX_MESSAGE_TEXT = 1024


class ProtocolError(ValueError):
    """A request, message or refusal that does not follow the protocol.

    The message names what is wrong (a member, a type, a range), never a value that could
    hold key material.
    """


# --- times --------------------------------------------------------------------------


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with a ``Z`` and whole seconds, e.g. ``2025-01-02T03:04:05Z``."""
    if moment.tzinfo is None:
        raise ValueError("a protocol time must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str) or len(value) > 64:
        raise ProtocolError(f"{where} must be an RFC 3339 time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ProtocolError(f"{where} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise ProtocolError(f"{where} must carry a timezone")
    return moment.astimezone(UTC)


# --- small validators -----------------------------------------------------------------


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def _int(value: object, where: str, *, minimum: int) -> int:
    # bool is an int in Python and not a number in the protocol.
    if type(value) is not int or value < minimum:
        raise ProtocolError(f"{where} must be an integer >= {minimum}")
    return value


def _optional_int(value: object, where: str, *, minimum: int) -> int | None:
    return None if value is None else _int(value, where, minimum=minimum)


def _key_name(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_KEY_NAME or not _KEY_NAME.match(value):
        raise ProtocolError(f"{where} must be an ApiKey name (a DNS-1123 subdomain)")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_MESSAGE_TEXT:
        raise ProtocolError(f"{where} must be a string of at most {_MAX_MESSAGE_TEXT} chars")
    return value


def _reason(value: object, where: str) -> str:
    if not isinstance(value, str) or not _REASON.match(value):
        raise ProtocolError(f"{where} must be a CamelCase reason")
    return value


def _load(raw: bytes | str, where: str, limit: int) -> Mapping[str, Any]:
    if len(raw) > limit:
        raise ProtocolError(f"{where} is over {limit} bytes")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ProtocolError(f"{where} is not valid JSON") from None
    return _object(data, where)


# --- the request ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HeldVersions:
    """The versions of one key a reconnecting sidecar already has on disk."""

    current: int | None = None
    previous: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {"current": self.current, "previous": self.previous}


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """The body of ``POST /v1/stream``.

    ``keys`` are ApiKey names in the pod's namespace (the namespace comes from the token,
    never from here); ``recipient`` is the sidecar's per-connection X25519 key; ``have``
    maps a key to the versions the sidecar holds, so those are sent without material.
    """

    keys: tuple[str, ...]
    recipient: Recipient
    have: Mapping[str, HeldVersions] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "keys": list(self.keys),
                "recipient": base64.b64encode(self.recipient.public_key).decode("ascii"),
                "have": {name: held.to_json() for name, held in self.have.items()},
            }
        ).encode()


def parse_stream_request(raw: bytes | str) -> StreamRequest:
    """Parse and validate a stream request body; raise ``ProtocolError`` if invalid.

    ``keys``: 1 to ``MAX_KEYS`` distinct ApiKey names. ``recipient``: canonical padded
    base64 of a 32-byte X25519 public key that is not a low-order point. ``have``
    (optional): only keys that are requested, each ``{"current": n|null, "previous":
    n|null}`` with versions >= 1.
    """
    data = _load(raw, "the request body", MAX_REQUEST_SIZE)
    names = data.get("keys")
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_KEYS:
        raise ProtocolError(f"keys must be a list of 1 to {MAX_KEYS} ApiKey names")
    keys = tuple(_key_name(name, "keys[]") for name in names)
    if len(set(keys)) != len(keys):
        raise ProtocolError("keys must not repeat a name")
    encoded = data.get("recipient")
    if not isinstance(encoded, str) or len(encoded) > 64:
        raise ProtocolError("recipient must be base64 of a 32-byte X25519 public key")
    try:
        public = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("recipient is not valid base64") from None
    if base64.b64encode(public).decode("ascii") != encoded:
        raise ProtocolError("recipient is not canonical padded base64")
    try:
        recipient = Recipient(public)
    except ValueError as exc:
        raise ProtocolError(f"recipient is invalid: {exc}") from None
    have_raw = _object(data.get("have", {}) or {}, "have")
    have: dict[str, HeldVersions] = {}
    for name, held in have_raw.items():
        if name not in keys:
            raise ProtocolError("have names a key that is not requested")
        held_obj = _object(held, "have[key]")
        have[name] = HeldVersions(
            current=_optional_int(held_obj.get("current"), "have[key].current", minimum=1),
            previous=_optional_int(held_obj.get("previous"), "have[key].previous", minimum=1),
        )
    return StreamRequest(keys=keys, recipient=recipient, have=have)


# --- the response messages -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionState:
    """One version of a key as delivered: ``sealed`` is ``None`` when the sidecar already
    has it; ``expires_at`` is set only on a previous version (the end of its grace)."""

    version: int
    fingerprint: str
    expires_at: datetime | None = None
    sealed: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "fingerprint": self.fingerprint,
            "expiresAt": None if self.expires_at is None else format_time(self.expires_at),
            "sealed": self.sealed,
        }


def _version(value: object, where: str) -> VersionState | None:
    if value is None:
        return None
    data = _object(value, where)
    fingerprint = data.get("fingerprint")
    if not isinstance(fingerprint, str) or not _FINGERPRINT.match(fingerprint):
        raise ProtocolError(f"{where}.fingerprint must be hs256: and 32 hex digits")
    expires = data.get("expiresAt")
    sealed = data.get("sealed")
    if sealed is not None and (not isinstance(sealed, str) or not sealed):
        raise ProtocolError(f"{where}.sealed must be null or a non-empty string")
    return VersionState(
        version=_int(data.get("version"), f"{where}.version", minimum=1),
        fingerprint=fingerprint,
        expires_at=None if expires is None else _parse_time(expires, f"{where}.expiresAt"),
        sealed=sealed,
    )


@dataclass(frozen=True, slots=True)
class KeyState:
    """What the sidecar should hold for one key, and until when without contact."""

    file_name: str
    format: DeliveryFormat
    env_name: str | None
    mode: DeliveryMode
    current: VersionState | None
    previous: VersionState | None
    lease_expires_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "fileName": self.file_name,
            "format": self.format,
            "envName": self.env_name,
            "mode": self.mode,
            "current": None if self.current is None else self.current.to_json(),
            "previous": None if self.previous is None else self.previous.to_json(),
            "leaseExpiresAt": format_time(self.lease_expires_at),
        }


def _key_state(value: object, where: str) -> KeyState:
    data = _object(value, where)
    file_name = data.get("fileName")
    if (
        not isinstance(file_name, str)
        or not _FILE_NAME.match(file_name)
        or ".." in file_name
        or file_name.endswith((".previous", ".meta.json"))
    ):
        raise ProtocolError(f"{where}.fileName must be a plain file name")
    fmt = data.get("format")
    if fmt not in _FORMATS:
        raise ProtocolError(f"{where}.format must be raw, env or json")
    env_name = data.get("envName")
    if env_name is not None and (not isinstance(env_name, str) or not _ENV_NAME.match(env_name)):
        raise ProtocolError(f"{where}.envName must be null or an environment variable name")
    mode = data.get("mode")
    if mode not in _MODES:
        raise ProtocolError(f"{where}.mode must be 0400 or 0440")
    current = _version(data.get("current"), f"{where}.current")
    previous = _version(data.get("previous"), f"{where}.previous")
    if previous is not None and (current is None or previous.version >= current.version):
        raise ProtocolError(f"{where}.previous must be older than a current version")
    if previous is not None and previous.expires_at is None:
        raise ProtocolError(f"{where}.previous.expiresAt is required")
    return KeyState(
        file_name=file_name,
        format=fmt,
        env_name=env_name,
        mode=mode,
        current=current,
        previous=previous,
        lease_expires_at=_parse_time(data.get("leaseExpiresAt"), f"{where}.leaseExpiresAt"),
    )


@dataclass(frozen=True, slots=True)
class StateMessage:
    """A full (first line) or partial state: ``keys`` changed, ``revoked`` must go now."""

    seq: int
    keys: Mapping[str, KeyState]
    revoked: tuple[str, ...] = ()
    heartbeat_seconds: int | None = None
    type: Literal["state"] = "state"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": "state",
            "seq": self.seq,
            "keys": {name: state.to_json() for name, state in self.keys.items()},
            "revoked": list(self.revoked),
        }
        if self.heartbeat_seconds is not None:
            body["heartbeatSeconds"] = self.heartbeat_seconds
        return body


@dataclass(frozen=True, slots=True)
class HeartbeatMessage:
    seq: int
    at: datetime
    type: Literal["heartbeat"] = "heartbeat"

    def to_json(self) -> dict[str, Any]:
        return {"type": "heartbeat", "seq": self.seq, "at": format_time(self.at)}


@dataclass(frozen=True, slots=True)
class ErrorMessage:
    """The last line of a stream the broker ends (e.g. the pod was deleted)."""

    reason: str
    message: str
    type: Literal["error"] = "error"

    def to_json(self) -> dict[str, Any]:
        return {"type": "error", "reason": self.reason, "message": self.message}


@dataclass(frozen=True, slots=True)
class ReconnectMessage:
    """The last line of a stream the broker ends because it is going away: connect again
    now (after a short random delay, so the sidecars of a replica do not all arrive in
    the same instant), not after a backoff; nothing is revoked."""

    reason: str
    type: Literal["reconnect"] = "reconnect"

    def to_json(self) -> dict[str, Any]:
        return {"type": "reconnect", "reason": self.reason}


Message: TypeAlias = StateMessage | HeartbeatMessage | ErrorMessage | ReconnectMessage


def encode_message(message: Message) -> bytes:
    """One NDJSON line, newline included."""
    return json.dumps(message.to_json(), separators=(",", ":")).encode() + b"\n"


def parse_message(line: bytes | str) -> Message:
    """Parse and validate one response line; raise ``ProtocolError`` if invalid."""
    data = _load(line, "a stream line", MAX_LINE_SIZE)
    kind = data.get("type")
    if kind == "state":
        keys_raw = _object(data.get("keys"), "state.keys")
        keys = {
            _key_name(name, "state.keys"): _key_state(v, "state.keys[key]")
            for name, v in keys_raw.items()
        }
        revoked_raw = data.get("revoked", [])
        if not isinstance(revoked_raw, list):
            raise ProtocolError("state.revoked must be a list")
        revoked = tuple(_key_name(name, "state.revoked[]") for name in revoked_raw)
        if set(revoked) & set(keys):
            raise ProtocolError("state names a key both in keys and in revoked")
        heartbeat = data.get("heartbeatSeconds")
        return StateMessage(
            seq=_int(data.get("seq"), "state.seq", minimum=1),
            keys=keys,
            revoked=revoked,
            heartbeat_seconds=_optional_int(heartbeat, "state.heartbeatSeconds", minimum=1),
        )
    if kind == "heartbeat":
        return HeartbeatMessage(
            seq=_int(data.get("seq"), "heartbeat.seq", minimum=1),
            at=_parse_time(data.get("at"), "heartbeat.at"),
        )
    if kind == "error":
        return ErrorMessage(
            reason=_reason(data.get("reason"), "error.reason"),
            message=_text(data.get("message"), "error.message"),
        )
    if kind == "reconnect":
        return ReconnectMessage(reason=_reason(data.get("reason"), "reconnect.reason"))
    raise ProtocolError("a stream line must have type state, heartbeat, error or reconnect")


# --- refusals -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """The body of a 400/401/403/429 answer to ``POST /v1/stream``."""

    reason: str
    message: str

    def to_json(self) -> bytes:
        return json.dumps({"reason": self.reason, "message": self.message}).encode()


def parse_refusal(raw: bytes | str) -> Refusal:
    data = _load(raw, "a refusal", MAX_REQUEST_SIZE)
    return Refusal(
        reason=_reason(data.get("reason"), "refusal.reason"),
        message=_text(data.get("message"), "refusal.message"),
    )


# --- sealing delivered material -------------------------------------------------------


def seal_for_sidecar(
    recipient: Recipient,
    plaintext: bytes | bytearray,
    *,
    namespace: str,
    apikey: str,
    version: int,
) -> str:
    """Seal one version's plaintext to the sidecar's ephemeral key (base64 text).

    The caller still owns ``plaintext`` and zeroes it.
    """
    return seal_to_recipient(
        recipient, plaintext, namespace=namespace, name=sealed_name(apikey, version)
    )


def open_delivered(
    private: RecipientPrivateKey, sealed: str, *, namespace: str, apikey: str, version: int
) -> bytearray:
    """Open delivered material; the caller zeroes the result.

    Raises ``SealedSourceInvalid`` if it was sealed to another key, for another key,
    version or namespace, or altered.
    """
    return open_sealed(private, sealed, namespace=namespace, name=sealed_name(apikey, version))
