"""A small asynchronous Kubernetes REST client over aiohttp: our processes' API I/O.

The controller (beside kopf's watches), the gateway and the CLI need a handful of verbs on
a handful of resources (ApiKeys and their status, Secrets, Events, ConfigMaps, Leases),
with resourceVersion preconditions. A thin JSON client keeps that explicit and small
(``docs/kube-client.md`` gives the measured reason for keeping it). Credentials come from
a kubeconfig (client certificate, token, token file, or an ``exec`` credential plugin:
``exec_auth.py``) or from the in-cluster ServiceAccount, whose token file is re-read as
the kubelet rotates it.

What it does for every caller:

* 429, and 503 where that is safe, are retried a bounded number of times, honouring
  ``Retry-After`` (capped, with jitter): ``RetryPolicy``. Idempotent verbs are retried on
  both; POST and PATCH only on 429 or a 503 carrying ``Retry-After``, which the API
  server's filters send when they refused the request before processing it.
* A 401 with an exec plugin runs the plugin again, once, and repeats the request.
* A watch whose resourceVersion is too old (410 Gone, as the HTTP status or as an ERROR
  event in the stream) raises ``WatchExpired``; ``informer.py`` lists again on it.

``list(..., metadata_only=True)`` asks the API server for a ``PartialObjectMetadataList``
(the ``Accept`` header ``METADATA_LIST_ACCEPT``): each item is only apiVersion, kind and
metadata, so a caller that needs names and labels neither receives nor parses specs and
statuses (an ApiKey's sealed source runs to tens of KiB). Paging and retries are as for
any list; a server that cannot convert answers 406, an ``ApiError``.

Errors are ``ApiError`` with the HTTP status and the API server's own message. Request
bodies never appear in an error or a log: they may hold sealed blobs.

The transport is aiohttp (imported when a client opens), or for the CLI's short-lived
process the standard library's blocking client (``transport="blocking"``,
``blocking.py``, which says why); watches need aiohttp.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import json
import os
import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import quote, urlencode

import yaml

from secure_keys.kube.blocking import BlockingHttp

if TYPE_CHECKING:
    import aiohttp

    from secure_keys.kube.exec_auth import ExecAuthenticator, ExecConfig, ExecCredential

JsonObject = dict[str, Any]
PatchType = Literal["merge", "json", "strategic"]

_CONTENT_TYPES: dict[PatchType, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
_IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
_MAX_WATCH_LINE = 8 * 1024 * 1024
"""One watch event per line; a Secret may be 1 MiB and grows when JSON-encoded."""
METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
"""Asks a list for its items' metadata only. No fallback to a plain ``application/json``:
a server that cannot convert should fail (406) rather than silently send whole objects."""


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(
        self, status: int, reason: str, message: str, *, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after
        """Seconds the server asked us to wait (``Retry-After``), if it said."""

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


class WatchExpired(ApiError):
    """410 Gone: the watch's resourceVersion is older than the API server keeps; relist."""


@dataclass(frozen=True)
class RetryPolicy:
    """How 429 and 503 answers are retried. ``retries`` counts attempts after the first."""

    retries: int = 3
    max_delay: float = 10.0
    """A longer Retry-After is cut to this; a controller should not sleep for minutes."""
    base_delay: float = 0.5
    """Without Retry-After: base_delay, doubling per attempt, up to max_delay."""
    jitter: float = 0.2
    """Up to this fraction is added to each delay, so clients told the same do not align."""

    def delay(self, attempt: int, retry_after: float | None, unit_random: float) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); pure."""
        wanted = retry_after if retry_after is not None else self.base_delay * 2**attempt
        return min(max(wanted, 0.0), self.max_delay) * (1 + self.jitter * unit_random)


NO_RETRIES = RetryPolicy(retries=0)


def retryable(method: str, status: int, retry_after: float | None) -> bool:
    """Whether an answer may be retried without risking a second effect (pure).

    429 means the request was refused before it ran (max-in-flight, API priority and
    fairness): always safe. 503 is safe for idempotent verbs; for POST and PATCH only when
    the server adds Retry-After, as its filters do when they refuse a request unprocessed.
    """
    if status == 429:
        return True
    if status == 503:
        return method.upper() in _IDEMPOTENT or retry_after is not None
    return False


def parse_retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from ``now``; pure."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    return max((when - now).total_seconds(), 0.0)


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it."""

    server: str
    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    token_file: Path | None = None
    exec: ExecConfig | None = field(default=None)
    """A kubeconfig ``exec`` credential plugin; its token or certificate wins when given."""

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r})"

    @classmethod
    def from_kubeconfig(
        cls, path: Path, context: str | None = None, *, document: Mapping[str, Any] | None = None
    ) -> Self:
        """The credentials of ``path``'s current (or the named) context. ``document``: the
        file already parsed (``load_kubeconfig``), so that a caller that reads it too
        parses it once."""
        if document is None:
            document = load_kubeconfig(path.read_text())
        contexts = {c["name"]: c["context"] for c in document.get("contexts") or []}
        name = context or document.get("current-context")
        if name not in contexts:
            raise ValueError(f"{path}: context {name!r} is not defined")
        ctx = contexts[name]
        cluster = {c["name"]: c["cluster"] for c in document["clusters"]}[ctx["cluster"]]
        user = {u["name"]: u["user"] for u in document["users"]}[ctx["user"]]

        def data(section: Mapping[str, Any], key: str) -> bytes | None:
            if f"{key}-data" in section:
                return base64.b64decode(section[f"{key}-data"])
            if key in section:
                return (path.parent / str(section[key])).read_bytes()
            return None

        token_file = user.get("tokenFile")
        exec_section = user.get("exec")
        return cls(
            server=cluster["server"].rstrip("/"),
            ca_pem=data(cluster, "certificate-authority"),
            cert_pem=data(user, "client-certificate"),
            key_pem=data(user, "client-key"),
            token=user.get("token"),
            token_file=Path(token_file) if token_file else None,
            exec=_exec_config(exec_section, path.parent) if exec_section else None,
        )

    @classmethod
    def in_cluster(cls) -> Self:
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            ca_pem=(_IN_CLUSTER / "ca.crt").read_bytes(),
            token_file=_IN_CLUSTER / "token",
        )

    @classmethod
    def discover(cls, kubeconfig: Path | None = None) -> Self:
        """The given kubeconfig, else $KUBECONFIG, else in-cluster, else ~/.kube/config."""
        if kubeconfig is not None:
            return cls.from_kubeconfig(kubeconfig)
        if os.environ.get("KUBECONFIG"):
            return cls.from_kubeconfig(Path(os.environ["KUBECONFIG"].split(os.pathsep)[0]))
        if (_IN_CLUSTER / "token").exists() and "KUBERNETES_SERVICE_HOST" in os.environ:
            return cls.in_cluster()
        return cls.from_kubeconfig(Path.home() / ".kube" / "config")

    def ssl_context(
        self, cert_pem: bytes | None = None, key_pem: bytes | None = None
    ) -> ssl.SSLContext:
        """A TLS context trusting the cluster CA, presenting the given (else our) client cert.

        With a CA in the credentials, that CA alone is trusted, as client-go does; the
        system's trust store is loaded only for a server without one. (Loading it also
        cost every CLI command about 20 ms: ``bench/access.py``.)"""
        if self.ca_pem is not None:
            if not self.ca_pem.strip():
                # ssl takes empty cadata for "none given" and would trust the system
                # store: a kubeconfig that names a CA and holds nothing is a mistake.
                raise ValueError("the cluster's certificate authority is empty")
            context = ssl.create_default_context(cadata=self.ca_pem.decode())
        else:
            context = ssl.create_default_context()
        if cert_pem is None or key_pem is None:
            cert_pem, key_pem = self.cert_pem, self.key_pem
        if cert_pem is not None and key_pem is not None:
            # ssl loads client keys only from files: write them to a private temporary
            # directory for the duration of the call.
            import tempfile  # only a client certificate needs it

            with tempfile.TemporaryDirectory(prefix="securekeys-tls-") as tmp:
                cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert.write_bytes(cert_pem)
                key.touch(mode=0o600)
                key.write_bytes(key_pem)
                context.load_cert_chain(cert, key)
        return context

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


def _exec_config(section: Any, base: Path) -> ExecConfig:
    # Imported here: a kubeconfig without a credential plugin (most CLI runs) never
    # needs the module, nor the subprocess machinery it brings.
    from secure_keys.kube.exec_auth import ExecConfig

    return ExecConfig.from_kubeconfig(section, base)


def load_kubeconfig(text: str) -> Any:
    """A kubeconfig's YAML, parsed with libyaml when PyYAML has it (the pure-Python loader
    costs the CLI a few milliseconds a command); raises ``yaml.YAMLError``."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader, C or Python


def _path(
    group: str, version: str, plural: str, namespace: str | None, name: str | None = None
) -> str:
    base = f"/api/{version}" if group == "" else f"/apis/{group}/{version}"
    if namespace is not None:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{plural}"
    if name is not None:
        base += f"/{quote(name, safe='')}"
    return base


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    def path(self, namespace: str | None, name: str | None = None, sub: str = "") -> str:
        return _path(self.group, self.version, self.plural, namespace, name) + (
            f"/{sub}" if sub else ""
        )


SECRETS = Resource("", "v1", "secrets")
CONFIGMAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
NAMESPACES = Resource("", "v1", "namespaces")
APIKEYS = Resource("securekeys.io", "v1alpha1", "apikeys")
KEYROLES = Resource("securekeys.io", "v1alpha1", "keyroles")


@dataclass(frozen=True)
class _Auth:
    """What one request authenticates with."""

    headers: Mapping[str, str] = field(repr=False)
    ssl: ssl.SSLContext | None = None
    """Set only for a client certificate from an exec plugin (else the connector's)."""
    credential: ExecCredential | None = None


class KubeApi:
    """JSON verbs against one API server. Use as an async context manager."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        limit: int = 64,
        timeout: float = 30,
        retry: RetryPolicy | None = None,
        user_agent: str = "secure-keys-controller",
        transport: Literal["aiohttp", "blocking"] = "aiohttp",
    ) -> None:
        self.credentials = credentials
        self.transport = transport
        self.retry = retry or RetryPolicy()
        self._limit = limit
        self._timeout = timeout
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._blocking: BlockingHttp | None = None
        self.exec_auth: ExecAuthenticator | None = None
        if credentials.exec is not None:
            from secure_keys.kube.exec_auth import ExecAuthenticator

            self.exec_auth = ExecAuthenticator(
                credentials.exec, server=credentials.server, ca_pem=credentials.ca_pem
            )
        self._exec_ssl: tuple[ExecCredential, ssl.SSLContext] | None = None

    async def __aenter__(self) -> Self:
        if self.transport == "blocking":
            self._blocking = BlockingHttp(
                self.credentials.server, self.credentials.ssl_context(), timeout=self._timeout
            )
            return self
        import aiohttp  # not at the top: the CLI's blocking transport never needs it

        connector = aiohttp.TCPConnector(
            ssl=self.credentials.ssl_context(), limit=self._limit, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": self._user_agent},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError(
                "KubeApi used outside its async context (or a watch on the blocking transport)"
            )
        return self._session

    async def _send(
        self, method: str, url: str, data: str | None, headers: dict[str, str], auth: _Auth
    ) -> tuple[int, bytes, str | None]:
        """One HTTP exchange on this client's transport: (status, body, Retry-After)."""
        if self._blocking is not None:
            headers["User-Agent"] = self._user_agent
            path = url[len(self.credentials.server) :]
            body = data.encode() if data is not None else None
            return self._blocking.send(method, path, body, headers, auth.ssl)
        session = self._require_session()
        extra: dict[str, Any] = {} if auth.ssl is None else {"ssl": auth.ssl}
        async with session.request(method, url, data=data, headers=headers, **extra) as response:
            return response.status, await response.read(), response.headers.get("Retry-After")

    async def _pause(self, seconds: float) -> None:
        """Wait before a retry: on the blocking transport the thread sleeps (nothing else
        runs beside the CLI's one request, and its coroutines run without an event loop:
        ``cli/kubeapi.py``); on aiohttp the loop does."""
        if self._blocking is not None:
            time.sleep(seconds)
            return
        import asyncio  # loaded already in every process that runs aiohttp

        await asyncio.sleep(seconds)

    async def client_credential(self) -> tuple[str | None, bytes | None, bytes | None]:
        """(token, certificate PEM, key PEM) this client authenticates with now, as the
        API server sees it: a client certificate, when there is one, wins (the API
        server tries x509 before tokens)."""
        token = self.credentials.bearer()
        cert, key = self.credentials.cert_pem, self.credentials.key_pem
        if self.exec_auth is not None:
            credential = await self.exec_auth.credential()
            token = credential.token or token
            if credential.cert_pem is not None and credential.key_pem is not None:
                cert, key = credential.cert_pem, credential.key_pem
        return token, cert, key

    async def _auth(self, rejected: ExecCredential | None = None) -> _Auth:
        headers = {"Accept": "application/json"}
        token = self.credentials.bearer()
        context: ssl.SSLContext | None = None
        credential: ExecCredential | None = None
        if self.exec_auth is not None:
            credential = await self.exec_auth.credential(rejected=rejected)
            token = credential.token or token
            if credential.cert_pem is not None and credential.key_pem is not None:
                if self._exec_ssl is None or self._exec_ssl[0] is not credential:
                    built = self.credentials.ssl_context(credential.cert_pem, credential.key_pem)
                    self._exec_ssl = (credential, built)
                context = self._exec_ssl[1]
        if token:
            if not token.isprintable() or " " in token:
                # An HTTP library refuses such a header quoting it, token and all.
                raise ValueError(
                    "the bearer token holds a space, a line break or another control "
                    "character (check the kubeconfig's token, its tokenFile or the "
                    "credential plugin's output)"
                )
            headers["Authorization"] = f"Bearer {token}"
        return _Auth(headers, context, credential)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
        accept: str | None = None,
    ) -> JsonObject:
        """One call, retried as ``RetryPolicy`` allows. ``accept`` replaces the default
        ``Accept: application/json`` (for another representation of the same resource)."""
        if self._blocking is None:
            self._require_session()
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"))
        url = self.credentials.server + path
        if query:
            url += "?" + urlencode(query)
        attempt = 0
        rejected: ExecCredential | None = None
        while True:
            auth = await self._auth(rejected)
            headers = dict(auth.headers)
            if accept is not None:
                headers["Accept"] = accept
            if data is not None:
                headers["Content-Type"] = content_type
            status, payload, retry_header = await self._send(method, url, data, headers, auth)
            retry_after = parse_retry_after(retry_header)
            if status < 400:
                result: JsonObject = json.loads(payload) if payload else {}
                return result
            if status == 401 and auth.credential is not None and rejected is None:
                rejected = auth.credential  # the plugin's credential expired early: once more
                continue
            error = _error(status, payload, retry_after)
            if attempt < self.retry.retries and retryable(method, status, error.retry_after):
                jitter = random.random()  # noqa: S311 - spreading retries, not a secret
                await self._pause(self.retry.delay(attempt, error.retry_after, jitter))
                attempt += 1
                continue
            raise error

    # -- verbs ------------------------------------------------------------------------
    async def get(self, resource: Resource, namespace: str | None, name: str) -> JsonObject:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
        metadata_only: bool = False,
    ) -> JsonObject:
        """One page of objects; its ``metadata.continue``, when set, asks for the next.

        With ``metadata_only`` the API server answers a ``PartialObjectMetadataList``:
        items hold ``apiVersion``, ``kind`` and ``metadata`` only (no spec, no status).
        """
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        if limit:
            query["limit"] = str(limit)
        if continue_:
            query["continue"] = continue_
        accept = METADATA_LIST_ACCEPT if metadata_only else None
        return await self.request("GET", resource.path(namespace), query=query, accept=accept)

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JsonObject]:
        """Watch events (``{"type": ..., "object": ...}``) after ``resource_version``.

        BOOKMARK events are yielded too (their object carries only a resourceVersion).
        An ERROR event raises: ``WatchExpired`` for 410, else ``ApiError``. The selectors
        are applied by the API server, so non-matching objects never reach this process.
        """
        session = self._require_session()
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        url = f"{self.credentials.server}{resource.path(namespace)}?{urlencode(query)}"
        import aiohttp  # a watch needs aiohttp's streaming; the session made it importable

        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        rejected: ExecCredential | None = None
        while True:
            auth = await self._auth(rejected)
            extra: dict[str, Any] = {} if auth.ssl is None else {"ssl": auth.ssl}
            async with session.get(
                url, headers=dict(auth.headers), timeout=timeout, **extra
            ) as response:
                if response.status == 401 and auth.credential is not None and rejected is None:
                    rejected = auth.credential
                    continue
                if response.status >= 400:
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    raise _error(response.status, await response.read(), retry_after)
                while line := await response.content.readline(max_line_length=_MAX_WATCH_LINE):
                    if not line.strip():
                        continue
                    event: JsonObject = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise _status_error(event.get("object") or {})
                    yield event
                return

    async def create(
        self, resource: Resource, namespace: str | None, body: JsonObject
    ) -> JsonObject:
        return await self.request("POST", resource.path(namespace), body=body)

    async def patch(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        patch: Any,
        *,
        kind: PatchType = "merge",
        subresource: str = "",
    ) -> JsonObject:
        return await self.request(
            "PATCH",
            resource.path(namespace, name, subresource),
            body=patch,
            content_type=_CONTENT_TYPES[kind],
        )

    async def replace(
        self, resource: Resource, namespace: str | None, name: str, body: JsonObject
    ) -> JsonObject:
        return await self.request("PUT", resource.path(namespace, name), body=body)

    async def delete(
        self,
        resource: Resource,
        namespace: str | None,
        name: str,
        *,
        preconditions: Mapping[str, str] | None = None,
    ) -> JsonObject:
        body: JsonObject | None = None
        if preconditions:
            body = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": preconditions}
        return await self.request("DELETE", resource.path(namespace, name), body=body)


def _status_error(document: Mapping[str, Any], status: int | None = None) -> ApiError:
    """An ApiError from a ``Status`` object (an error body or a watch ERROR event)."""
    code = status if status is not None else int(document.get("code") or 500)
    reason = str(document.get("reason", ""))
    message = str(document.get("message", ""))
    details = document.get("details")
    retry_after = None
    if isinstance(details, Mapping) and details.get("retryAfterSeconds"):
        retry_after = float(details["retryAfterSeconds"])
    if code == 410:
        return WatchExpired(code, reason, message, retry_after=retry_after)
    return ApiError(code, reason, message, retry_after=retry_after)


def _error(status: int, payload: bytes, retry_after: float | None = None) -> ApiError:
    try:
        document = json.loads(payload)
        if not isinstance(document, dict):
            raise ValueError(document)
    except ValueError:
        return ApiError(
            status, "", payload[:200].decode("utf-8", "replace"), retry_after=retry_after
        )
    error = _status_error(document, status)
    if retry_after is not None:
        error.retry_after = retry_after
    return error
