"""The key broker over a real socket: ``POST /v1/stream`` with the real pipeline (policy,
TokenReview cache, blob checks, envelope opening under a real local KMS, sealing to the
sidecar's key, push on cache changes, audit), fed by the caches' own ``apply``. Only the
API server is replaced: TokenReview answers and Secret reads come from tables."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from secure_keys.core import delivery, envelope
from secure_keys.core.auditchain import AuditChain, verify
from secure_keys.core.binding import KeyBinding
from secure_keys.core.delivery import HeldVersions, StateMessage, StreamRequest
from secure_keys.core.fingerprint import fingerprint
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.integrity import archived_tag, blob_tag
from secure_keys.core.kms.local import LocalKeyring, LocalKms
from secure_keys.core.kms.observed import ObservedKms
from secure_keys.core.kms.registry import KmsConfig, KmsRegistry
from secure_keys.core.kms.settings import KmsSettings
from secure_keys.core.sealing import RecipientPrivateKey
from secure_keys.core.stamps import format_stamp
from secure_keys.gateway.broker.audit import AuditLog, PodEvents
from secure_keys.gateway.broker.limits import RateLimits
from secure_keys.gateway.broker.material import CachedProviders, MaterialSource
from secure_keys.gateway.broker.stream import Broker
from secure_keys.gateway.broker.tokenreview import TokenRejected, TokenReviewer
from secure_keys.gateway.server import build_app
from secure_keys.gateway.webhook.caches import GatewayCaches
from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.kube.client import JsonObject
from secure_keys.kube.informer import LISTED, InformerEvent

NS = "payments"
CTRL_NS = "secure-keys-system"
KEY_UID = "uid-stripe"
POD_UID = "uid-pod-a"
SA_UID = "uid-sa-app"
CANARY = b"sk_live_CANARY_7f3a9c"
CANARY2 = b"sk_live_CANARY_second_2b8e"
PASSWORD = "broker-test-password"
NOW = datetime.now(UTC)

_keyring = LocalKeyring.create("default", PASSWORD, iterations=MIN_ITERATIONS)
_FK = bytearray(range(32))


KMS = ObservedKms(LocalKms.unlock(_keyring, [PASSWORD]))


def _seal(plaintext: bytes, namespace: str, name: str, version: int) -> bytes:
    return envelope.seal(plaintext, KeyBinding(namespace, name, version), KMS).to_bytes()


def apikey(versions: list[tuple[int, str, bytes, datetime | None]], current: int) -> JsonObject:
    return {
        "metadata": {"name": "stripe-live", "namespace": NS, "uid": KEY_UID},
        "spec": {"source": {}, "delivery": {"format": "raw"}, "rotation": {"gracePeriod": "1h"}},
        "status": {
            "currentVersion": current,
            "versions": [
                {
                    "version": v,
                    "state": state,
                    "fingerprint": fingerprint(
                        _FK, pt, namespace=NS, name="stripe-live", uid=KEY_UID
                    ),
                    **(
                        {
                            "archivedAt": format_stamp(at),
                            "archiveTag": archived_tag(_FK, KEY_UID, v, format_stamp(at)),
                        }
                        if at
                        else {}
                    ),
                }
                for v, state, pt, at in versions
            ],
        },
    }


def blob_secret(entries: dict[int, bytes]) -> JsonObject:
    sealed = {v: _seal(pt, NS, "stripe-live", v) for v, pt in entries.items()}
    return {
        "type": "securekeys.io/sealed-versions",
        "metadata": {
            "name": "stripe-live.sealed",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "secure-keys"},
            "ownerReferences": [{"kind": "ApiKey", "uid": KEY_UID, "controller": True}],
            "annotations": {
                "securekeys.io/blob-tags": json.dumps(
                    {f"v{v}": blob_tag(_FK, KEY_UID, v, b) for v, b in sealed.items()}
                )
            },
        },
        "data": {f"v{v}": base64.b64encode(b).decode() for v, b in sealed.items()},
    }


def injected_pod(name: str = "web-a", uid: str = POD_UID, keys: str = "stripe-live") -> JsonObject:
    """A pod the webhook injected, as the broker reads it (not one to admit: see
    helpers.pod)."""
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": uid,
            "annotations": {"securekeys.io/keys": keys, "securekeys.io/injected": "native"},
        },
        "spec": {"serviceAccountName": "app"},
    }


def account(uid: str = SA_UID) -> JsonObject:
    return {"metadata": {"name": "app", "namespace": NS, "uid": uid}}


def keyrole(name: str = "readers", access: dict[str, Any] | None = None) -> JsonObject:
    spec: dict[str, Any] = {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["stripe-live"]},
        "permissions": ["read"],
    }
    if access is not None:
        spec["access"] = access
    return {"metadata": {"name": name, "namespace": NS}, "spec": spec}


def token_review(
    pod_name: str, pod_uid: str, audiences: tuple[str, ...] = ("securekeys.io",)
) -> JsonObject:
    """The API server's TokenReview answer for a pod-bound token (not an AdmissionReview:
    see helpers.review)."""
    return {
        "status": {
            "authenticated": True,
            "audiences": list(audiences),
            "user": {
                "username": f"system:serviceaccount:{NS}:app",
                "uid": SA_UID,
                "extra": {
                    "authentication.kubernetes.io/pod-name": [pod_name],
                    "authentication.kubernetes.io/pod-uid": [pod_uid],
                },
            },
        }
    }


class Reviews:
    def __init__(self) -> None:
        self.by_token: dict[str, JsonObject] = {
            "token-a": token_review("web-a", POD_UID),
            "token-b": token_review("web-b", "uid-pod-b"),
            "token-wrong-aud": token_review("web-a", POD_UID, ("https://kubernetes.default.svc",)),
        }
        self.calls = 0

    async def review(self, token: str, audience: str) -> JsonObject:
        self.calls += 1
        assert audience == "securekeys.io"
        return self.by_token.get(token, {"status": {"authenticated": False}})


class Secrets:
    def __init__(self) -> None:
        fk_blob = envelope.seal(
            _FK, KeyBinding(CTRL_NS, "controller-fingerprint", 1), KMS
        ).to_bytes()
        self.table: dict[tuple[str, str], JsonObject] = {
            (CTRL_NS, "secure-keys-controller-keys"): {
                "data": {"fingerprint": base64.b64encode(fk_blob).decode()}
            },
            (NS, "stripe-live.sealed"): blob_secret({1: CANARY}),
        }

    async def get_secret(self, namespace: str, name: str) -> JsonObject | None:
        return self.table.get((namespace, name))


class World:
    def __init__(self, heartbeat: int = 1, pool: ThreadPoolExecutor | None = None) -> None:
        registry = KmsRegistry()
        registry.register("local", lambda config: KMS)
        only = ("local", "default")
        keys = KmsSettings(only, {only: KmsConfig(*only)})
        self.secrets = Secrets()
        self.reviews = Reviews()
        self.records: list[dict[str, Any]] = []
        self.material = MaterialSource(
            self.secrets, CachedProviders(keys, registry=registry), CTRL_NS, pool=pool
        )
        self.broker = Broker(
            TokenReviewer(self.reviews),
            self.material,
            AuditLog(AuditChain(b"k" * 32, "test"), emit=self.records.append),
            PodEvents(None),
            limits=RateLimits(pod_capacity=100, sa_capacity=100),
        )
        self.broker.settings = type(self.broker.settings)(heartbeat_seconds=heartbeat)
        for cache in self.broker.caches.all:
            cache.apply(LISTED)
        self.apply("apikeys", apikey([(1, "Active", CANARY, None)], 1))
        self.apply("roles", keyrole())
        self.apply("pods", injected_pod())
        self.apply("pods", injected_pod("web-b", "uid-pod-b", keys="other"))
        self.apply("accounts", account())

    def apply(self, cache: str, obj: JsonObject, kind: str = "ADDED") -> None:
        getattr(self.broker.caches, cache).apply(InformerEvent(kind, obj))  # type: ignore[arg-type]


def _run(
    test: Callable[[World, str], Awaitable[None]],
    heartbeat: int = 1,
    pool: ThreadPoolExecutor | None = None,
) -> World:
    world = World(heartbeat, pool)

    async def main() -> None:
        caches = GatewayCaches()
        app = build_app(caches, GatewaySettings(), broker=world.broker)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await asyncio.wait_for(test(world, f"http://127.0.0.1:{port}"), 30)
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return world


def _body(
    private: RecipientPrivateKey,
    keys: tuple[str, ...] = ("stripe-live",),
    have: dict[str, HeldVersions] | None = None,
) -> bytes:
    return StreamRequest(keys, private.public(), have or {}).to_json()


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[delivery.Message]:
    while line := await response.content.readline():
        yield delivery.parse_message(line)


def _open(private: RecipientPrivateKey, state: delivery.KeyState, which: str = "current") -> bytes:
    version = getattr(state, which)
    assert version is not None
    assert version.sealed is not None
    return bytes(
        delivery.open_delivered(
            private, version.sealed, namespace=NS, apikey="stripe-live", version=version.version
        )
    )


def test_a_bound_pod_gets_its_key_and_its_fingerprint() -> None:
    async def test(world: World, url: str) -> None:
        private = RecipientPrivateKey.generate()
        async with aiohttp.ClientSession() as http:
            async with http.post(
                url + "/v1/stream", data=_body(private), headers={"Authorization": "Bearer token-a"}
            ) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("application/x-ndjson")
                first = await anext(_lines(resp))
                assert isinstance(first, StateMessage)
                assert first.heartbeat_seconds == 1
                state = first.keys["stripe-live"]
                assert _open(private, state) == CANARY
                assert state.current is not None
                assert state.current.fingerprint == fingerprint(
                    _FK, CANARY, namespace=NS, name="stripe-live", uid=KEY_UID
                )
                assert state.previous is None
                assert state.lease_expires_at > datetime.now(UTC)
                # The next line is a heartbeat (nothing changed).
                beat = await anext(_lines(resp))
                assert isinstance(beat, delivery.HeartbeatMessage)
            kms_before = KMS.unwraps
            # A reconnect that holds v1 gets no material and makes no KMS call.
            async with http.post(
                url + "/v1/stream",
                data=_body(private, have={"stripe-live": HeldVersions(1)}),
                headers={"Authorization": "Bearer token-a"},
            ) as resp:
                again = await anext(_lines(resp))
                assert isinstance(again, StateMessage)
                current = again.keys["stripe-live"].current
                assert current is not None
                assert current.sealed is None
            # A fresh connection (new key) gets material, still from the DEK cache.
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate()),
                headers={"Authorization": "Bearer token-a"},
            ) as resp:
                third = await anext(_lines(resp))
                assert isinstance(third, StateMessage)
            assert KMS.unwraps == kms_before
            assert world.reviews.calls == 1  # the token's review was cached

    with capture_logs() as logs:
        world = _run(test)
    delivered = [r for r in world.records if r["event_type"] == "key.delivered"]
    assert [r["key_id"] for r in delivered] == [f"{NS}/stripe-live@1"] * 2
    assert delivered[0]["session_id"] == POD_UID
    assert delivered[0]["user_id"] == f"system:serviceaccount:{NS}:app"
    assert verify(world.records, b"k" * 32) is None
    assert CANARY.decode() not in repr(logs) + repr(world.records)


class CountingPool(ThreadPoolExecutor):
    """A real pool that counts what it was given (what left the event loop)."""

    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_only_kms_calls_leave_the_event_loop() -> None:
    """The first delivery opens the fingerprint key and unwraps the data key at the KMS:
    off the loop. Later ones find the data key cached: opened and sealed on the loop, no
    thread hop (a hop costs a first delivery more than the work itself)."""
    pool = CountingPool()

    async def test(world: World, url: str) -> None:
        async with aiohttp.ClientSession() as http:
            submitted = []
            for token in ("token-a", "token-a", "token-a"):
                private = RecipientPrivateKey.generate()
                async with http.post(
                    url + "/v1/stream",
                    data=_body(private),
                    headers={"Authorization": f"Bearer {token}"},
                ) as resp:
                    first = await anext(_lines(resp))
                    assert isinstance(first, StateMessage)
                    assert _open(private, first.keys["stripe-live"]) == CANARY
                submitted.append(pool.submitted)
        assert submitted[0] >= 1  # the KMS: the fingerprint key, the data key
        assert submitted[2] == submitted[1] == submitted[0]

    kms_before = KMS.unwraps
    _run(test, pool=pool)
    assert KMS.unwraps > kms_before
    pool.shutdown()


def test_rotation_and_revocation_are_pushed() -> None:
    async def test(world: World, url: str) -> None:
        private = RecipientPrivateKey.generate()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/stream", data=_body(private), headers={"Authorization": "Bearer token-a"}
            ) as resp,
        ):
            lines = _lines(resp)
            await anext(lines)
            world.secrets.table[(NS, "stripe-live.sealed")] = blob_secret({1: CANARY, 2: CANARY2})
            world.apply(
                "apikeys",
                apikey(
                    [(1, "Archived", CANARY, datetime.now(UTC)), (2, "Active", CANARY2, None)],
                    2,
                ),
                "MODIFIED",
            )
            started = asyncio.get_running_loop().time()
            rotated = await anext(lines)
            assert asyncio.get_running_loop().time() - started < 1
            assert isinstance(rotated, StateMessage)
            state = rotated.keys["stripe-live"]
            assert _open(private, state) == CANARY2
            assert state.previous is not None
            assert state.previous.version == 1
            assert state.previous.expires_at is not None
            assert state.previous.expires_at > datetime.now(UTC) + timedelta(minutes=59)
            assert state.previous.sealed is None or _open(private, state, "previous") == CANARY
            # The KeyRole goes: the key is revoked on the open stream.
            world.apply("roles", keyrole(), "DELETED")
            revoked = await anext(lines)
            assert isinstance(revoked, StateMessage)
            assert revoked.revoked == ("stripe-live",)
            assert revoked.keys == {}
            # The pod is deleted: the stream ends with an error line.
            world.apply("pods", injected_pod(), "DELETED")
            last = await anext(lines)
            assert isinstance(last, delivery.ErrorMessage)
            assert last.reason == "PodNotFound"

    # Heartbeats 10 s apart: each push below must come from the watch, not a timer.
    world = _run(test, heartbeat=10)
    revoked = [r for r in world.records if r["event_type"] == "key.revoked"]
    assert revoked[0]["additional_context"]["reason"] == "KeyNotGranted"
    assert verify(world.records, b"k" * 32) is None


@pytest.mark.parametrize(
    ("token", "keys", "status", "reason"),
    [
        ("token-b", ("stripe-live",), 403, "KeyNotRequested"),  # pod B's token, pod A's key
        ("token-wrong-aud", ("stripe-live",), 401, "TokenAudience"),
        ("forged", ("stripe-live",), 401, "TokenInvalid"),
        ("", ("stripe-live",), 401, "TokenMissing"),
    ],
)
def test_refusals_name_their_reason_and_are_audited(
    token: str, keys: tuple[str, ...], status: int, reason: str
) -> None:
    async def test(world: World, url: str) -> None:
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate(), keys),
                headers=headers,
            ) as resp:
                assert resp.status == status
                assert delivery.parse_refusal(await resp.read()).reason == reason

    with capture_logs() as logs:
        world = _run(test)
    assert [r["additional_context"]["reason"] for r in world.records] == [reason]
    assert world.records[0]["result"] == "denied"
    if token:
        assert token not in repr(logs) + repr(world.records)


def test_a_deleted_pod_a_replaced_pod_and_an_unbound_key_are_refused() -> None:
    async def test(world: World, url: str) -> None:
        async with aiohttp.ClientSession() as http:

            async def status_of() -> tuple[int, str]:
                async with http.post(
                    url + "/v1/stream",
                    data=_body(RecipientPrivateKey.generate()),
                    headers={"Authorization": "Bearer token-a"},
                ) as resp:
                    return resp.status, delivery.parse_refusal(await resp.read()).reason

            world.apply("roles", keyrole(), "DELETED")
            assert await status_of() == (403, "KeyNotGranted")
            world.apply("roles", keyrole(access={"requireMFA": True}))
            assert await status_of() == (403, "MfaRequired")
            world.apply("pods", injected_pod(uid="another-uid"), "MODIFIED")
            assert await status_of() == (403, "PodUidMismatch")
            world.apply("pods", injected_pod(), "DELETED")
            assert await status_of() == (403, "PodNotFound")

    world = _run(test)
    assert len(world.records) == 4
    assert verify(world.records, b"k" * 32) is None


def test_rate_limit_answers_429_with_retry_after() -> None:
    async def test(world: World, url: str) -> None:
        world.broker.limits = RateLimits(pod_capacity=1, pod_rate=0.1)
        async with aiohttp.ClientSession() as http:
            body = _body(RecipientPrivateKey.generate(), ("nope",))
            async with http.post(
                url + "/v1/stream", data=body, headers={"Authorization": "Bearer token-a"}
            ) as resp:
                assert resp.status == 403
            async with http.post(
                url + "/v1/stream", data=body, headers={"Authorization": "Bearer token-a"}
            ) as resp:
                assert resp.status == 429
                assert int(resp.headers["Retry-After"]) >= 1
                assert delivery.parse_refusal(await resp.read()).reason == "RateLimited"

    _run(test)


class SlowReviews(Reviews):
    """TokenReviews that take a round trip, noting what the broker had done meanwhile."""

    def __init__(self, seen: list[str]) -> None:
        super().__init__()
        self.seen = seen

    async def review(self, token: str, audience: str) -> JsonObject:
        self.seen.append("review asked")
        await asyncio.sleep(0.05)
        self.seen.append("review answered")
        return await super().review(token, audience)


def _noting_parse(seen: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    parse = delivery.parse_stream_request

    def noting(raw: bytes | str) -> StreamRequest:
        seen.append("body parsed")
        return parse(raw)

    monkeypatch.setattr(delivery, "parse_stream_request", noting)


def test_a_body_is_read_only_once_the_review_has_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[str] = []
    _noting_parse(seen, monkeypatch)

    async def test(world: World, url: str) -> None:
        world.broker.reviewer = TokenReviewer(SlowReviews(seen))
        plaintext = world.material.plaintext

        async def noting(view: Any, version: int, expected: str) -> bytearray:
            seen.append("material opened")
            return await plaintext(view, version, expected)

        monkeypatch.setattr(world.material, "plaintext", noting)
        async with aiohttp.ClientSession() as http:
            private = RecipientPrivateKey.generate()
            async with http.post(
                url + "/v1/stream", data=_body(private), headers={"Authorization": "Bearer token-a"}
            ) as resp:
                assert resp.status == 200
                first = await anext(_lines(resp))
                assert isinstance(first, StateMessage)
                assert _open(private, first.keys["stripe-live"]) == CANARY
            # Nothing of an unauthenticated request is read while the review is asked.
            assert seen == ["review asked", "review answered", "body parsed", "material opened"]
            seen.clear()
            # A cached token: no review, the body parsed once.
            async with http.post(
                url + "/v1/stream", data=_body(private), headers={"Authorization": "Bearer token-a"}
            ) as resp:
                assert resp.status == 200
                await anext(_lines(resp))
            assert seen == ["body parsed", "material opened"]

    with capture_logs() as logs:
        _run(test, heartbeat=10)
    streams = [line for line in logs if line["event"] == "broker.stream"]
    assert [line["reviewed"] for line in streams] == [True, False]
    for line in streams:
        stages = ("review_ms", "body_ms", "pod_ms", "compute_ms", "write_ms")
        assert sum(line[stage] for stage in stages) == pytest.approx(line["total_ms"], abs=0.01)
    assert streams[0]["review_ms"] >= 50  # the round trip
    assert streams[1]["review_ms"] < 50


@pytest.mark.parametrize(
    ("token", "body", "status", "reason"),
    [
        ("forged", b"{not json", 401, "TokenInvalid"),  # the review's answer comes first
        ("token-a", b"{not json", 400, "BadRequest"),
        ("token-a", b"x" * (delivery.MAX_REQUEST_SIZE + 1), 400, "BadRequest"),
    ],
)
def test_a_review_is_answered_before_a_bad_body(
    token: str, body: bytes, status: int, reason: str
) -> None:
    async def test(world: World, url: str) -> None:
        world.broker.reviewer = TokenReviewer(SlowReviews([]))
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/stream", data=body, headers={"Authorization": f"Bearer {token}"}
            ) as resp,
        ):
            assert resp.status == status
            assert delivery.parse_refusal(await resp.read()).reason == reason

    world = _run(test)
    assert [r["additional_context"]["reason"] for r in world.records] == [reason]
    # A refused token names no one; an accepted one names its pod's ServiceAccount.
    assert world.records[0]["user_id"] == (
        "" if status == 401 else f"system:serviceaccount:{NS}:app"
    )


def test_a_rate_limited_new_token_is_refused_429_whatever_its_body() -> None:
    async def test(world: World, url: str) -> None:
        world.broker.reviewer = TokenReviewer(SlowReviews([]))
        world.broker.limits = RateLimits(pod_capacity=0, pod_rate=0.1)
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/stream", data=b"{not json", headers={"Authorization": "Bearer token-a"}
            ) as resp,
        ):
            assert resp.status == 429

    _run(test)


def test_the_token_cache_answers_without_asking() -> None:
    async def test(world: World, url: str) -> None:
        reviewer = world.broker.reviewer
        assert world.reviews.calls == 0
        identity, asked = await reviewer.review_noting("token-a")
        assert asked
        assert await reviewer.review_noting("token-a") == (identity, False)
        missing, asked = await reviewer.review_noting("")
        assert not asked
        assert isinstance(missing, TokenRejected)
        assert missing.reason == "TokenMissing"
        assert world.reviews.calls == 1

    _run(test)


def test_a_blob_without_a_valid_tag_is_not_served() -> None:
    async def test(world: World, url: str) -> None:
        forged = blob_secret({1: CANARY})
        forged["metadata"]["annotations"]["securekeys.io/blob-tags"] = json.dumps(
            {"v1": "hm1:" + "0" * 32}
        )
        world.secrets.table[(NS, "stripe-live.sealed")] = forged
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate()),
                headers={"Authorization": "Bearer token-a"},
            ) as resp,
        ):
            assert resp.status == 403
            assert delivery.parse_refusal(await resp.read()).reason == "BlobTagInvalid"

    _run(test)


# -- what a hostile user found (issue 16) ------------------------------------------------


async def _open_stream(
    http: aiohttp.ClientSession, url: str, keys: tuple[str, ...] = ("stripe-live",)
) -> tuple[aiohttp.ClientResponse, AsyncIterator[delivery.Message]]:
    resp = await http.post(
        url + "/v1/stream",
        data=_body(RecipientPrivateKey.generate(), keys),
        headers={"Authorization": "Bearer token-a"},
    )
    assert resp.status == 200
    lines = _lines(resp)
    assert isinstance(await anext(lines), StateMessage)
    return resp, lines


async def _next_not_heartbeat(lines: AsyncIterator[delivery.Message]) -> delivery.Message:
    while True:
        line = await anext(lines)
        if not isinstance(line, delivery.HeartbeatMessage):
            return line


@pytest.mark.parametrize("replaced", [False, True])
def test_a_deleted_or_replaced_service_account_ends_its_streams_and_cached_reviews(
    replaced: bool,
) -> None:
    async def test(world: World, url: str) -> None:
        async with aiohttp.ClientSession() as http:
            resp, lines = await _open_stream(http, url)
            assert world.reviews.calls == 1
            world.apply("accounts", account(), "DELETED")
            if replaced:
                world.apply("accounts", account("uid-sa-new"))
            started = asyncio.get_running_loop().time()
            revoke = await _next_not_heartbeat(lines)
            assert isinstance(revoke, StateMessage)
            assert revoke.revoked == ("stripe-live",)  # the files go by push
            last = await _next_not_heartbeat(lines)
            assert isinstance(last, delivery.ErrorMessage)
            assert last.reason == (
                "ServiceAccountReplaced" if replaced else "ServiceAccountNotFound"
            )
            assert asyncio.get_running_loop().time() - started < 1
            resp.release()
            # The same token again: asked about afresh (the cached review went), refused.
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate()),
                headers={"Authorization": "Bearer token-a"},
            ) as again:
                assert again.status == 403
                reason = delivery.parse_refusal(await again.read()).reason
                assert reason == last.reason
            assert world.reviews.calls == 2

    _run(test)


def test_a_key_removed_from_the_annotation_is_revoked_by_push_and_the_rest_keep_flowing() -> None:
    async def test(world: World, url: str) -> None:
        world.apply("apikeys", _other_key(world))
        world.apply("roles", _role_for_both(), "MODIFIED")
        world.apply("pods", injected_pod(keys="stripe-live,other"), "MODIFIED")
        async with aiohttp.ClientSession() as http:
            resp, lines = await _open_stream(http, url, ("stripe-live", "other"))
            world.apply("pods", injected_pod(keys="other"), "MODIFIED")
            revoke = await _next_not_heartbeat(lines)
            assert isinstance(revoke, StateMessage)
            assert revoke.revoked == ("stripe-live",)
            # The stream goes on for the key still asked for.
            beat = await anext(lines)
            assert isinstance(beat, delivery.HeartbeatMessage)
            resp.release()
            # The sidecar reconnects asking for both (its settings): it gets the other,
            # and the dropped one revoked in the first line.
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate(), ("stripe-live", "other")),
                headers={"Authorization": "Bearer token-a"},
            ) as again:
                assert again.status == 200
                first = await anext(_lines(again))
                assert isinstance(first, StateMessage)
                assert list(first.keys) == ["other"]
                assert first.revoked == ("stripe-live",)

    world = _run(test)
    revoked = [r for r in world.records if r["event_type"] == "key.revoked"]
    assert [r["key_id"] for r in revoked] == [f"{NS}/stripe-live"]


def _other_key(world: World) -> JsonObject:
    """ApiKey ``other`` (version 1, CANARY2) and its blob Secret in ``world``."""
    uid = "uid-other"
    sealed = envelope.seal(CANARY2, KeyBinding(NS, "other", 1), KMS).to_bytes()
    world.secrets.table[(NS, "other.sealed")] = {
        "type": "securekeys.io/sealed-versions",
        "metadata": {
            "name": "other.sealed",
            "namespace": NS,
            "labels": {"app.kubernetes.io/managed-by": "secure-keys"},
            "ownerReferences": [{"kind": "ApiKey", "uid": uid, "controller": True}],
            "annotations": {
                "securekeys.io/blob-tags": json.dumps({"v1": blob_tag(_FK, uid, 1, sealed)})
            },
        },
        "data": {"v1": base64.b64encode(sealed).decode()},
    }
    fp = fingerprint(_FK, CANARY2, namespace=NS, name="other", uid=uid)
    return {
        "metadata": {"name": "other", "namespace": NS, "uid": uid},
        "spec": {"source": {}, "delivery": {"format": "raw"}},
        "status": {
            "currentVersion": 1,
            "versions": [{"version": 1, "state": "Active", "fingerprint": fp}],
        },
    }


def _role_for_both() -> JsonObject:
    role = keyrole()
    role["spec"]["keys"]["names"] = ["stripe-live", "other"]
    return role


def test_draining_tells_open_streams_to_reconnect_and_refuses_new_ones() -> None:
    async def test(world: World, url: str) -> None:
        async with aiohttp.ClientSession() as http:
            resp, lines = await _open_stream(http, url)
            drained = asyncio.create_task(world.broker.drain(3.0))
            last = await _next_not_heartbeat(lines)
            assert last == delivery.ReconnectMessage("BrokerStopping")
            resp.release()
            await asyncio.wait_for(drained, 3.5)
            assert not any(world.broker.sessions.values())
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate()),
                headers={"Authorization": "Bearer token-a"},
            ) as again:
                assert again.status == 503
                assert again.headers["Retry-After"] == "1"
                assert delivery.parse_refusal(await again.read()).reason == "BrokerStopping"

    _run(test)


async def _refused_until_all_containers_may_read(world: World, url: str, pod: JsonObject) -> None:
    """``pod`` is refused (SharedProcessNamespace) until it accepts that every container
    may read its keys; then its stream opens."""
    world.apply("pods", pod, "MODIFIED")
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url + "/v1/stream",
            data=_body(RecipientPrivateKey.generate()),
            headers={"Authorization": "Bearer token-a"},
        ) as resp:
            assert resp.status == 403
            refusal = delivery.parse_refusal(await resp.read())
            assert refusal.reason == "SharedProcessNamespace"
        pod["metadata"]["annotations"]["securekeys.io/all-containers-may-read-keys"] = "true"
        world.apply("pods", pod, "MODIFIED")
        resp, _ = await _open_stream(http, url)
        resp.release()


def test_a_shared_process_namespace_is_refused_unless_the_pod_accepts_it() -> None:
    async def test(world: World, url: str) -> None:
        shared = injected_pod()
        shared["spec"]["shareProcessNamespace"] = True
        await _refused_until_all_containers_may_read(world, url, shared)

    _run(test)


def test_a_debug_container_aimed_at_a_key_reader_stops_delivery_unless_the_pod_accepts_it() -> None:
    """Even past the webhook: an ephemeral container targeting the app (which mounts the
    keys) reads them through /proc/<pid>/root, so the pod gets nothing."""

    async def test(world: World, url: str) -> None:
        debugged = injected_pod()
        debugged["spec"]["containers"] = [
            {"name": "app", "volumeMounts": [{"name": "securekeys-keys", "mountPath": "/k"}]}
        ]
        debugged["spec"]["ephemeralContainers"] = [{"name": "spy", "targetContainerName": "app"}]
        await _refused_until_all_containers_may_read(world, url, debugged)

    _run(test)


def test_the_injected_mark_is_not_asked_for_the_keyrole_is_the_gate() -> None:
    """Anyone who writes pods can write ``securekeys.io/injected``: the broker ignores it
    (docs/gateway.md, "What the broker trusts"); an unbound ServiceAccount is refused."""

    async def test(world: World, url: str) -> None:
        unmarked = injected_pod()
        del unmarked["metadata"]["annotations"]["securekeys.io/injected"]
        world.apply("pods", unmarked, "MODIFIED")
        async with aiohttp.ClientSession() as http:
            resp, _ = await _open_stream(http, url)
            resp.release()
            world.apply("roles", keyrole(), "DELETED")
            async with http.post(
                url + "/v1/stream",
                data=_body(RecipientPrivateKey.generate()),
                headers={"Authorization": "Bearer token-a"},
            ) as again:
                assert delivery.parse_refusal(await again.read()).reason == "KeyNotGranted"

    _run(test)


def test_an_ended_grace_removes_previous_by_push_is_audited_and_counted_by_rollout() -> None:
    """``secure-keys revoke --version 1`` sets securekeys.io/grace-ended-through: the
    open stream gets a state without ``.previous``, one audit record names the pod, and
    the stream reports it holds version 2 (what the rollout tracker counts)."""

    async def test(world: World, url: str) -> None:
        private = RecipientPrivateKey.generate()
        world.secrets.table[(NS, "stripe-live.sealed")] = blob_secret({1: CANARY, 2: CANARY2})
        rotated = apikey(
            [(1, "Archived", CANARY, datetime.now(UTC)), (2, "Active", CANARY2, None)], 2
        )
        world.apply("apikeys", rotated, "MODIFIED")
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                url + "/v1/stream", data=_body(private), headers={"Authorization": "Bearer token-a"}
            ) as resp,
        ):
            lines = _lines(resp)
            first = await anext(lines)
            assert isinstance(first, StateMessage)
            assert first.keys["stripe-live"].previous is not None
            (session,) = world.broker.sessions[NS]
            assert session.holds("stripe-live") == 2
            assert session.holds("other-key") is None
            rotated["metadata"]["annotations"] = {"securekeys.io/grace-ended-through": "1"}
            world.apply("apikeys", rotated, "MODIFIED")
            ended = await _next_not_heartbeat(lines)
            assert isinstance(ended, StateMessage)
            assert ended.keys["stripe-live"].previous is None
            assert ended.keys["stripe-live"].current is not None

    world = _run(test, heartbeat=10)
    records = [r for r in world.records if r["event_type"] == "key.grace_ended"]
    assert len(records) == 1
    assert records[0]["key_id"] == f"{NS}/stripe-live@1"
    assert records[0]["additional_context"]["pod"] == "web-a"
