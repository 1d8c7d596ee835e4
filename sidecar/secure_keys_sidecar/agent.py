"""Owns the sidecar's behaviour: connect, apply what the gateway sends, reconnect, expire.

One loop on one thread:

1. read the projected token from its file (the kubelet rotates it), draw a fresh X25519
   key, and ``POST /v1/stream`` with the keys and the versions already on disk (``have``);
2. for every ``state`` line, open the sealed material (``core.delivery.open_delivered``,
   bound to the pod's namespace, the key and the version) and swap the files in
   (``files.KeyDirectory``); ``revoked`` keys lose their files at once;
3. a stream silent for ``MISSED_HEARTBEATS`` heartbeats, an ``error`` line, a refusal or
   a broken connection: reconnect after a jittered exponential backoff (429: after
   ``Retry-After``); a ``reconnect`` line (the broker is shutting down): reconnect at
   once, after at most ``RECONNECT_JITTER`` seconds drawn at random;
4. all along, a key whose ``leaseExpiresAt`` passes without the broker renewing it loses
   its files (fail closed); while the gateway is unreachable, what is on disk is served
   until then.

After a swap that changes a key's current version (a rotation) or removes a key, the app's
reload URL is POSTed once, if the pod names one. In ``--once`` mode (init containers) the
loop ends, exit code 0, as soon as every requested key has a current version on disk.

SIGTERM and SIGINT end the loop promptly: the handler raises only while the loop waits
(a read or a backoff sleep), never in the middle of a swap.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from types import FrameType
from typing import Protocol, TypeVar

from secure_keys.core.delivery import (
    DEFAULT_HEARTBEAT_SECONDS,
    MISSED_HEARTBEATS,
    ErrorMessage,
    HeartbeatMessage,
    HeldVersions,
    KeyState,
    ProtocolError,
    ReconnectMessage,
    StateMessage,
    StreamRequest,
    VersionState,
    open_delivered,
    parse_message,
)
from secure_keys.core.errors import SealedSourceInvalid
from secure_keys.core.memory import zero
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys_sidecar.files import (
    FileLayoutError,
    HeldKey,
    KeyDirectory,
    KeyUpdate,
    MissingMaterial,
    VersionUpdate,
)
from secure_keys_sidecar.log import Logger
from secure_keys_sidecar.settings import Settings
from secure_keys_sidecar.stream import Refused, StreamBroken

__all__ = ["Agent", "Backoff", "Terminated", "have_from", "updates_from_state"]

T = TypeVar("T")
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
RECONNECT_JITTER = 1.0
"""The most a ``reconnect`` line delays the next connection (spread at random)."""


class Terminated(Exception):
    """SIGTERM or SIGINT arrived while the loop was waiting."""


class StreamLike(Protocol):
    def readline(self, timeout: float) -> bytes: ...
    def close(self) -> None: ...


Connect = Callable[[str, bytes], StreamLike]
"""``(token, body) -> stream``; raises ``Refused`` or ``StreamBroken``."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: ``base * 2**n`` capped, the upper half drawn at
    random, so a gateway restart is not met by every sidecar in the same second."""

    base: float = BACKOFF_BASE
    cap: float = BACKOFF_CAP
    attempt: int = 0
    rng: random.Random | None = None

    def next(self) -> float:
        ceiling = min(self.cap, self.base * 2.0**self.attempt)
        self.attempt = min(self.attempt + 1, 30)
        draw: float = (self.rng or random).random()
        return ceiling / 2 + draw * ceiling / 2

    def reset(self) -> None:
        self.attempt = 0


def have_from(held: Mapping[str, HeldKey], keys: Iterable[str]) -> dict[str, HeldVersions]:
    """The ``have`` member of a request: the versions on disk of the keys asked for."""
    have: dict[str, HeldVersions] = {}
    for name in keys:
        key = held.get(name)
        if key is None or key.current is None:
            continue
        have[name] = HeldVersions(
            current=key.current.version,
            previous=None if key.previous is None else key.previous.version,
        )
    return have


def _version_update(
    private: RecipientPrivateKey, namespace: str, apikey: str, state: VersionState | None
) -> VersionUpdate | None:
    if state is None:
        return None
    plaintext = None
    if state.sealed is not None:
        plaintext = open_delivered(
            private, state.sealed, namespace=namespace, apikey=apikey, version=state.version
        )
    return VersionUpdate(state.version, state.fingerprint, state.expires_at, plaintext)


def updates_from_state(
    private: RecipientPrivateKey, namespace: str, keys: Mapping[str, KeyState]
) -> list[KeyUpdate]:
    """Open every sealed version of a ``state`` line into ``KeyUpdate``s.

    If one fails to open, the buffers opened so far are zeroed before the error
    (``SealedSourceInvalid``) propagates.
    """
    updates: list[KeyUpdate] = []
    opened: list[bytearray] = []
    try:
        for apikey, state in keys.items():
            current = _version_update(private, namespace, apikey, state.current)
            if current is not None and current.plaintext is not None:
                opened.append(current.plaintext)
            previous = _version_update(private, namespace, apikey, state.previous)
            if previous is not None and previous.plaintext is not None:
                opened.append(previous.plaintext)
            updates.append(
                KeyUpdate(
                    apikey=apikey,
                    file_name=state.file_name,
                    format=state.format,
                    env_name=state.env_name,
                    mode=state.mode,
                    current=current,
                    previous=previous,
                    lease_expires_at=state.lease_expires_at,
                )
            )
    except BaseException:
        for buffer in opened:
            zero(buffer)
        raise
    return updates


class Agent:
    """The sidecar's loop; every edge (clock, sleep, network, token) is injectable."""

    def __init__(
        self,
        settings: Settings,
        directory: KeyDirectory,
        connect: Connect,
        *,
        log: Logger,
        notify: Callable[[bytes], None] | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        backoff: Backoff | None = None,
        read_token: Callable[[], str] | None = None,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self._connect = connect
        self._log = log
        self._notify = notify
        self._now = now
        self._monotonic = monotonic
        self._sleep = sleep
        self._backoff = backoff or Backoff()
        self._read_token = read_token or (lambda: settings.token_file.read_text().strip())
        self._refetch: set[str] = set()
        self._stopping = False
        self._waiting = False
        self.reloads = 0

    # --- signals ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if self._waiting:
            raise Terminated(signal.Signals(signum).name)

    def _wait(self, fn: Callable[[], T]) -> T:
        if self._stopping:
            raise Terminated("stopping")
        self._waiting = True
        try:
            return fn()
        finally:
            self._waiting = False

    # --- the loop -----------------------------------------------------------------------

    def complete(self) -> bool:
        """Every requested key has a current version on disk."""
        held = self.directory.held
        return all(
            (key := held.get(name)) is not None and key.current is not None
            for name in self.settings.keys
        )

    def run(self) -> int:
        """Loop until SIGTERM (exit 0), or in ``--once`` mode until every key is on disk."""
        try:
            self.directory.load()
            self._log.info(
                "started",
                keys=list(self.settings.keys),
                mode=self.settings.mode,
                once=self.settings.once,
                held=sorted(self.directory.held),
            )
            while True:
                self.expire()
                if self.settings.once and self.complete():
                    self._log.info("delivered", keys=list(self.settings.keys))
                    return 0
                delay = self.session()
                self.expire()
                if self.settings.once and self.complete():
                    self._log.info("delivered", keys=list(self.settings.keys))
                    return 0
                self._wait(partial(self._sleep, self._bounded_by_lease(delay)))
        except Terminated as exc:
            self._log.info("stopping", signal=str(exc))
            return 0

    def _bounded_by_lease(self, delay: float) -> float:
        leases = [k.lease_expires_at for k in self.directory.held.values()]
        if not leases:
            return delay
        left = (min(leases) - self._now()).total_seconds()
        return max(0.0, min(delay, left + 0.01))

    def expire(self) -> None:
        """Remove the files of every key whose lease has passed (fail closed)."""
        now = self._now()
        expired = [name for name, k in self.directory.held.items() if k.lease_expires_at <= now]
        if expired:
            self.directory.apply((), removed=expired)
            self._log.warning("lease-expired", keys=expired)
            self._reload(reason="lease-expired", keys=expired)

    def _request(self) -> tuple[RecipientPrivateKey, bytes]:
        private = RecipientPrivateKey.generate()  # fresh per connection
        have = have_from(self.directory.held, self.settings.keys)
        for name in self._refetch:
            have.pop(name, None)
        body = StreamRequest(self.settings.keys, private.public(), have).to_json()
        return private, body

    def session(self) -> float:
        """One connection, from connect to its end; returns how long to wait before the next."""
        try:
            token = self._read_token()
        except OSError as exc:
            self._log.error("token-unreadable", error=type(exc).__name__)
            return self._backoff.next()
        private, body = self._request()
        try:
            stream = self._wait(lambda: self._connect(token, body))
        except Refused as exc:
            reason = exc.refusal.reason if exc.refusal else None
            message = exc.refusal.message if exc.refusal else None
            delay = self._backoff.next()
            if exc.status == 429 and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)
            self._log.warning(
                "refused",
                status=exc.status,
                reason=reason,
                message=message,
                retry_in=round(delay, 3),
            )
            return delay
        except StreamBroken as exc:
            delay = self._backoff.next()
            self._log.warning("unreachable", error=str(exc), retry_in=round(delay, 3))
            return delay
        self._log.info("connected", have=sorted(self._request_have_names(body)))
        try:
            return self._read(stream, private)
        finally:
            stream.close()

    @staticmethod
    def _request_have_names(body: bytes) -> list[str]:
        return list(json.loads(body).get("have", {}))

    def _read(self, stream: StreamLike, private: RecipientPrivateKey) -> float:
        heartbeat = float(DEFAULT_HEARTBEAT_SECONDS)
        last = self._monotonic()
        while True:
            idle_left = heartbeat * MISSED_HEARTBEATS - (self._monotonic() - last)
            timeout = self._bounded_by_lease(idle_left)
            try:
                line = self._wait(partial(stream.readline, timeout))
            except StreamBroken as exc:
                self.expire()
                delay = self._backoff.next()
                self._log.warning("disconnected", error=str(exc), retry_in=round(delay, 3))
                return delay
            last = self._monotonic()
            try:
                message = parse_message(line)
            except ProtocolError as exc:
                delay = self._backoff.next()
                self._log.error("protocol-error", error=str(exc), retry_in=round(delay, 3))
                return delay
            if isinstance(message, HeartbeatMessage):
                self.expire()
                continue
            if isinstance(message, ReconnectMessage):
                self._backoff.reset()
                delay = (self._backoff.rng or random).random() * RECONNECT_JITTER
                self._log.info("reconnect", reason=message.reason, retry_in=round(delay, 3))
                return delay
            if isinstance(message, ErrorMessage):
                delay = self._backoff.next()
                self._log.warning(
                    "stream-error",
                    reason=message.reason,
                    message=message.message,
                    retry_in=round(delay, 3),
                )
                return delay
            if message.heartbeat_seconds is not None:
                heartbeat = float(message.heartbeat_seconds)
            if not self._apply_state(message, private):
                return self._backoff.next()
            self._backoff.reset()
            self.expire()
            if self.settings.once and self.complete():
                return 0.0

    def _apply_state(self, message: StateMessage, private: RecipientPrivateKey) -> bool:
        before = {
            n: (k.current.version if k.current else None) for n, k in self.directory.held.items()
        }
        wanted = {n: s for n, s in message.keys.items() if n in self.settings.keys}
        try:
            updates = updates_from_state(private, self.settings.namespace, wanted)
        except SealedSourceInvalid as exc:
            self._log.error("material-invalid", sealed_for=exc.name, reason=exc.reason)
            return False
        try:
            changed = self.directory.apply(updates, removed=message.revoked)
        except MissingMaterial as exc:
            self._refetch.add(exc.apikey)
            self._log.warning("refetch", key=exc.apikey, version=exc.version)
            return False
        except (FileLayoutError, OSError) as exc:
            self._log.error("write-failed", error=str(exc))
            return False
        self._refetch.difference_update(wanted)
        after = self.directory.held
        for name, state in wanted.items():
            self._log.info(
                "key-state",
                key=name,
                version=state.current.version if state.current else None,
                fingerprint=state.current.fingerprint if state.current else None,
                previous=state.previous.version if state.previous else None,
                lease_expires_at=state.lease_expires_at.isoformat(),
            )
        if message.revoked:
            self._log.warning("revoked", keys=list(message.revoked))
        rotated = [
            n
            for n, k in after.items()
            if k.current is not None and before.get(n) not in (None, k.current.version)
        ]
        gone = [n for n in message.revoked if before.get(n) is not None]
        if changed and (rotated or gone):
            self._reload(reason="rotated" if rotated else "revoked", keys=rotated + gone)
        return True

    def _reload(self, *, reason: str, keys: list[str]) -> None:
        if self._notify is None:
            return
        versions: dict[str, int | None] = {}
        for name in keys:
            key = self.directory.held.get(name)
            versions[name] = key.current.version if key and key.current else None
        body = json.dumps({"reason": reason, "keys": versions}).encode()
        try:
            self._notify(body)
            self.reloads += 1
            self._log.info("reload-called", reason=reason, keys=keys)
        except StreamBroken as exc:
            self._log.warning("reload-failed", error=str(exc))
