"""A small asynchronous Kubernetes REST client over aiohttp: the controller's only API I/O.

The controller needs a handful of verbs on a handful of resources (ApiKeys and their
status, Secrets, Events, a ConfigMap), with resourceVersion preconditions. A thin JSON
client keeps that explicit and fast, instead of the generated (synchronous, untyped)
client. Credentials come from a kubeconfig (client certificate or token) or from the
in-cluster ServiceAccount, whose token file is re-read as the kubelet rotates it.

Errors are ``ApiError`` with the HTTP status and the API server's own message. Request
bodies never appear in an error or a log: they may hold sealed blobs.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self
from urllib.parse import quote, urlencode

import aiohttp
import yaml

JsonObject = dict[str, Any]
PatchType = Literal["merge", "json", "strategic"]

_CONTENT_TYPES: dict[PatchType, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
    "strategic": "application/strategic-merge-patch+json",
}
_IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ApiError(Exception):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class Credentials:
    """Where the API server is and how to authenticate to it."""

    server: str
    ca_pem: bytes | None = None
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    token: str | None = None
    token_file: Path | None = None

    def __repr__(self) -> str:
        return f"Credentials(server={self.server!r})"

    @classmethod
    def from_kubeconfig(cls, path: Path, context: str | None = None) -> Self:
        document = yaml.safe_load(path.read_text())
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
        return cls(
            server=cluster["server"].rstrip("/"),
            ca_pem=data(cluster, "certificate-authority"),
            cert_pem=data(user, "client-certificate"),
            key_pem=data(user, "client-key"),
            token=user.get("token"),
            token_file=Path(token_file) if token_file else None,
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

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_pem is not None:
            context.load_verify_locations(cadata=self.ca_pem.decode())
        if self.cert_pem is not None and self.key_pem is not None:
            # ssl loads client keys only from files: write them to a private temporary
            # directory for the duration of the call.
            with tempfile.TemporaryDirectory(prefix="securekeys-tls-") as tmp:
                cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
                cert.write_bytes(self.cert_pem)
                key.touch(mode=0o600)
                key.write_bytes(self.key_pem)
                context.load_cert_chain(cert, key)
        return context

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token


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


class KubeApi:
    """JSON verbs against one API server. Use as an async context manager."""

    def __init__(self, credentials: Credentials, *, limit: int = 64, timeout: float = 30) -> None:
        self.credentials = credentials
        self._limit = limit
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(
            ssl=self.credentials.ssl_context(), limit=self._limit, enable_cleanup_closed=True
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"User-Agent": "secure-keys-controller"},
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JsonObject:
        if self._session is None:
            raise RuntimeError("KubeApi used outside its async context")
        headers = {"Accept": "application/json"}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":"))
            headers["Content-Type"] = content_type
        url = self.credentials.server + path
        if query:
            url += "?" + urlencode(query)
        async with self._session.request(method, url, data=data, headers=headers) as response:
            payload = await response.read()
            if response.status >= 400:
                raise _error(response.status, payload)
            result: JsonObject = json.loads(payload) if payload else {}
            return result

    # -- verbs ------------------------------------------------------------------------
    async def get(self, resource: Resource, namespace: str | None, name: str) -> JsonObject:
        return await self.request("GET", resource.path(namespace, name))

    async def list(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        label_selector: str | None = None,
        limit: int | None = None,
        continue_: str | None = None,
    ) -> JsonObject:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if limit:
            query["limit"] = str(limit)
        if continue_:
            query["continue"] = continue_
        return await self.request("GET", resource.path(namespace), query=query)

    async def watch(
        self,
        resource: Resource,
        namespace: str | None,
        *,
        resource_version: str,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[JsonObject]:
        """Watch events (``{"type": ..., "object": ...}``) after ``resource_version``."""
        if self._session is None:
            raise RuntimeError("KubeApi used outside its async context")
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        headers = {"Accept": "application/json"}
        token = self.credentials.bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        url = f"{self.credentials.server}{resource.path(namespace)}?{urlencode(query)}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=timeout_seconds + 30)
        async with self._session.get(url, headers=headers, timeout=timeout) as response:
            if response.status >= 400:
                raise _error(response.status, await response.read())
            async for line in response.content:
                if line.strip():
                    event: JsonObject = json.loads(line)
                    yield event

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


def _error(status: int, payload: bytes) -> ApiError:
    try:
        document = json.loads(payload)
        return ApiError(status, str(document.get("reason", "")), str(document.get("message", "")))
    except (ValueError, AttributeError):
        return ApiError(status, "", payload[:200].decode("utf-8", "replace"))
