"""The access webhook's edge: ``POST /v1/access``, one KeyAccessReview answered per call.

The API server calls it for a CREATE of ``keyaccessreviews`` (the chart's
MutatingWebhookConfiguration matches that resource only). In order:

1. decode the AdmissionReview (``decode_review``; not one: HTTP 400);
2. refuse the admission (the object is not created) unless it is a dry-run CREATE of a
   KeyAccessReview: a review is never stored (the chart's ValidatingAdmissionPolicy
   refuses it too);
3. refuse (HTTP 503 in the admission status, so the client may retry) until the broker's
   caches are synced and its keys are open; rate-limit per user (429);
4. parse the spec (``core.accessreview``; malformed: admission refused, 400, audited),
   and check the caller's proof (``proof.py``): the caller must hold the credential the
   API server authenticated, since anyone who reaches the gateway could post a forged
   AdmissionReview naming any user;
5. decide (``decide``), open the granted version (``broker.material``), seal it to the
   caller's ephemeral key and zero the plaintext; for a granted ``rotate``, set the
   ApiKey's rotate-requested-at annotation (``RequestRotation``: the gateway's own
   ServiceAccount, which a ValidatingAdmissionPolicy lets change that annotation only);
6. write one chained audit record and an aggregated Event on the ApiKey, and answer with
   a JSON patch that sets ``status``. Grants and refusals alike are *admitted*: the
   answer is the status, as with a SelfSubjectAccessReview.

Nothing here logs or raises with material: the plaintext lives in one ``bytearray``
between ``MaterialSource.plaintext`` and the seal, and is zeroed in ``finally``.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiohttp import web

from secure_keys.core import accessreview as wire
from secure_keys.core.errors import InvalidEnvelope, KmsError, SealedSourceInvalid
from secure_keys.core.memory import zero
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.core.stamps import format_stamp, rotation_request
from secure_keys.gateway.access.decide import (
    Caller,
    ReadGrant,
    RotateGrant,
    decide_list,
    decide_read,
    decide_rotate,
)
from secure_keys.gateway.access.mfa import MfaStore
from secure_keys.gateway.access.mfa import secret_name as mfa_secret_name
from secure_keys.gateway.access.proof import ProofChecker
from secure_keys.gateway.access.tokens import DEFAULT_LIFETIME, AccessTokens, TokenRefused
from secure_keys.gateway.broker.audit import EventSink
from secure_keys.gateway.broker.limits import TokenBucket
from secure_keys.gateway.broker.material import MaterialUnavailable
from secure_keys.gateway.broker.policy import Refusal
from secure_keys.gateway.broker.stream import Broker
from secure_keys.gateway.webhook.review import API_VERSIONS, MAX_UID, compact_json, read_json
from secure_keys.kube import keysformat
from secure_keys.kube.client import ApiError

ACCESS_PATH = "/v1/access"
MAX_BODY = 256 * 1024
"""A review's spec is a few hundred bytes; the API server adds the envelope."""
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"

_log = structlog.get_logger("secure_keys.gateway.access")

POLICY_PENDING = "already requested"
"""In the message of the chart's gateway-rotate-only policy when it refuses a request
because a rotation is under way (tests/unit/dev/test_rotate_policy.py keeps them equal)."""

RequestRotation = Callable[[str, str, str], Awaitable[None]]
"""``(namespace, apikey, value)``: set the ApiKey's rotate-requested-at annotation to
``value`` (an ``ApiError`` when the API server refuses)."""


class NotAdmissionReview(ValueError):
    pass


@dataclass(frozen=True)
class ReviewRequest:
    """The parts of the AdmissionReview this endpoint reads, parsed once."""

    uid: str
    api_version: str
    operation: str
    dry_run: bool
    namespace: str
    group: str
    resource: str
    caller: Caller
    spec: object = field(repr=False)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _strings(value: object, limit: int = 256) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value[:limit] if isinstance(v, str))


def decode_review(body: bytes) -> ReviewRequest:
    try:
        document = read_json(body)
    except (ValueError, RecursionError):
        raise NotAdmissionReview("body is not JSON") from None
    if not isinstance(document, dict) or document.get("kind") != "AdmissionReview":
        raise NotAdmissionReview("not an AdmissionReview")
    api_version = document.get("apiVersion")
    request = document.get("request")
    if api_version not in API_VERSIONS or not isinstance(request, dict):
        raise NotAdmissionReview("not an admission.k8s.io/v1 AdmissionReview")
    uid = request.get("uid")
    if not isinstance(uid, str) or not uid or len(uid) > MAX_UID:
        raise NotAdmissionReview("AdmissionReview request has no uid")
    user = _dict(request.get("userInfo"))
    extra = _dict(user.get("extra"))
    credential = _strings(extra.get(CREDENTIAL_ID), 1)
    resource = _dict(request.get("resource"))
    obj = _dict(request.get("object"))
    username = user.get("username")
    return ReviewRequest(
        uid=uid,
        api_version=str(api_version),
        operation=str(request.get("operation") or ""),
        dry_run=request.get("dryRun") is True,
        namespace=str(request.get("namespace") or ""),
        group=str(resource.get("group") or ""),
        resource=str(resource.get("resource") or ""),
        caller=Caller(
            username=username if isinstance(username, str) else "",
            groups=_strings(user.get("groups")),
            credential_id=credential[0][:128] if credential else "",
        ),
        spec=obj.get("spec"),
    )


def _admission(
    review: ReviewRequest, *, status: Mapping[str, Any] | None, code: int = 200, message: str = ""
) -> bytes:
    """Admitted with ``status`` patched in, or (``status`` None) refused with ``message``."""
    response: dict[str, Any] = {"uid": review.uid, "allowed": status is not None}
    if status is not None:
        patch = [{"op": "add", "path": "/status", "value": dict(status)}]
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(compact_json(patch)).decode("ascii")
    else:
        response["status"] = {"code": code, "message": message[:1024]}
    return compact_json(
        {"apiVersion": review.api_version, "kind": "AdmissionReview", "response": response}
    )


# --- Events on the ApiKey ---------------------------------------------------------------


def apikey_event(
    namespace: str,
    name: str,
    uid: str,
    type_: str,
    reason: str,
    message: str,
    now: datetime,
    kind: str = "ApiKey",
) -> dict[str, Any]:
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": wire.API_VERSION if kind == "ApiKey" else "v1",
            "kind": kind,
            "name": name,
            "namespace": namespace,
            **({"uid": uid} if uid else {}),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "secure-keys-gateway"},
        "reportingComponent": "secure-keys-gateway",
        "reportingInstance": "secure-keys-gateway",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class KeyEvents:
    """Events on ApiKeys, aggregated: ``KeyRead`` once per key, version and user per
    ``interval``; ``RotationRequested`` once per key and user per ``interval``; Warning
    ``KeyReadDenied`` (``KeyRotateDenied``) once per key, user and reason per
    ``interval``. Fire-and-forget; a failure is logged, never raised."""

    def __init__(
        self,
        sink: EventSink | None,
        *,
        interval: float = 600.0,
        max_remembered: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sink, self._interval, self._max, self._clock = sink, interval, max_remembered, clock
        self._seen: OrderedDict[tuple[str, ...], float] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    def _first(self, key: tuple[str, ...]) -> bool:
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last < self._interval:
            return False
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return True

    def post(
        self,
        key: tuple[str, str, str],
        *,
        user: str,
        type_: str,
        reason: str,
        message: str,
        aggregate_on: str,
        kind: str = "ApiKey",
    ) -> None:
        namespace, name, uid = key
        if self._sink is None or not self._first((namespace, name, user, reason, aggregate_on)):
            return
        body = apikey_event(namespace, name, uid, type_, reason, message, datetime.now(UTC), kind)
        task = asyncio.get_running_loop().create_task(self._send(namespace, body))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, namespace: str, body: dict[str, Any]) -> None:
        try:
            await self._sink.create_event(namespace, body)  # type: ignore[union-attr]
        except Exception as exc:  # an Event is best effort
            _log.warning("event.failed", error=type(exc).__name__, reason=body["reason"])


# --- the endpoint -------------------------------------------------------------------------


@dataclass
class UserLimits:
    """A token bucket per user name: ``capacity`` reviews at once, ``rate`` per second."""

    capacity: float = 30
    rate: float = 5
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, user: str) -> float:
        if len(self._buckets) > 100_000:
            self._buckets.clear()  # bounded memory; a reset only forgives
        bucket = self._buckets.get(user)
        if bucket is None:
            bucket = self._buckets[user] = TokenBucket(self.capacity, self.rate, self.clock)
        return bucket.take()


@dataclass
class RecipientsSeen:
    """The recipient keys of the reviews this replica answered in the last ``window``
    seconds. A client makes a new key per review, so a repeat is a replay: someone who
    copied a review (an API server audit log at RequestResponse level holds its body)
    posting it straight to the gateway. The replay gets nothing it can open (the answer
    is sealed to that key), but it would write a grant into the caller's audit trail
    and, for a login, count the used code as a failure again: five replays locked the
    caller out. ``window`` covers a certificate proof's freshness (2 min) either side."""

    window: float = 240.0
    max_remembered: int = 100_000
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[bytes, float] = field(default_factory=OrderedDict)

    def first(self, key: bytes) -> bool:
        now = self.clock()
        while self._seen and (
            len(self._seen) >= self.max_remembered
            or now - next(iter(self._seen.values())) > self.window
        ):
            self._seen.popitem(last=False)
        if key in self._seen:
            return False
        self._seen[key] = now
        return True


class AccessReviews:
    """Answers KeyAccessReviews from the broker's caches and material source."""

    def __init__(
        self,
        broker: Broker,
        events: KeyEvents,
        *,
        limits: UserLimits | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        mfa: MfaStore | None = None,
        token_lifetime: timedelta = DEFAULT_LIFETIME,
        proofs: ProofChecker | None = None,
        rotations: RequestRotation | None = None,
    ) -> None:
        self.broker = broker
        self.rotations = rotations
        """Without one, every ``rotate`` review is refused (RotateUnavailable)."""
        self.events = events
        self.limits = limits or UserLimits()
        """Per user name *as sent from one peer address*: the limit is taken before the
        proof is checked, and an AdmissionReview posted straight to the gateway names any
        user it likes, so a bucket per user name alone let any pod keep that user
        rate-limited; the API server's calls come from its own address."""
        self.now = now
        self.mfa = mfa
        self.proofs = proofs
        """Checks the caller's own credential; without one every review is refused."""
        self.token_lifetime = token_lifetime
        self._tokens: AccessTokens | None = None
        self._cluster_key: RecipientPrivateKey | None = None
        self._keys_lock = asyncio.Lock()
        self.recipients = RecipientsSeen()

    async def tokens(self) -> AccessTokens:
        """The token issuer, keyed by the controller's fingerprint key (opened once)."""
        if self._tokens is None:
            root = await self.broker.material.fingerprint_key()
            self._tokens = AccessTokens(root, lifetime=self.token_lifetime)
        return self._tokens

    async def cluster_key(self) -> RecipientPrivateKey:
        """The controller's recipient private key, which opens what clients seal for the
        gateway (purpose ``access-request`` only), opened once under the default KMS."""
        async with self._keys_lock:
            if self._cluster_key is None:
                material = self.broker.material
                data = await material.controller_keys()

                def open_key() -> RecipientPrivateKey:
                    raw = keysformat.open_slot(
                        material.default_kms(),
                        material.controller_namespace,
                        keysformat.RECIPIENT_SLOT,
                        data,
                    )
                    try:
                        return RecipientPrivateKey.from_raw(raw)
                    finally:
                        zero(raw)

                try:
                    self._cluster_key = await material.run_off_loop(open_key)
                except (InvalidEnvelope, KmsError, ValueError) as exc:
                    raise MaterialUnavailable(
                        "ControllerKeysUnavailable",
                        f"the cluster's recipient key did not open ({type(exc).__name__})",
                        retry=True,
                    ) from None
            return self._cluster_key

    async def _open_request_secret(
        self,
        review: ReviewRequest,
        spec: wire.ReviewSpec,
        sealed: str,
        what: str,
        binding: str,
    ) -> bytearray | Refusal:
        if spec.recipient is None:
            return Refusal("BadRequest", f"a sealed {what} needs spec.recipientKey")
        try:
            key = await self.cluster_key()
        except MaterialUnavailable as exc:
            return Refusal(exc.reason, str(exc))
        try:
            return wire.open_request_secret(
                key, sealed, namespace=review.namespace, recipient=spec.recipient, binding=binding
            )
        except SealedSourceInvalid:
            return Refusal(
                "SealedInputInvalid",
                f"the sealed {what} does not open for this review (sealed to another key, "
                "for another review or namespace, or altered)",
            )

    async def _check_proof(self, review: ReviewRequest, spec: wire.ReviewSpec) -> Refusal | None:
        """The caller holds the credential ``userInfo`` names (``access/proof.py``): an
        AdmissionReview posted to the gateway by anyone but the API server gets nothing."""
        if self.proofs is None:
            return Refusal("ProofUnavailable", "this gateway cannot check callers")

        async def open_token(sealed: str, binding: str) -> bytearray | Refusal:
            return await self._open_request_secret(review, spec, sealed, "credential", binding)

        try:
            return await self.proofs.check(
                spec.proof,
                username=review.caller.username,
                namespace=review.namespace,
                spec=spec,
                open_token=open_token,
                now=self.now(),
            )
        except ApiError as exc:
            return Refusal("ProofUnchecked", f"the API server did not answer ({exc.status})")

    async def _caller(
        self, review: ReviewRequest, spec: wire.ReviewSpec
    ) -> tuple[ReviewRequest, str] | Refusal:
        """The review with ``caller.mfa`` set when it carries a valid token of its own
        caller (and the token's jti, the session); a token that does not verify refuses."""
        if not spec.sealed_token:
            return review, ""
        opened = await self._open_request_secret(
            review, spec, spec.sealed_token, "token", _bound(review, spec)
        )
        if isinstance(opened, Refusal):
            return opened
        try:
            token = opened.decode("ascii")
        except UnicodeDecodeError:
            return Refusal("TokenInvalid", "the access token is malformed")
        finally:
            zero(opened)
        tokens = await self.tokens()
        checked = tokens.verify(token, username=review.caller.username, now=self.now())
        if isinstance(checked, TokenRefused):
            return Refusal(checked.reason, checked.message)
        caller = dataclasses.replace(review.caller, mfa=True)
        return dataclasses.replace(review, caller=caller), checked.jti

    async def handle(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = await request.content.read(MAX_BODY + 1)
        if len(body) > MAX_BODY:
            return web.Response(status=413, text="body too large")
        try:
            review = decode_review(body)
        except NotAdmissionReview as exc:
            return web.Response(status=400, text=str(exc))
        answer, outcome = await self.answer(review, started, peer=request.remote or "")
        _log.info(
            "access",
            uid=review.uid,
            namespace=review.namespace,
            user=review.caller.username[:128],
            peer=request.remote or "",
            outcome=outcome,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return web.Response(body=answer, content_type="application/json")

    async def answer(
        self, review: ReviewRequest, started: float, *, peer: str = ""
    ) -> tuple[bytes, str]:
        """The AdmissionReview answer and a one-word outcome for the log line; ``peer``
        is the address the review came from (the API server's, unless forged)."""
        if (
            review.operation != "CREATE"
            or review.group != wire.GROUP
            or review.resource != wire.PLURAL
        ):
            return _admission(
                review, status=None, code=400, message="not a KeyAccessReview create"
            ), "not-a-review"
        if not review.dry_run:
            message = (
                "a KeyAccessReview is never stored: create it as a server-side dry run "
                "(dryRun=All; kubectl create --dry-run=server), as secure-keys does"
            )
            return _admission(review, status=None, code=400, message=message), "not-dry-run"
        if not review.caller.username:
            return _admission(
                review, status=None, code=401, message="no authenticated user"
            ), "anonymous"
        broker = self.broker
        if not broker.caches.synced or not broker.ready:
            return _admission(
                review, status=None, code=503, message="the gateway is not ready yet; try again"
            ), "not-ready"
        wait = self.limits.take(f"{peer} {review.caller.username}")
        if wait > 0:
            message = f"too many key access reviews for this user; try again in {wait:.0f} s"
            self._audit(review, None, Refusal("RateLimited", message), started, "read")
            return _admission(review, status=None, code=429, message=message), "rate-limited"
        try:
            spec = wire.parse_spec(review.spec)
        except wire.ReviewInvalid as exc:
            self._audit(review, None, Refusal("BadRequest", str(exc)), started, "read")
            return _admission(review, status=None, code=400, message=str(exc)), "bad-request"
        refusal = await self._check_proof(review, spec)
        if refusal is not None:
            # No Event: the user name is only what the unproven review claims.
            return self._refused(review, spec, refusal, started, event=False), refusal.reason
        if spec.recipient is not None and not self.recipients.first(spec.recipient.public_key):
            refusal = Refusal(
                "ReviewReplayed",
                "this review's recipientKey was used before: a client makes a new one per review",
            )
            return self._refused(review, spec, refusal, started, event=False), refusal.reason
        if spec.operation in wire.MFA_OPERATIONS:
            return await self._mfa(review, spec, started)
        checked = await self._caller(review, spec)
        if isinstance(checked, Refusal):
            return self._refused(review, spec, checked, started), checked.reason
        review, session = checked
        if session:
            review = dataclasses.replace(
                review, caller=dataclasses.replace(review.caller, credential_id=f"jti:{session}")
            )
        if spec.operation == "list":
            return self._list(review, spec, started), "listed"
        if spec.operation == "rotate":
            return await self._rotate(review, spec, started)
        return await self._read(review, spec, started)

    async def _mfa(
        self, review: ReviewRequest, spec: wire.ReviewSpec, started: float
    ) -> tuple[bytes, str]:
        """enroll, confirm, login: each audited, each answered in status."""
        action = spec.operation
        recipient = spec.recipient
        if self.mfa is None or recipient is None:
            refusal = Refusal("MfaUnavailable", "this gateway has no MFA store")
            return self._refused(review, spec, refusal, started), refusal.reason
        username = review.caller.username
        if action == "enroll":
            uri = await self.mfa.enroll(username)
            if isinstance(uri, Refusal):
                return self._refused(review, spec, uri, started), uri.reason
            encoded = bytearray(uri.encode())
            del uri
            try:
                sealed = wire.seal_secret(
                    recipient, encoded, namespace=review.namespace, operation="enroll"
                )
            finally:
                zero(encoded)
            record = self._audit(review, spec, None, started, "enroll")
            answer = wire.ReviewAnswer(
                True,
                "EnrollmentStarted",
                "scan the URI, then confirm with a code",
                audit_id=_audit_id(record),
                secret=wire.AnsweredSecret(sealed),
            )
            return _admission(review, status=answer.to_json()), "enroll"
        opened = await self._open_request_secret(
            review, spec, spec.sealed_code, "code", _bound(review, spec)
        )
        if isinstance(opened, Refusal):
            return self._refused(review, spec, opened, started), opened.reason
        try:
            code = opened.decode("ascii", errors="replace")
        finally:
            zero(opened)
        checked = await self.mfa.check_code(
            username, code, self.now(), confirming=action == "confirm"
        )
        del code
        if checked.refusal is not None:
            if checked.locked:
                self._locked_event(review)
            return self._refused(review, spec, checked.refusal, started), checked.refusal.reason
        if action == "confirm":
            record = self._audit(review, spec, None, started, "confirm")
            answer = wire.ReviewAnswer(
                True,
                "Enrolled",
                "MFA enrolled: log in with `secure-keys login`",
                audit_id=_audit_id(record),
            )
            return _admission(review, status=answer.to_json()), "enrolled"
        tokens = await self.tokens()
        token, claims = tokens.issue(username, review.caller.groups, self.now())
        encoded = bytearray(token.encode())
        del token
        try:
            sealed = wire.seal_secret(
                recipient, encoded, namespace=review.namespace, operation="login"
            )
        finally:
            zero(encoded)
        login = dataclasses.replace(
            review,
            caller=dataclasses.replace(review.caller, mfa=True, credential_id=f"jti:{claims.jti}"),
        )
        record = self._audit(login, spec, None, started, "login")
        answer = wire.ReviewAnswer(
            True,
            "LoggedIn",
            f"an access token until {format_stamp(claims.expires_at)}",
            audit_id=_audit_id(record),
            secret=wire.AnsweredSecret(sealed, format_stamp(claims.expires_at)),
        )
        return _admission(review, status=answer.to_json()), "login"

    def _locked_event(self, review: ReviewRequest) -> None:
        namespace = self.broker.material.controller_namespace
        self.events.post(
            (namespace, mfa_secret_name(review.caller.username), ""),
            user=review.caller.username,
            type_="Warning",
            reason="MfaLocked",
            message=f"{review.caller.describe()}: too many wrong TOTP codes, locked out",
            aggregate_on="locked",
            kind="Secret",
        )

    def _asked(self, namespace: str) -> frozenset[str]:
        """The keys some running pod of ``namespace`` asks for."""
        pods = self.broker.caches.pods.in_namespace(namespace).values()
        return frozenset(key for pod in pods for key in pod.keys)

    def _list(self, review: ReviewRequest, spec: wire.ReviewSpec, started: float) -> bytes:
        caches = self.broker.caches
        keys = decide_list(
            review.caller,
            review.namespace,
            caches.apikeys.in_namespace(review.namespace),
            caches.roles.in_namespace(review.namespace).values(),
            only=spec.key,
            asked=self._asked(review.namespace),
        )
        record = self._audit(review, spec, None, started, "list", listed=len(keys))
        answer = wire.ReviewAnswer(
            True, "Listed", f"{len(keys)} keys", audit_id=_audit_id(record), keys=keys
        )
        return _admission(review, status=answer.to_json())

    async def _rotate(
        self, review: ReviewRequest, spec: wire.ReviewSpec, started: float
    ) -> tuple[bytes, str]:
        now = self.now()
        try:
            tag_key = await self.broker.material.fingerprint_key()
        except MaterialUnavailable as exc:
            return self._refused(review, spec, Refusal(exc.reason, str(exc)), started), exc.reason
        decision = decide_rotate(
            review.caller,
            spec,
            review.namespace,
            self.broker.caches.apikeys.in_namespace(review.namespace),
            self.broker.caches.roles.in_namespace(review.namespace).values(),
            now,
            tag_key,
        )
        if isinstance(decision, Refusal):
            return self._refused(review, spec, decision, started), decision.reason
        if self.rotations is None:
            refusal = Refusal("RotateUnavailable", "this gateway cannot request rotations")
            return self._refused(review, spec, refusal, started), refusal.reason
        value = rotation_request(now, role=True)
        view = decision.view
        try:
            await self.rotations(view.namespace, view.name, value)
        except ApiError as exc:
            refusal = Refusal(
                "RotateFailed",
                f"the API server refused the gateway's rotation request ({exc.status}); try again",
            )
            if exc.status == 403 and POLICY_PENDING in exc.message:
                # The chart's policy saw a request pending on the stored object (another
                # replica's, racing past this cache's view).
                refusal = Refusal("RotationPending", exc.message[:200])
            return self._refused(review, spec, refusal, started), refusal.reason
        except Exception as exc:  # the patch may have landed: audit it either way
            refusal = Refusal(
                "RotateFailed",
                f"the gateway's rotation request did not complete ({type(exc).__name__}); it "
                "may or may not have been made: see status.lastRotationRequest",
            )
            return self._refused(review, spec, refusal, started), refusal.reason
        record = self._audit(review, spec, None, started, "rotate", rotated=decision)
        self.events.post(
            (view.namespace, view.name, view.uid),
            user=review.caller.username,
            type_="Normal",
            reason="RotationRequested",
            message=f"{review.caller.describe()} requested a rotation",
            aggregate_on="rotate",
        )
        answer = wire.ReviewAnswer(
            True,
            "RotationRequested",
            f"granted by KeyRole {', '.join(decision.roles)}",
            audit_id=_audit_id(record),
            rotation_request=value,
        )
        return _admission(review, status=answer.to_json()), "rotation-requested"

    async def _read(
        self, review: ReviewRequest, spec: wire.ReviewSpec, started: float
    ) -> tuple[bytes, str]:
        broker = self.broker
        now = self.now()
        try:
            tag_key = await broker.material.fingerprint_key()
        except MaterialUnavailable as exc:
            return self._refused(review, spec, Refusal(exc.reason, str(exc)), started), exc.reason
        decision = decide_read(
            review.caller,
            spec,
            review.namespace,
            broker.caches.apikeys.in_namespace(review.namespace),
            broker.caches.roles.in_namespace(review.namespace).values(),
            now,
            tag_key,
        )
        if isinstance(decision, Refusal):
            return self._refused(review, spec, decision, started), decision.reason
        try:
            sealed = await self._sealed(decision, spec)
        except MaterialUnavailable as exc:
            return self._refused(review, spec, Refusal(exc.reason, str(exc)), started), exc.reason
        view, version = decision.view, decision.version
        record = self._audit(review, spec, None, started, "read", grant=decision)
        self.events.post(
            (view.namespace, view.name, view.uid),
            user=review.caller.username,
            type_="Normal",
            reason="KeyRead",
            message=f"{review.caller.describe()} read version {version.version}",
            aggregate_on=str(version.version),
        )
        answer = wire.ReviewAnswer(
            True,
            "Granted",
            f"granted by KeyRole {', '.join(decision.roles)}",
            audit_id=_audit_id(record),
            key=wire.AnsweredKey(
                name=view.name,
                version=version.version,
                fingerprint=version.fingerprint,
                format=view.format,
                env_name=view.env_name or "",
                sealed=sealed,
                expires_at=format_stamp(decision.expires_at),
            ),
        )
        return _admission(review, status=answer.to_json()), "granted"

    async def _sealed(self, grant: ReadGrant, spec: wire.ReviewSpec) -> str:
        view, version = grant.view, grant.version
        recipient = spec.recipient
        if recipient is None:  # parse_spec gives every read one
            raise MaterialUnavailable("BadRequest", "no recipient key", retry=False)
        plaintext = await self.broker.material.plaintext(view, version.version, version.fingerprint)
        try:
            result: str = await self.broker.material.run_off_loop(
                lambda: wire.seal_answer(
                    recipient,
                    plaintext,
                    namespace=view.namespace,
                    apikey=view.name,
                    version=version.version,
                )
            )
            return result
        finally:
            zero(plaintext)

    def _refused(
        self,
        review: ReviewRequest,
        spec: wire.ReviewSpec,
        refusal: Refusal,
        started: float,
        *,
        event: bool = True,
    ) -> bytes:
        record = self._audit(review, spec, refusal, started, spec.operation)
        view = (
            self.broker.caches.apikeys.get(review.namespace, spec.key)
            if spec.key and event
            else None
        )
        if view is not None:
            self.events.post(
                (view.namespace, view.name, view.uid),
                user=review.caller.username,
                type_="Warning",
                reason="KeyRotateDenied" if spec.operation == "rotate" else "KeyReadDenied",
                message=f"{review.caller.describe()}: {refusal.reason}",
                aggregate_on=refusal.reason,
            )
        answer = wire.ReviewAnswer(False, refusal.reason, refusal.message, _audit_id(record))
        return _admission(review, status=answer.to_json())

    def _audit(
        self,
        review: ReviewRequest,
        spec: wire.ReviewSpec | None,
        refusal: Refusal | None,
        started: float,
        action: str,
        *,
        grant: ReadGrant | None = None,
        listed: int | None = None,
        rotated: RotateGrant | None = None,
    ) -> dict[str, Any] | None:
        if not self.broker.ready:
            _log.info("access.unaudited", reason=refusal.reason if refusal else "")
            return None
        key = spec.key if spec is not None else ""
        key_id = f"{review.namespace}/{key}" if key else review.namespace
        if grant is not None:
            key_id += f"@{grant.version.version}"
        used = grant or rotated
        context: dict[str, Any] = {
            "mfa_used": used.mfa_used if used is not None else review.caller.mfa,
            "access_duration_ms": round((time.perf_counter() - started) * 1000, 3),
            "review_uid": review.uid,
            "groups": list(review.caller.groups[:16]),
            "via": "kube-apiserver",
        }
        if refusal is not None:
            context["reason"] = refusal.reason
            context["message"] = refusal.message[:512]
        if used is not None:
            context["roles"] = list(used.roles)
        if grant is not None:
            context["expires_at"] = format_stamp(grant.expires_at)
        if listed is not None:
            context["listed"] = listed
        event_type = _EVENT_TYPES.get(action, ("key.access", "key.refused"))[refusal is not None]
        return self.broker.audit.record(
            event_type=event_type,
            user_id=review.caller.username[:256],
            key_id=key_id,
            result="denied" if refusal is not None else "success",
            ip_address="",
            user_agent=(spec.client if spec is not None else "")[:64],
            session_id=review.caller.credential_id or review.uid,
            context=context,
            action=action,
        )


_EVENT_TYPES = {
    "read": ("key.read", "key.refused"),
    "list": ("key.listed", "key.refused"),
    "rotate": ("key.rotation_requested", "key.refused"),
    "enroll": ("mfa.enroll_started", "mfa.enroll_refused"),
    "confirm": ("mfa.enrolled", "mfa.code_refused"),
    "login": ("auth.login", "auth.code_refused"),
}
"""(success, refusal) event types per action, for the audit record."""


def _bound(review: ReviewRequest, spec: wire.ReviewSpec) -> str:
    """What a review's sealed token or code is bound to: the proof's own binding (the
    proof is checked before either is opened), so one lifted from a copied review into
    another (another operation or key, a rotate needing no answer) does not open."""
    if spec.proof is None:
        return "proof-missing"  # opens nothing; the proof check refused this already
    return wire.proof_binding(review.namespace, spec, spec.proof.issued_at)


def _audit_id(record: Mapping[str, Any] | None) -> str:
    return str(record.get("chain", "")) if record is not None else ""
