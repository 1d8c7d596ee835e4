"""Owns people's MFA state: one Secret per enrolled identity, in the gateway's namespace.

Secret ``securekeys-mfa-<first 40 hex digits of SHA-256(user name)>``, type
``securekeys.io/mfa-enrollment``, labelled as ours, holds:

* ``data.user``: the user name (so a hash collision is refused, not confused);
* ``data.secret``: the TOTP secret sealed by ``core.envelope`` under the default KMS
  key, bound to the namespace and the Secret's name (copied to another name, it does
  not open). It is never anywhere in plaintext but in the gateway's memory while a code
  is checked, and (once) in the enrolment answer, sealed to the enrolling caller's key;
* annotation ``securekeys.io/mfa-state``: ``{"confirmed", "lastStep", "failures",
  "lockedUntil"}``.

Every check reads the Secret afresh (never a cache) and every change is written with
its ``resourceVersion`` as a precondition: if two replicas accept the same code at
once, one write fails with a conflict, and that replica reads again and finds the step
used. So a code is accepted once across replicas. A code matching a step at or before
``lastStep`` is refused (``CodeReplayed``) and not counted: it is no guess, and counting
it let anyone who saw a login review lock its user out by replaying it. ``MAX_FAILURES``
wrong codes in a row lock the identity for ``LOCKOUT`` (``MfaLocked``); the caller posts
a Warning Event.

What is written when: enrolment creates (or, while unconfirmed, replaces) the Secret;
confirmation, each accepted login code and each failure update its annotation; ``mfa
reset`` (an admin deleting the Secret) removes it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from hashlib import sha256
from typing import Any

from secure_keys.core import envelope, totp
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import InvalidEnvelope, KmsError
from secure_keys.core.kms.base import KmsProvider
from secure_keys.core.memory import zero
from secure_keys.gateway.broker.policy import Refusal
from secure_keys.kube.blobformat import LABEL_MANAGED_BY, MANAGED_BY
from secure_keys.kube.client import SECRETS, ApiError, KubeApi

MFA_SECRET_TYPE = "securekeys.io/mfa-enrollment"  # noqa: S105 - a Secret type
SECRET_PREFIX = "securekeys-mfa-"  # noqa: S105 - a name prefix
STATE_ANNOTATION = "securekeys.io/mfa-state"
MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=5)


def secret_name(username: str) -> str:
    return SECRET_PREFIX + sha256(username.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class MfaState:
    confirmed: bool = False
    last_step: int = 0
    failures: int = 0
    locked_until: int = 0

    def to_json(self) -> str:
        return json.dumps(
            {
                "confirmed": self.confirmed,
                "lastStep": self.last_step,
                "failures": self.failures,
                "lockedUntil": self.locked_until,
            },
            separators=(",", ":"),
        )

    @classmethod
    def parse(cls, text: object) -> MfaState:
        try:
            data = json.loads(text) if isinstance(text, str) else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}

        def number(key: str) -> int:
            value = data.get(key)
            return value if type(value) is int and value >= 0 else 0

        return cls(
            confirmed=data.get("confirmed") is True,
            last_step=number("lastStep"),
            failures=number("failures"),
            # An unreadable state locks rather than unlocks: fail closed.
            locked_until=number("lockedUntil") if data else 2**62,
        )


@dataclass(frozen=True)
class CodeChecked:
    """A code was accepted (or refused, ``refusal``); ``locked`` if this attempt locked
    the identity (the caller posts a Warning Event)."""

    refusal: Refusal | None
    locked: bool = False


OffLoop = Callable[..., Awaitable[Any]]


class MfaStore:
    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        kms: Callable[[], KmsProvider],
        off_loop: OffLoop,
    ) -> None:
        self._api, self._namespace, self._kms, self._off_loop = api, namespace, kms, off_loop

    def _binding(self, name: str) -> KeyBinding:
        return KeyBinding(self._namespace, name, 1)

    async def _read(self, username: str) -> dict[str, Any] | None:
        try:
            secret: dict[str, Any] = await self._api.get(
                SECRETS, self._namespace, secret_name(username)
            )
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        data = secret.get("data") or {}
        try:
            owner = base64.b64decode(data.get("user", ""), validate=True).decode()
        except (ValueError, UnicodeDecodeError):
            owner = ""
        if secret.get("type") != MFA_SECRET_TYPE or owner != username:
            return None
        return secret

    @staticmethod
    def state(secret: Mapping[str, Any]) -> MfaState:
        annotations = (secret.get("metadata") or {}).get("annotations") or {}
        return MfaState.parse(annotations.get(STATE_ANNOTATION))

    def _body(self, username: str, sealed: str, state: MfaState) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": MFA_SECRET_TYPE,
            "metadata": {
                "name": secret_name(username),
                "namespace": self._namespace,
                "labels": {
                    LABEL_MANAGED_BY: MANAGED_BY,
                    "app.kubernetes.io/part-of": "secure-keys",
                },
                "annotations": {STATE_ANNOTATION: state.to_json()},
            },
            "data": {"user": base64.b64encode(username.encode()).decode(), "secret": sealed},
        }

    def _seal(self, name: str, secret: str) -> str:
        plaintext = bytearray(secret.encode("ascii"))
        try:
            blob = envelope.seal(plaintext, self._binding(name), self._kms()).to_bytes()
        finally:
            zero(plaintext)
        return base64.b64encode(blob).decode()

    def _open(self, name: str, sealed: str) -> bytearray:
        return envelope.open(
            base64.b64decode(sealed, validate=True), self._binding(name), self._kms()
        )

    async def enroll(self, username: str) -> str | Refusal:
        """Start (or restart, while unconfirmed) an enrolment; the ``otpauth://`` URI."""
        existing = await self._read(username)
        if existing is not None and self.state(existing).confirmed:
            return Refusal(
                "AlreadyEnrolled",
                f'user "{username}" is already enrolled; an admin resets it with '
                "`secure-keys mfa reset USER`",
            )
        secret = totp.new_secret()
        name = secret_name(username)
        sealed: str = await self._off_loop(self._seal, name, secret)
        body = self._body(username, sealed, MfaState())
        if existing is None:
            await self._api.create(SECRETS, self._namespace, body)
        else:
            body["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self._api.replace(SECRETS, self._namespace, name, body)
        uri = totp.provisioning_uri(secret, username)
        del secret
        return uri

    async def check_code(
        self, username: str, code: str, now: datetime, *, confirming: bool
    ) -> CodeChecked:
        """Accept ``code`` once (enrolment confirmation or login), or say why not."""
        for _attempt in range(3):
            try:
                return await self._check_once(username, code, now, confirming=confirming)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                # Another replica wrote first: read again (the step may now be used).
        return CodeChecked(Refusal("MfaBusy", "too many concurrent attempts; try again"))

    async def _check_once(
        self, username: str, code: str, now: datetime, *, confirming: bool
    ) -> CodeChecked:
        secret = await self._read(username)
        if secret is None:
            return CodeChecked(
                Refusal(
                    "NotEnrolled", f'user "{username}" has no MFA: run `secure-keys mfa enroll`'
                )
            )
        state = self.state(secret)
        if confirming and state.confirmed:
            return CodeChecked(Refusal("AlreadyEnrolled", "the enrolment is already confirmed"))
        if not confirming and not state.confirmed:
            return CodeChecked(
                Refusal(
                    "NotEnrolled", "the enrolment is not confirmed: finish `secure-keys mfa enroll`"
                )
            )
        moment = int(now.timestamp())
        if state.locked_until > moment:
            return CodeChecked(
                Refusal(
                    "MfaLocked",
                    f"too many wrong codes: locked for {state.locked_until - moment} s more",
                )
            )
        name = secret_name(username)
        try:
            plaintext: bytearray = await self._off_loop(self._open, name, secret["data"]["secret"])
        except (InvalidEnvelope, KmsError, ValueError, KeyError) as exc:
            return CodeChecked(
                Refusal("MfaUnavailable", f"the MFA secret did not open ({type(exc).__name__})")
            )
        try:
            step = totp.matching_step(plaintext, code, now)
        finally:
            zero(plaintext)
        metadata = secret["metadata"]
        if step is not None and step <= state.last_step:
            # A spent code is no guess (whoever sends it saw it used), so it never counts
            # toward the lockout: else replaying one copied login review locked its user
            # out. The failures in a row stay as they were.
            return CodeChecked(
                Refusal("CodeReplayed", "the code was already used: wait for the next one")
            )
        if step is None:
            failures = state.failures + 1
            locked = failures >= MAX_FAILURES
            new = MfaState(
                state.confirmed,
                state.last_step,
                0 if locked else failures,
                moment + int(LOCKOUT.total_seconds()) if locked else 0,
            )
            await self._write_state(name, metadata, new)
            reason, message = "CodeInvalid", "the code is wrong (or from another time step)"
            if locked:
                reason, message = "MfaLocked", f"{MAX_FAILURES} wrong codes: locked for {LOCKOUT}"
            return CodeChecked(Refusal(reason, message), locked=locked)
        await self._write_state(name, metadata, MfaState(True, step, 0, 0))
        return CodeChecked(None)

    async def _write_state(self, name: str, metadata: Mapping[str, Any], state: MfaState) -> None:
        # resourceVersion in a merge patch is a precondition: 409 if the Secret changed.
        patch = {
            "metadata": {
                "resourceVersion": metadata["resourceVersion"],
                "annotations": {STATE_ANNOTATION: state.to_json()},
            }
        }
        await self._api.patch(SECRETS, self._namespace, name, patch)
