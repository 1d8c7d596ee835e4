"""Owns the key broker: ``POST /v1/stream``, the long-lived push stream to sidecars.

A request is, in order (every refusal names its reason, is audited, and a pod-level one
also becomes an aggregated Warning Event on the pod):

1. the bearer token: a TokenReview with audience ``securekeys.io`` (``tokenreview``,
   cached by the token's hash): 401, or 503 if the API server could not be asked;
2. rate limits, per pod and per ServiceAccount: 429 with ``Retry-After``;
3. the body (``core.delivery.parse_stream_request``): 400. It is read only after 1 and
   2: a caller the API server does not vouch for is answered as soon as the review
   says so, however slowly its body arrives (reading it during the review would save
   about 0.1 ms of a first delivery, measured, and hold such connections open);
4. the pod named by the token (from the broker's pod cache): exists with that uid, not
   terminating, not sharing its process namespace unless it accepts what that means,
   asks for every requested key: 403; and the token's ServiceAccount still exists with
   the uid the token was issued for: 403;
5. each key (``policy.grant``): KeyRole ``read`` for the ServiceAccount, its
   ``access`` conditions: 403; material that cannot be served now (KMS down, blob
   missing or failing its integrity checks): 503.

Then a 200 NDJSON stream: a full ``state`` line, and later a ``state`` line with only the
keys that changed, within a second of any change to the namespace's ApiKeys, KeyRoles or
the pod (the watch-fed caches poke every session of the namespace), and at the moments
the answer changes by itself (a grace period ending, a time window opening or closing, a
lease at half-life). A ``heartbeat`` line follows every ``heartbeat_seconds`` of silence.
A key removed from the pod's ``securekeys.io/keys`` is revoked on the open stream (its
files go at once). A pod that is deleted, or whose ServiceAccount is deleted or replaced
(a new uid), ends the stream: a ``state`` line revoking every key, then an ``error``
line; the ServiceAccount's cached TokenReviews are dropped as well. ``drain`` (on
SIGTERM) refuses new streams and ends each open one with a ``reconnect`` line.

The ``broker.stream`` log line of each stream times its first delivery by stage
(``review_ms``, ``body_ms``, ``pod_ms``, ``compute_ms``, ``write_ms``, ``total_ms``,
and ``reviewed``: whether a TokenReview was asked); ``bench/delivery.py`` summarises them.

Material is opened by ``material.MaterialSource`` (checked blobs, cached DEKs, KMS off
the event loop) and sealed to the sidecar's per-connection key (``core.delivery``);
versions the sidecar said it holds (``have``, per slot) are sent without material.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from secure_keys.core import delivery
from secure_keys.core.delivery import (
    DEFAULT_HEARTBEAT_SECONDS,
    ErrorMessage,
    HeartbeatMessage,
    HeldVersions,
    KeyState,
    Message,
    ProtocolError,
    ReconnectMessage,
    StateMessage,
    StreamRequest,
    VersionState,
)
from secure_keys.core.memory import zero
from secure_keys.core.sealing import Recipient
from secure_keys.gateway import metrics
from secure_keys.gateway.broker.audit import AuditLog, PodEvents
from secure_keys.gateway.broker.caches import BrokerCaches
from secure_keys.gateway.broker.limits import RateLimits
from secure_keys.gateway.broker.material import MaterialSource, MaterialUnavailable
from secure_keys.gateway.broker.policy import (
    DeliveryKeyView,
    Refusal,
    RunningPod,
    check_account,
    check_pod,
    grant,
    next_wake,
)
from secure_keys.gateway.broker.tokenreview import TokenIdentity, TokenRejected, TokenReviewer

_log = structlog.get_logger("secure_keys.gateway.broker")

MATERIAL_RETRY = 5.0
POD_WAIT = 2.0
"""How long a stream waits for the pod cache to see a pod just created."""


@dataclass(frozen=True)
class BrokerSettings:
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS
    max_body: int = delivery.MAX_REQUEST_SIZE


_REVOKED = ("revoked",)


class Session:
    """One sidecar's stream: what it holds, what it was sent, when to look again."""

    def __init__(
        self,
        broker: Broker,
        identity: TokenIdentity,
        pod: RunningPod,
        request: StreamRequest,
        ip: str,
        user_agent: str,
    ) -> None:
        self.broker = broker
        self.identity = identity
        self.pod = pod
        self.keys = request.keys
        self.recipient: Recipient = request.recipient
        self.held: dict[str, HeldVersions] = {
            k: request.have.get(k, HeldVersions()) for k in request.keys
        }
        self.sent: dict[str, tuple[Any, ...] | None] = dict.fromkeys(request.keys)
        self.renew_at: dict[str, datetime] = {}
        self.seq = 0
        self.wake_at: datetime | None = None
        self.poked = asyncio.Event()
        self.poked_at: float | None = None
        self.ip, self.user_agent = ip, user_agent

    @property
    def pod_ref(self) -> dict[str, str]:
        return {"namespace": self.pod.namespace, "name": self.pod.name, "uid": self.pod.uid}

    def poke(self) -> None:
        if self.poked_at is None:
            self.poked_at = time.monotonic()
        self.poked.set()

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def holds(self, key: str) -> int | None:
        """The current version of ``key`` sent on this stream (0: none); ``None`` if the
        stream does not carry ``key`` (``broker/rollout.py`` counts from this)."""
        if key not in self.keys or self.sent.get(key) == _REVOKED:
            return None
        return self.held[key].current or 0

    async def compute(self, now: datetime, *, initial: bool) -> StateMessage | Refusal | None:
        """The next state line (``None``: nothing changed); at connect, a refusal if any
        key is refused."""
        caches = self.broker.caches
        apikeys = caches.apikeys.in_namespace(self.pod.namespace)
        roles = caches.roles_for(self.pod)
        states: dict[str, KeyState] = {}
        revoked: list[str] = []
        wakes: list[datetime | None] = []
        tag_key = await self.broker.material.fingerprint_key()  # open once the broker is ready
        for key in self.keys:
            decision = grant(self.pod, key, apikeys, roles, now)
            if isinstance(decision, Refusal):
                wakes.append(decision.wake_at)
                if initial:
                    return decision
                if self.sent[key] != _REVOKED:
                    revoked.append(key)
                    self.sent[key] = _REVOKED
                    self.held[key] = HeldVersions()
                    self.broker.refused(self, decision, key=key, event_type="key.revoked")
                continue
            view = apikeys[key]
            current = view.current()
            previous = view.previous(now, tag_key)
            signature = (
                None if current is None else (current.version, current.fingerprint),
                None if previous is None else (previous[0].version, previous[1]),
                view.file_name,
                view.format,
                view.env_name,
                view.mode,
            )
            wakes += [decision.wake_at, None if previous is None else previous[1]]
            renew = self.renew_at.get(key)
            if not initial and self.sent[key] == signature and renew is not None and now < renew:
                wakes.append(renew)
                continue
            before = self.held[key].previous
            try:
                state = await self._key_state(view, decision.lease_expires_at, current, previous)
            except MaterialUnavailable as exc:
                refusal = Refusal(exc.reason, str(exc))
                if initial:
                    return refusal
                self.broker.refused(self, refusal, key=key, event_type="key.refused")
                wakes.append(now + timedelta(seconds=MATERIAL_RETRY))
                continue
            ended = view.grace_ended_through  # secure-keys revoke --version
            if before is not None and state.previous is None and before <= ended:
                self.broker.grace_ended(self, view, before)
            states[key] = state
            self.sent[key] = signature
            self.renew_at[key] = now + (decision.lease_expires_at - now) / 2
            wakes.append(self.renew_at[key])
        self.wake_at = next_wake(*wakes)
        if not states and not revoked:
            return None
        return StateMessage(
            seq=self._next_seq(),
            keys=states,
            revoked=tuple(revoked),
            heartbeat_seconds=self.broker.settings.heartbeat_seconds if initial else None,
        )

    async def _version(
        self, view: DeliveryKeyView, record: Any, held: int | None, expires: datetime | None
    ) -> VersionState:
        sealed = None
        if held != record.version:
            plaintext = await self.broker.material.plaintext(
                view, record.version, record.fingerprint
            )
            # On the loop: an X25519 agreement and an AEAD, a fraction of a millisecond,
            # less than a hop to a thread and back when the loop is busy.
            sealed = _seal_and_zero(
                self.recipient, plaintext, view.namespace, view.name, record.version
            )
            self.broker.delivered(self, view, record.version)
        return VersionState(record.version, record.fingerprint, expires, sealed)

    async def _key_state(
        self,
        view: DeliveryKeyView,
        lease: datetime,
        current: Any,
        previous: tuple[Any, datetime] | None,
    ) -> KeyState:
        held = self.held[view.name]
        cur = None if current is None else await self._version(view, current, held.current, None)
        prev = None
        if previous is not None:
            prev = await self._version(view, previous[0], held.previous, previous[1])
        self.held[view.name] = HeldVersions(
            None if cur is None else cur.version, None if prev is None else prev.version
        )
        return KeyState(
            file_name=view.file_name,
            format=view.format,
            env_name=view.env_name,
            mode=view.mode,
            current=cur,
            previous=prev,
            lease_expires_at=lease,
        )

    async def run(self, response: web.StreamResponse) -> None:
        heartbeat = self.broker.settings.heartbeat_seconds
        last_line = time.monotonic()
        while True:
            now_mono = time.monotonic()
            timeout = max(0.0, heartbeat - (now_mono - last_line))
            if self.wake_at is not None:
                until_wake = (self.wake_at - self.broker.now()).total_seconds()
                timeout = min(timeout, max(0.0, until_wake))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.poked.wait(), timeout)
            self.poked.clear()
            poked_at, self.poked_at = self.poked_at, None
            if self.broker.draining:
                await response.write(delivery.encode_message(ReconnectMessage("BrokerStopping")))
                return
            pod = self.broker.caches.pods.get(self.pod.namespace, self.pod.name)
            if pod is not None and pod.uid == self.pod.uid and not pod.terminating:
                dropped = [k for k in self.keys if k not in pod.keys]
                if dropped and len(dropped) < len(self.keys):
                    await self._drop(response, dropped)
                    last_line = time.monotonic()
            refusal = check_pod(
                pod, name=self.pod.name, uid=self.pod.uid, keys=self.keys
            ) or self.broker.check_account(self.identity)
            if refusal is not None or pod is None:
                refusal = refusal or Refusal("PodNotFound", "the pod is gone")
                self.broker.refused(self, refusal, key="", event_type="key.revoked")
                # Every key goes first (its files removed by push), then the stream ends.
                held = tuple(k for k in self.keys if self.sent.get(k) != _REVOKED)
                if held:
                    revoke = StateMessage(self._next_seq(), keys={}, revoked=held)
                    await response.write(delivery.encode_message(revoke))
                await response.write(
                    delivery.encode_message(ErrorMessage(refusal.reason, refusal.message))
                )
                return
            self.pod = pod
            message: Message | None = None
            state = await self.compute(self.broker.now(), initial=False)
            if isinstance(state, StateMessage):
                message = state
                if poked_at is not None:
                    metrics.PUSH_SECONDS.observe(time.monotonic() - poked_at)
            elif time.monotonic() - last_line >= heartbeat:
                message = HeartbeatMessage(self._next_seq(), self.broker.now())
            if message is not None:
                await response.write(delivery.encode_message(message))
                last_line = time.monotonic()
                if isinstance(message, StateMessage):
                    self.broker.on_streams_changed(self.pod.namespace)

    async def _drop(self, response: web.StreamResponse, dropped: list[str]) -> None:
        """Keys the pod no longer asks for: revoked by push, out of the session."""
        refusal = Refusal(
            "KeyNotRequested",
            f'pod "{self.pod.name}" no longer asks for ApiKey {", ".join(dropped)}',
        )
        for key in dropped:
            self.broker.refused(self, refusal, key=key, event_type="key.revoked")
        self.keys = tuple(k for k in self.keys if k not in dropped)
        for key in dropped:
            self.held.pop(key, None)
            self.sent.pop(key, None)
            self.renew_at.pop(key, None)
        message = StateMessage(self._next_seq(), keys={}, revoked=tuple(dropped))
        await response.write(delivery.encode_message(message))


def _seal_and_zero(
    recipient: Recipient, plaintext: bytearray, namespace: str, apikey: str, version: int
) -> str:
    try:
        return delivery.seal_for_sidecar(
            recipient, plaintext, namespace=namespace, apikey=apikey, version=version
        )
    finally:
        zero(plaintext)


_STATUS = {
    "TokenMissing": 401,
    "TokenInvalid": 401,
    "TokenAudience": 401,
    "TokenNotServiceAccount": 401,
    "TokenNotPodBound": 401,
    "TokenReviewFailed": 503,
    "RateLimited": 429,
    "BadRequest": 400,
    "BrokerNotReady": 503,
    "KmsUnavailable": 503,
    "SecretReadFailed": 503,
    "ControllerKeysUnavailable": 503,
    "BlobMissing": 503,
    "BrokerStopping": 503,
}


class _Stages:
    """Milliseconds spent in each stage of a stream's first delivery, for its
    ``broker.stream`` log line (``bench/delivery.py`` summarises them)."""

    __slots__ = ("_at", "_durations", "_started")

    def __init__(self) -> None:
        self._started = self._at = time.perf_counter()
        self._durations: dict[str, float] = {}

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self._durations[f"{stage}_ms"] = round((now - self._at) * 1000, 3)
        self._at = now

    def fields(self) -> dict[str, float]:
        return {**self._durations, "total_ms": round((self._at - self._started) * 1000, 3)}


class Broker:
    """The stream endpoint's state: caches, sessions by namespace, and the edges."""

    def __init__(
        self,
        reviewer: TokenReviewer,
        material: MaterialSource,
        audit: AuditLog,
        events: PodEvents,
        *,
        settings: BrokerSettings | None = None,
        limits: RateLimits | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.reviewer = reviewer
        self.material = material
        self.audit = audit
        self.events = events
        self.settings = settings or BrokerSettings()
        self.limits = limits or RateLimits()
        self.now = now
        self.sessions: dict[str, set[Session]] = {}
        self.caches = BrokerCaches(self.changed, self.account_changed)
        self.draining = False
        """Set by ``drain``: new streams are refused, open ones told to reconnect."""
        self.ready = True
        """False until the audit key is available (``server`` opens it at start)."""
        self.start_task: asyncio.Task[None] | None = None
        self.on_streams_changed: Callable[[str], None] = lambda _namespace: None
        self.rollout: Any = None
        """The rollout tracker, if the process runs one (``server`` wires it)."""
        """Called with a namespace whose streams or watched objects changed (the rollout
        tracker, ``broker/rollout.py``)."""

    def changed(self, namespace: str) -> None:
        for session in self.sessions.get(namespace, ()):
            session.poke()
        self.on_streams_changed(namespace)

    def account_changed(self, namespace: str, name: str) -> None:
        """A ServiceAccount deleted or replaced: its cached TokenReviews go (its streams
        are poked by ``changed`` and end at their next look)."""
        dropped = self.reviewer.forget(namespace, name)
        _log.info("broker.account_changed", namespace=namespace, name=name, reviews=dropped)

    def check_account(self, identity: TokenIdentity) -> Refusal | None:
        uid = self.caches.accounts.get(identity.namespace, identity.service_account)
        return check_account(
            uid, name=identity.service_account, token_uid=identity.service_account_uid
        )

    async def drain(self, timeout: float) -> None:
        """Refuse new streams, tell every open one to reconnect (to another replica),
        and wait up to ``timeout`` seconds for them to end."""
        self.draining = True
        open_sessions = [s for bucket in self.sessions.values() for s in bucket]
        for session in open_sessions:
            session.poke()
        deadline = time.monotonic() + timeout
        while any(self.sessions.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        _log.info("broker.drained", streams=len(open_sessions))

    # -- audit helpers ---------------------------------------------------------------
    def refused(self, session: Session, refusal: Refusal, *, key: str, event_type: str) -> None:
        self.audit_refusal(
            refusal,
            identity=session.identity,
            key=key,
            ip=session.ip,
            user_agent=session.user_agent,
            event_type=event_type,
        )
        self.events.denied(session.pod_ref, refusal.reason, refusal.message)

    def audit_refusal(
        self,
        refusal: Refusal,
        *,
        identity: TokenIdentity | None,
        key: str,
        ip: str,
        user_agent: str,
        event_type: str = "key.refused",
        keys: Iterable[str] = (),
    ) -> None:
        metrics.BROKER_REFUSALS.labels(refusal.reason).inc()
        namespace = identity.namespace if identity is not None else ""
        if not self.ready:
            # No audit key yet: the refusal (BrokerNotReady) is in the log, unchained.
            _log.info("broker.refused_unaudited", reason=refusal.reason)
            return
        self.audit.record(
            event_type=event_type,
            user_id=identity.user if identity is not None else "",
            key_id=f"{namespace}/{key}" if key else ",".join(f"{namespace}/{k}" for k in keys),
            result="denied",
            ip_address=ip,
            user_agent=user_agent,
            session_id=identity.pod_uid if identity is not None else "",
            context={
                "reason": refusal.reason,
                "message": refusal.message,
                "pod": identity.pod_name if identity is not None else "",
            },
        )

    def delivered(self, session: Session, view: DeliveryKeyView, version: int) -> None:
        metrics.BROKER_DELIVERIES.inc()
        self.audit.record(
            event_type="key.delivered",
            user_id=session.identity.user,
            key_id=f"{view.namespace}/{view.name}@{version}",
            result="success",
            ip_address=session.ip,
            user_agent=session.user_agent,
            session_id=session.identity.pod_uid,
            context={"pod": session.pod.name},
        )
        self.events.delivered(session.pod_ref, view.name, version)

    def grace_ended(self, session: Session, view: DeliveryKeyView, version: int) -> None:
        """``.previous`` removed by push from one pod because its grace was ended."""
        self.audit.record(
            event_type="key.grace_ended",
            user_id=session.identity.user,
            key_id=f"{view.namespace}/{view.name}@{version}",
            result="success",
            ip_address=session.ip,
            user_agent=session.user_agent,
            session_id=session.identity.pod_uid,
            context={"pod": session.pod.name, "graceEndedThrough": view.grace_ended_through},
        )

    # -- the endpoint --------------------------------------------------------------------
    def _refuse(
        self,
        refusal: Refusal,
        *,
        identity: TokenIdentity | None,
        request: web.Request,
        keys: Iterable[str] = (),
        retry_after: float | None = None,
        pod: RunningPod | None = None,
    ) -> web.Response:
        self.audit_refusal(
            refusal,
            identity=identity,
            key="",
            keys=keys,
            ip=request.remote or "",
            user_agent=request.headers.get("User-Agent", ""),
        )
        if pod is not None:
            self.events.denied(
                {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
                refusal.reason,
                refusal.message,
            )
        _log.info(
            "broker.refused",
            reason=refusal.reason,
            namespace=identity.namespace if identity else None,
            pod=identity.pod_name if identity else None,
        )
        headers = {}
        if retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        body = delivery.Refusal(refusal.reason, refusal.message).to_json()
        return web.Response(
            status=_STATUS.get(refusal.reason, 403),
            body=body,
            content_type="application/json",
            headers=headers,
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.draining:
            return self._refuse(
                Refusal("BrokerStopping", "this broker is shutting down; connect again"),
                identity=None,
                request=request,
                retry_after=1,
            )
        if not self.caches.synced or not self.ready:
            return self._refuse(
                Refusal("BrokerNotReady", "the broker's caches are not synced yet"),
                identity=None,
                request=request,
                retry_after=1,
            )
        clock = _Stages()
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        result, reviewed = await self.reviewer.review_noting(token)
        del token, header
        clock.mark("review")
        if isinstance(result, TokenRejected):
            return self._refuse(
                Refusal(result.reason, result.message), identity=None, request=request
            )
        identity = result
        limited = self.limits.check(identity)
        if limited is not None:
            scope, wait = limited
            return self._refuse(
                Refusal("RateLimited", f"too many stream requests for this {scope}"),
                identity=identity,
                request=request,
                retry_after=wait,
            )
        body = await self._read_body(request)
        if isinstance(body, Refusal):
            return self._refuse(body, identity=identity, request=request)
        parsed = body
        clock.mark("body")
        pod = await self._pod(identity)
        keys: tuple[str, ...] = parsed.keys
        unasked: tuple[str, ...] = ()
        if pod is not None and pod.uid == identity.pod_uid:
            # A sidecar started before a key was taken out of the pod's annotation asks
            # for it on every reconnect: it gets the others, and that one revoked. A
            # request for no key the pod asks for is refused (KeyNotRequested).
            asked = tuple(k for k in keys if k in pod.keys)
            if asked:
                keys, unasked = asked, tuple(k for k in keys if k not in pod.keys)
        refusal = check_pod(
            pod, name=identity.pod_name, uid=identity.pod_uid, keys=keys
        ) or self.check_account(identity)
        if refusal is not None or pod is None:
            refusal = refusal or Refusal("PodNotFound", "the pod is gone")
            return self._refuse(
                refusal,
                identity=identity,
                request=request,
                keys=parsed.keys,
                pod=pod if pod is not None and pod.uid == identity.pod_uid else None,
            )
        if unasked:
            parsed = StreamRequest(keys, parsed.recipient, parsed.have)
        session = Session(
            self, identity, pod, parsed, request.remote or "", request.headers.get("User-Agent", "")
        )
        bucket = self.sessions.setdefault(pod.namespace, set())
        bucket.add(session)
        metrics.BROKER_STREAMS.inc()
        clock.mark("pod")
        try:
            first = await session.compute(self.now(), initial=True)
            clock.mark("compute")
            if isinstance(first, Refusal):
                return self._refuse(
                    first,
                    identity=identity,
                    request=request,
                    keys=parsed.keys,
                    pod=pod,
                    retry_after=MATERIAL_RETRY if _STATUS.get(first.reason) == 503 else None,
                )
            response = web.StreamResponse(headers={"Content-Type": delivery.CONTENT_TYPE})
            await response.prepare(request)
            if first is None:  # unreachable: a first state always has every key
                first = StateMessage(seq=1, keys={})
            if unasked:
                first = dataclasses.replace(first, revoked=unasked)
            await response.write(delivery.encode_message(first))
            clock.mark("write")
            self.on_streams_changed(pod.namespace)
            _log.info(
                "broker.stream",
                namespace=pod.namespace,
                pod=pod.name,
                keys=list(parsed.keys),
                reviewed=reviewed,
                **clock.fields(),
            )
            with contextlib.suppress(ConnectionResetError):
                await session.run(response)
            return response
        finally:
            bucket.discard(session)
            if not bucket:
                self.sessions.pop(pod.namespace, None)
            metrics.BROKER_STREAMS.dec()
            self.on_streams_changed(pod.namespace)

    async def _read_body(self, request: web.Request) -> StreamRequest | Refusal:
        """The request body, parsed (``core.delivery``), or why it is refused (400)."""
        if request.content_length is not None and request.content_length > self.settings.max_body:
            return Refusal("BadRequest", "the body is too large")
        try:
            return delivery.parse_stream_request(
                await request.content.read(self.settings.max_body + 1)
            )
        except ProtocolError as exc:
            return Refusal("BadRequest", str(exc))

    async def _pod(self, identity: TokenIdentity) -> RunningPod | None:
        deadline = time.monotonic() + POD_WAIT
        while True:
            pod = self.caches.pods.get(identity.namespace, identity.pod_name)
            if (pod is not None and pod.uid == identity.pod_uid) or time.monotonic() >= deadline:
                return pod
            await asyncio.sleep(0.1)
