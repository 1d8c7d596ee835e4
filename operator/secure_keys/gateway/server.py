"""The gateway's edge: an aiohttp application over TLS, and the process around it.

* ``POST /mutate``: one AdmissionReview in, one out (``mutate.admit`` decides, through
  ``webhook.answers``, which reuses the answer for pods of the same shape). A body
  that is not an AdmissionReview gets HTTP 400; everything else gets 200 with a
  well-formed AdmissionReview echoing the request's uid, even if the pipeline fails
  unexpectedly (then it is denied, code 500: an opted-in pod never starts unchecked).
  One canonical log line per request (``admission``), with the outcome and timing.
* ``GET /healthz``: the process is serving. ``GET /readyz``: 200 only once the ApiKey,
  KeyRole and ServiceAccount caches have listed once; until then admission fails closed.
* TLS: certificate and key are read from files and re-read when either changes
  (``tls.CertificateReloader``), so certificates rotate without a restart. A pair that fails
  to load (say, the key written before the certificate) is ignored until the next
  change; the previous pair keeps serving.
* ``POST /v1/access`` (with the broker): KeyAccessReviews, the read path of people and
  pipelines (``access/reviews.py``, docs/access.md).
* Prometheus metrics on a separate plain-HTTP port (``metrics.py``).
* SIGTERM or SIGINT: the listener closes at once (no new connection), the broker tells
  every open stream to reconnect elsewhere (``Broker.drain``, at most
  ``DRAIN_SECONDS``), and what is still in flight gets ``SHUTDOWN_SECONDS`` more: the
  process exits within a few seconds, which rolling updates rely on.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from aiohttp import web

from secure_keys.core.delivery import STREAM_PATH
from secure_keys.gateway import metrics
from secure_keys.gateway.access.reviews import ACCESS_PATH, AccessReviews
from secure_keys.gateway.broker.stream import Broker
from secure_keys.gateway.tls import CertificateReloader
from secure_keys.gateway.webhook.answers import AnswerCache
from secure_keys.gateway.webhook.caches import GatewayCaches
from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.gateway.webhook.mutate import Outcome
from secure_keys.gateway.webhook.review import (
    AdmissionRequest,
    AdmissionResponse,
    NotAdmissionReview,
    decode,
    encode,
)
from secure_keys.kube.cache import run_caches
from secure_keys.kube.client import Credentials, KubeApi
from secure_keys.kube.informer import Backoff

_log = structlog.get_logger("secure_keys.gateway")

MAX_BODY = 4 * 1024 * 1024
"""The API server sends at most about 3 MiB (its own request limit) plus the envelope."""
MUTATE_PATH = "/mutate"
DRAIN_SECONDS = 3.0
SHUTDOWN_SECONDS = 2.0
_JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Handled:
    """What the handler answered, and what the log line and the metrics need."""

    status: int
    body: bytes
    request: AdmissionRequest | None = None
    outcome: Outcome | None = None
    error: str = ""
    """The class of an unexpected exception (then the pod was denied with code 500)."""


def handle_body(body: bytes, decisions: AnswerCache) -> Handled:
    """The whole request, without HTTP.

    Raises only what the pipeline might raise unexpectedly; ``answer`` catches that. The
    fuzz test drives this directly, so a crash in the pipeline is seen, not masked.
    """
    try:
        request = decode(body)
    except NotAdmissionReview as exc:
        return Handled(400, str(exc).encode())
    outcome, encoded = decisions.answer(request)
    return Handled(200, encoded, request, outcome)


def answer(body: bytes, decisions: AnswerCache) -> Handled:
    """``handle_body``, never raising: an unexpected failure denies the pod (code 500)."""
    try:
        return handle_body(body, decisions)
    except Exception as exc:  # the gateway must answer every review
        try:
            request = decode(body)
        except Exception:
            return Handled(400, b"unreadable AdmissionReview", error=type(exc).__name__)
        response = AdmissionResponse(
            request.uid,
            allowed=False,
            code=500,
            reason="InternalError",
            message="secure-keys: the gateway failed to process this pod; see its log",
        )
        return Handled(
            200, encode(response, request.api_version), request, None, type(exc).__name__
        )


class _Children:
    """The labelled children of the admission metrics, looked up once per label set.

    ``labels()`` takes a lock and builds a key every call; the label sets are few
    (outcomes and reasons), so each child is kept after its first use.
    """

    def __init__(self) -> None:
        self.counted: dict[tuple[str, str], Callable[[], None]] = {}
        self.timed: dict[str, Callable[[float], None]] = {}

    def count(self, outcome: str, reason: str) -> None:
        inc = self.counted.get((outcome, reason))
        if inc is None:
            inc = self.counted[outcome, reason] = metrics.ADMISSIONS.labels(outcome, reason).inc
        inc()

    def time(self, outcome: str, seconds: float) -> None:
        observe = self.timed.get(outcome)
        if observe is None:
            observe = self.timed[outcome] = metrics.ADMISSION_SECONDS.labels(outcome).observe
        observe(seconds)


def build_app(
    caches: GatewayCaches,
    settings: GatewaySettings,
    clock: Callable[[], float] = time.perf_counter,
    broker: Broker | None = None,
    access: AccessReviews | None = None,
) -> web.Application:
    children = _Children()
    sources = {
        reused: metrics.ADMISSION_ANSWERS.labels("reused" if reused else "computed").inc
        for reused in (True, False)
    }
    decisions = AnswerCache(caches, settings, observe=lambda reused: sources[reused]())
    # The logger itself, not the module's lazy proxy, which looks it up on every call.
    log = _log.bind()

    async def mutate(request: web.Request) -> web.Response:
        started = clock()
        raw = await request.read()
        handled = answer(raw, decisions)
        elapsed = clock() - started
        duration_ms = round(elapsed * 1000, 3)
        review, outcome = handled.request, handled.outcome
        if review is None:
            children.count("bad-request", handled.error)
            log.info(
                "admission",
                outcome="bad-request",
                error=handled.body.decode(),
                duration_ms=duration_ms,
            )
            return web.Response(status=handled.status, body=handled.body, content_type="text/plain")
        name = outcome.outcome if outcome is not None else "error"
        reason = outcome.reason if outcome is not None else handled.error
        children.count(name, reason)
        children.time(name, elapsed)
        fields: dict[str, object] = {}
        if outcome is not None:
            fields = {
                "pod": outcome.pod,
                "mode": outcome.mode,
                "keys": list(outcome.keys),
                "patch_ops": len(outcome.response.patch),
                "message": outcome.response.message,
            }
        log.info(
            "admission",
            uid=review.uid,
            namespace=review.namespace,
            operation=review.operation,
            kind=review.kind,
            outcome=name,
            reason=reason,
            dry_run=review.dry_run,
            duration_ms=duration_ms,
            **fields,
        )
        return web.Response(body=handled.body, content_type=_JSON)

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_request: web.Request) -> web.Response:
        if caches.synced:
            return web.Response(text="ok")
        return web.Response(status=503, text="caches not synced")

    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_post(MUTATE_PATH, mutate)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if broker is not None:
        app.router.add_post(STREAM_PATH, broker.handle)
    if access is not None:
        app.router.add_post(ACCESS_PATH, access.handle)
    return app


@dataclass(frozen=True)
class GatewayOptions:
    tls_cert: Path
    tls_key: Path
    port: int = 8443
    address: str = "0.0.0.0"  # noqa: S104 - a server
    metrics_port: int | None = None
    kubeconfig: Path | None = None
    settings: GatewaySettings = field(default_factory=GatewaySettings)
    cert_reload_interval: float = 5.0
    broker: BrokerOptions | None = None
    """Serve ``POST /v1/stream`` (the key broker) when set."""


async def _track_caches(caches: GatewayCaches) -> None:
    await caches.wait_synced()
    metrics.CACHES_SYNCED.set(1)
    # The caches are long-lived: move them out of the collector's view, so that the
    # full collections that request garbage triggers do not walk them every time.
    gc.collect()
    gc.freeze()
    _log.info(
        "gateway.synced",
        apikeys=len(caches.apikeys),
        keyroles=len(caches.keyroles),
        service_accounts=len(caches.service_accounts),
    )


@dataclass(frozen=True)
class BrokerOptions:
    kms_config: Path
    controller_namespace: str = "secure-keys-system"
    heartbeat_seconds: int = 10
    dek_cache_ttl: float = 24 * 3600.0
    access_token_ttl: float = 900.0
    """Seconds an access token from ``secure-keys login`` lives (15 minutes)."""
    replica_namespace: str = ""
    replica_selector: str = ""
    """The gateway Deployment's namespace and pod label selector: the live replicas
    whose rollout entries are kept (empty: pruning off)."""


def _build_broker(options: BrokerOptions, api: KubeApi) -> Broker:
    # Imported here: a webhook-only gateway needs none of the KMS machinery.
    from secure_keys.core.auditchain import AuditChain, derive_audit_key
    from secure_keys.core.kms.settings import KmsSettings
    from secure_keys.gateway.broker.audit import AuditLog, PodEvents
    from secure_keys.gateway.broker.material import CachedProviders, KubeSecrets, MaterialSource
    from secure_keys.gateway.broker.stream import BrokerSettings
    from secure_keys.gateway.broker.tokenreview import KubeTokenReviews, TokenReviewer
    from secure_keys.kube.client import EVENTS

    class _Events:
        async def create_event(self, namespace: str, body: dict[str, object]) -> None:
            await api.create(EVENTS, namespace, body)

    providers = CachedProviders(
        KmsSettings.load(options.kms_config),
        dek_ttl=options.dek_cache_ttl,
        observe=metrics.observe_dek,
    )
    material = MaterialSource(KubeSecrets(api), providers, options.controller_namespace)
    reviewer = TokenReviewer(
        KubeTokenReviews(api), observe=lambda r: metrics.TOKEN_REVIEWS.labels(r).inc()
    )
    broker = Broker(
        reviewer,
        material,
        AuditLog(AuditChain(bytes(32))),  # replaced once the fingerprint key opens
        PodEvents(_Events()),
        settings=BrokerSettings(heartbeat_seconds=options.heartbeat_seconds),
    )
    broker.ready = False

    async def open_keys() -> None:
        backoff, failures = Backoff(), 0
        while True:
            try:
                key = await material.fingerprint_key()
            except Exception as exc:  # retried: the KMS or the keys Secret may come later
                _log.warning("broker.keys_unavailable", error=type(exc).__name__)
                await asyncio.sleep(backoff.after(failures, exc))
                failures += 1
                continue
            audit_key = derive_audit_key(key)
            broker.audit = AuditLog(AuditChain(audit_key))
            broker.ready = True
            _log.info("broker.ready")
            return

    broker.start_task = asyncio.create_task(open_keys(), name="broker-keys")
    from secure_keys.gateway.broker.rollout import replica_pods, tracker_for

    replicas = replica_pods(options.replica_namespace, options.replica_selector)
    broker.rollout = tracker_for(broker.caches, broker.sessions, api, replicas)
    broker.on_streams_changed = broker.rollout.touch
    return broker


def _build_access(broker: Broker, api: KubeApi, options: BrokerOptions) -> AccessReviews:
    """``POST /v1/access`` (KeyAccessReviews), on the broker's caches and material, with
    the MFA Secrets in the controller's (the release's) namespace."""
    from datetime import timedelta

    from secure_keys.gateway.access.mfa import MfaStore
    from secure_keys.gateway.access.proof import ProofChecker
    from secure_keys.gateway.access.reviews import KeyEvents
    from secure_keys.kube.client import APIKEYS, EVENTS
    from secure_keys.kube.names import ROTATE_ANNOTATION

    class _Events:
        async def create_event(self, namespace: str, body: dict[str, object]) -> None:
            await api.create(EVENTS, namespace, body)

    async def request_rotation(namespace: str, name: str, value: str) -> None:
        # No resourceVersion precondition: the gateway's own rollout writes move it. The
        # chart's gateway-rotate-only policy refuses the patch while a request is pending,
        # against the stored object (two replicas racing past the cache's view).
        patch = {"metadata": {"annotations": {ROTATE_ANNOTATION: value}}}
        await api.patch(APIKEYS, namespace, name, patch)

    material = broker.material
    mfa = MfaStore(api, material.controller_namespace, material.default_kms, material.run_off_loop)
    return AccessReviews(
        broker,
        KeyEvents(_Events()),
        mfa=mfa,
        token_lifetime=timedelta(seconds=options.access_token_ttl),
        proofs=ProofChecker(api.request),
        rotations=request_rotation,
    )


async def serve(options: GatewayOptions) -> None:
    """Run the gateway until SIGTERM or SIGINT."""
    caches = GatewayCaches()
    for cache in caches.all:
        metrics.CACHE_OBJECTS.labels(cache.resource.plural).set_function(
            lambda cache=cache: len(cache)  # type: ignore[misc]
        )
    metrics.CACHES_SYNCED.set(0)
    reloader = CertificateReloader(options.tls_cert, options.tls_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    credentials = Credentials.discover(options.kubeconfig)
    async with KubeApi(credentials, user_agent="secure-keys-gateway") as api:
        broker = None if options.broker is None else _build_broker(options.broker, api)
        # The webhook's and the broker's caches of one resource share its informer.
        fed = caches.all if broker is None else (*caches.all, *broker.caches.all)
        tasks = [
            asyncio.create_task(run_caches(api, fed), name="caches"),
            asyncio.create_task(_track_caches(caches), name="synced"),
            asyncio.create_task(reloader.watch(options.cert_reload_interval), name="tls"),
        ]
        access = None
        if broker is not None and options.broker is not None:
            if broker.rollout is not None:
                tasks.append(asyncio.create_task(broker.rollout.run(), name="rollout"))
                if broker.rollout.replicas is not None:
                    watch = broker.rollout.replicas.run(api)
                    tasks.append(asyncio.create_task(watch, name="rollout-replicas"))
            access = _build_access(broker, api, options.broker)
        app = build_app(caches, options.settings, broker=broker, access=access)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_SECONDS)
        await runner.setup()
        site = web.TCPSite(runner, options.address, options.port, ssl_context=reloader.context)
        await site.start()
        if options.metrics_port is not None:
            metrics.serve(options.metrics_port)
        _log.info(
            "gateway.started",
            port=options.port,
            metrics_port=options.metrics_port,
            pid=os.getpid(),
            sidecar_image=options.settings.sidecar_image,
            default_mode=options.settings.default_mode,
        )
        try:
            await stop.wait()
        finally:
            _log.info("gateway.stopping")
            await site.stop()  # no new connection from here on
            if broker is not None:
                await broker.drain(DRAIN_SECONDS)
                if broker.rollout is not None:
                    await broker.rollout.withdraw()
            await runner.cleanup()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
