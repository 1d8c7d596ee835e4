"""Owns token authentication for the broker: a TokenReview per unseen token, cached.

The sidecar presents its pod's projected ServiceAccount token (audience
``securekeys.io``). ``TokenReviewer.review`` asks the API server (``TokenReview`` with
that audience) and returns a ``TokenIdentity`` (the ServiceAccount and the pod the token
is bound to, from ``user.extra``) or a ``TokenRejected`` with a reason.

Results are cached by the SHA-256 of the token, never the token itself: a success for at
most ``ttl`` seconds (and never past the token's own expiry, which the API server
checks anyway on the next review), a rejection for ``negative_ttl`` seconds, so a sidecar
looping on a bad token costs one review per interval. ``forget`` drops every success of
one ServiceAccount at once: the broker calls it when the ServiceAccount is deleted or
replaced, so a stolen token is asked about again (and refused) at its next use. The
token is never logged, put in an exception message or kept beyond the call.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from secure_keys.core.delivery import AUDIENCE
from secure_keys.kube.client import ApiError, JsonObject, KubeApi

_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"
TOKENREVIEWS_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


@dataclass(frozen=True, slots=True)
class TokenIdentity:
    namespace: str
    service_account: str
    pod_name: str
    pod_uid: str
    service_account_uid: str = ""
    """The ServiceAccount's uid (the review's ``user.uid``): a ServiceAccount deleted and
    created again under the same name is another one."""

    @property
    def user(self) -> str:
        return f"{_SA_PREFIX}{self.namespace}:{self.service_account}"


@dataclass(frozen=True, slots=True)
class TokenRejected:
    reason: str
    """TokenMissing, TokenInvalid, TokenAudience, TokenNotServiceAccount, TokenNotPodBound,
    or TokenReviewFailed (the API server could not be asked: retry)."""
    message: str


class TokenReviewApi(Protocol):
    async def review(self, token: str, audience: str) -> JsonObject: ...


class KubeTokenReviews:
    """``TokenReviewApi`` over our Kubernetes client (``create`` on tokenreviews)."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def review(self, token: str, audience: str) -> JsonObject:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": [audience]},
        }
        return await self._api.request("POST", TOKENREVIEWS_PATH, body=body)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def interpret(review: JsonObject, audience: str = AUDIENCE) -> TokenIdentity | TokenRejected:
    """A TokenReview's status -> identity or rejection. Pure."""
    status: dict[str, Any] = review.get("status") or {}
    if not status.get("authenticated"):
        # The API server's error text is about the token's validity, not its content.
        return TokenRejected(
            "TokenInvalid", "the token is invalid, expired or not for this audience"
        )
    if audience not in (status.get("audiences") or []):
        return TokenRejected("TokenAudience", f"the token is not for audience {audience}")
    user = status.get("user") or {}
    username = str(user.get("username") or "")
    parts = username.split(":")
    if not username.startswith(_SA_PREFIX) or len(parts) != 4:
        return TokenRejected("TokenNotServiceAccount", "the token is not a ServiceAccount's")
    extra = user.get("extra") or {}
    names, uids = extra.get(_POD_NAME) or [], extra.get(_POD_UID) or []
    if len(names) != 1 or len(uids) != 1:
        return TokenRejected("TokenNotPodBound", "the token is not bound to a pod")
    account_uid = user.get("uid")
    return TokenIdentity(
        parts[2],
        parts[3],
        str(names[0]),
        str(uids[0]),
        account_uid if isinstance(account_uid, str) else "",
    )


class TokenReviewer:
    """TokenReviews with a bounded cache keyed by the token's SHA-256."""

    def __init__(
        self,
        api: TokenReviewApi,
        *,
        ttl: float = 60.0,
        negative_ttl: float = 5.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self._ttl, self._negative_ttl = ttl, negative_ttl
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[float, TokenIdentity | TokenRejected]] = OrderedDict()
        self.observe = observe
        """Called with ``hit``, ``review`` or ``error`` on every lookup (for metrics)."""

    def _note(self, what: str) -> None:
        if self.observe is not None:
            self.observe(what)

    def forget(self, namespace: str, service_account: str) -> int:
        """Drop the cached successes of this ServiceAccount; returns how many."""
        gone = [
            digest
            for digest, (_, result) in self._cache.items()
            if isinstance(result, TokenIdentity)
            and result.namespace == namespace
            and result.service_account == service_account
        ]
        for digest in gone:
            del self._cache[digest]
        return len(gone)

    async def review(self, token: str) -> TokenIdentity | TokenRejected:
        result, _asked = await self.review_noting(token)
        return result

    async def review_noting(self, token: str) -> tuple[TokenIdentity | TokenRejected, bool]:
        """``review``'s answer, and whether the API server was asked for it (False for a
        missing token or a cached answer still valid, counted as a hit)."""
        if not token:
            return TokenRejected("TokenMissing", "no bearer token"), False
        digest = token_digest(token)
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > self._clock():
            self._cache.move_to_end(digest)
            self._note("hit")
            return cached[1], False
        return await self._ask(token, digest), True

    async def _ask(self, token: str, digest: bytes) -> TokenIdentity | TokenRejected:
        try:
            review = await self._api.review(token, AUDIENCE)
        except ApiError as exc:
            self._note("error")
            return TokenRejected("TokenReviewFailed", f"TokenReview failed (HTTP {exc.status})")
        except OSError as exc:
            self._note("error")
            return TokenRejected("TokenReviewFailed", f"TokenReview failed ({type(exc).__name__})")
        self._note("review")
        result = interpret(review)
        ttl = self._ttl if isinstance(result, TokenIdentity) else self._negative_ttl
        self._cache[digest] = (self._clock() + ttl, result)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return result
