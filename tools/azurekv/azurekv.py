"""azurekv: an Azure Key Vault test double that this project wrote and owns.

NOT Microsoft's service, and never to hold a real secret. It exists because no Key Vault
emulator is served by the registries this project builds from. It speaks the documented
Key Vault REST API (keys, api-version 7.x) closely enough that the unmodified
``azure-keyvault-keys`` and ``azure-identity`` SDKs drive it, and implements what the
``azure`` KMS provider and its tests use:

- a token endpoint for a client-secret credential (``/{tenant}/oauth2/v2.0/token``,
  ``client_credentials`` grant) and the OpenID configuration document MSAL reads first;
- Key Vault's bearer challenge: a request without a valid token gets 401 with
  ``WWW-Authenticate: Bearer authorization="<authority>/<tenant>", resource="<resource>"``;
- RSA keys (2048-bit) with versions: create (a new version), rotate, get (latest or a
  version), update (enable / disable a version), delete (the key is gone: 404 after; the
  deleted key can be read under ``/deletedkeys``, but neither recovered nor purged);
- ``wrapkey`` / ``unwrapkey`` with RSA-OAEP-256 and RSA-OAEP;
- Key Vault's error bodies: 401 Unauthorized, 403 Forbidden (a disabled key version),
  404 KeyNotFound, 400 BadParameter (an unknown algorithm, a ciphertext that does not
  decrypt), 405 for other operations.

Tokens are stateless (an HMAC over client, audience and expiry under a key kept in the
data directory), so a restarted server honours tokens it issued before, as Entra ID
would. Keys (private keys included: test data) are kept in ``<data-dir>/state.json``,
rewritten after every change, and the TLS certificate it makes for itself on first start
in ``<data-dir>/tls.crt`` (trust that file, and only that, in the client).

Usage::

    python tools/azurekv/azurekv.py --port 8443 --data-dir DIR \\
        --tenant TENANT --client-id ID --client-secret-file FILE
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

RESOURCE = "https://vault.azure.net"
TOKEN_LIFETIME = 3600
KEY_SIZE = 2048
KEY_OPS = ["encrypt", "decrypt", "wrapKey", "unwrapKey"]
_OAEP = {
    "RSA-OAEP-256": lambda: padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    ),
    "RSA-OAEP": lambda: padding.OAEP(
        mgf=padding.MGF1(hashes.SHA1()),  # noqa: S303 - RSA-OAEP is SHA-1 by definition
        algorithm=hashes.SHA1(),  # noqa: S303
        label=None,
    ),
}
MAX_BODY = 64 * 1024
# 7.0 to 7.6, and the date-named versions that followed (2025-07-01, ...).
_API_VERSION = re.compile(r"(7\.[0-9]|20[2-9][0-9]-[01][0-9]-[0-3][0-9])(-preview)?\Z")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


class KvError(Exception):
    """An error answer in Key Vault's shape."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner

    def response(self) -> web.Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return web.json_response({"error": error}, status=self.status)


@dataclass
class Version:
    version: str
    private_pem: str
    enabled: bool
    created: int
    updated: int

    def private_key(self) -> rsa.RSAPrivateKey:
        key = serialization.load_pem_private_key(self.private_pem.encode(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise TypeError("state.json holds a key that is not RSA")
        return key


@dataclass
class Key:
    name: str
    versions: list[Version] = field(default_factory=list)

    @property
    def latest(self) -> Version:
        return self.versions[-1]

    def find(self, version: str) -> Version:
        if not version:
            return self.latest
        for entry in self.versions:
            if entry.version == version:
                return entry
        raise KvError(
            404, "KeyNotFound", f"A key with (name/id) {self.name}/{version} was not found"
        )


class Vault:
    """The keys, persisted to ``state.json`` after every change."""

    def __init__(self, data_dir: Path, base_url: str) -> None:
        self.path = data_dir / "state.json"
        self.base_url = base_url
        self.keys: dict[str, Key] = {}
        self.deleted: dict[str, Key] = {}
        if self.path.exists():
            raw = json.loads(self.path.read_text())
            for name, versions in raw["keys"].items():
                self.keys[name] = Key(name, [Version(**v) for v in versions])

    def save(self) -> None:
        document = {
            "keys": {name: [vars(v) for v in key.versions] for name, key in self.keys.items()}
        }
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle)
        os.replace(tmp, self.path)

    def get(self, name: str) -> Key:
        key = self.keys.get(name)
        if key is None:
            raise KvError(
                404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault"
            )
        return key

    def new_version(self, name: str) -> Version:
        now = int(time.time())
        private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        version = Version(uuid.uuid4().hex, pem, True, now, now)
        self.keys.setdefault(name, Key(name)).versions.append(version)
        self.save()
        return version

    def bundle(self, key: Key, version: Version) -> dict[str, Any]:
        public = version.private_key().public_key().public_numbers()
        return {
            "key": {
                "kid": f"{self.base_url}/keys/{key.name}/{version.version}",
                "kty": "RSA",
                "key_ops": KEY_OPS,
                "n": _int_b64url(public.n),
                "e": _int_b64url(public.e),
            },
            "attributes": {
                "enabled": version.enabled,
                "created": version.created,
                "updated": version.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
        }


@dataclass(frozen=True)
class Identity:
    tenant: str
    client_id: str
    client_secret: bytes
    token_key: bytes


def _token(identity: Identity, audience: str, now: int) -> str:
    claims = json.dumps(
        {"sub": identity.client_id, "aud": audience, "exp": now + TOKEN_LIFETIME},
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(identity.token_key, claims, hashlib.sha256).digest()
    return f"{_b64url(claims)}.{_b64url(mac)}"


def _token_valid(identity: Identity, token: str, now: int) -> bool:
    body, _, mac = token.partition(".")
    try:
        claims_raw, presented = _unb64url(body), _unb64url(mac)
    except (ValueError, TypeError):
        return False
    expected = hmac.new(identity.token_key, claims_raw, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, presented):
        return False
    claims = json.loads(claims_raw)
    return bool(
        claims["aud"] == RESOURCE and claims["sub"] == identity.client_id and claims["exp"] > now
    )


def build_app(vault: Vault, identity: Identity, authority: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    challenge = f'Bearer authorization="{authority}/{identity.tenant}", resource="{RESOURCE}"'

    async def openid_configuration(request: web.Request) -> web.Response:
        tenant = request.match_info["tenant"]
        if tenant != identity.tenant:
            return web.json_response({"error": "invalid_tenant"}, status=400)
        base = f"{authority}/{tenant}"
        return web.json_response(
            {
                "issuer": f"{base}/v2.0",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "tenant_region_scope": "WW",
                "token_endpoint_auth_methods_supported": ["client_secret_post"],
            }
        )

    async def token(request: web.Request) -> web.Response:
        form = await request.post()

        def refuse(code: str, why: str, status: int = 400) -> web.Response:
            return web.json_response({"error": code, "error_description": why}, status=status)

        if request.match_info["tenant"] != identity.tenant:
            return refuse("invalid_request", "AADSTS90002: tenant not found")
        if form.get("grant_type") != "client_credentials":
            return refuse("unsupported_grant_type", "only client_credentials is served")
        secret = str(form.get("client_secret", "")).encode()
        if form.get("client_id") != identity.client_id or not hmac.compare_digest(
            secret, identity.client_secret
        ):
            return refuse("invalid_client", "AADSTS7000215: invalid client secret", 401)
        scopes = str(form.get("scope", "")).split()
        if f"{RESOURCE}/.default" not in scopes:
            return refuse("invalid_scope", "AADSTS70011: the scope is not served here")
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": TOKEN_LIFETIME,
                "ext_expires_in": TOKEN_LIFETIME,
                "access_token": _token(identity, RESOURCE, int(time.time())),
            }
        )

    @web.middleware
    async def key_vault(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if not request.path.startswith(("/keys", "/deletedkeys")):
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not _token_valid(identity, presented, int(time.time())):
            response = KvError(
                401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token."
            ).response()
            response.headers["WWW-Authenticate"] = challenge
            return response
        if not _API_VERSION.match(request.query.get("api-version", "")):
            return KvError(
                400, "BadParameter", "The api-version parameter is missing or unsupported"
            ).response()
        try:
            return await handler(request)
        except KvError as exc:
            return exc.response()

    async def body(request: web.Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise KvError(400, "BadParameter", "The request body is not JSON") from None
        if not isinstance(data, dict):
            raise KvError(400, "BadParameter", "The request body must be a JSON object")
        return data

    async def create(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        data = await body(request)
        if data.get("kty") not in ("RSA", "RSA-HSM"):
            raise KvError(400, "BadParameter", "Only RSA keys are served by this test vault")
        if data.get("key_size", KEY_SIZE) != KEY_SIZE:
            raise KvError(400, "BadParameter", f"Only {KEY_SIZE}-bit keys are served here")
        version = vault.new_version(name)
        return web.json_response(vault.bundle(vault.keys[name], version))

    async def rotate(request: web.Request) -> web.Response:
        key = vault.get(request.match_info["name"])
        version = vault.new_version(key.name)
        return web.json_response(vault.bundle(key, version))

    def enabled(key: Key, version: Version, operation: str) -> None:
        if not version.enabled:
            raise KvError(
                403,
                "Forbidden",
                f"Operation {operation} is not allowed on a disabled key.",
                "KeyDisabled",
            )

    async def get(request: web.Request) -> web.Response:
        key = vault.get(request.match_info["name"])
        version = key.find(request.match_info.get("version", ""))
        enabled(key, version, "get")
        return web.json_response(vault.bundle(key, version))

    async def update(request: web.Request) -> web.Response:
        key = vault.get(request.match_info["name"])
        version = key.find(request.match_info.get("version", ""))
        attributes = (await body(request)).get("attributes", {})
        if "enabled" in attributes:
            if not isinstance(attributes["enabled"], bool):
                raise KvError(400, "BadParameter", "attributes.enabled must be a boolean")
            version.enabled = attributes["enabled"]
            version.updated = int(time.time())
            vault.save()
        return web.json_response(vault.bundle(key, version))

    async def delete(request: web.Request) -> web.Response:
        key = vault.get(request.match_info["name"])
        bundle = vault.bundle(key, key.latest)
        vault.deleted[key.name] = vault.keys.pop(key.name)
        vault.save()
        now = int(time.time())
        bundle.update(
            recoveryId=f"{vault.base_url}/deletedkeys/{key.name}",
            deletedDate=now,
            scheduledPurgeDate=now + 90 * 86400,
        )
        return web.json_response(bundle)

    async def get_deleted(request: web.Request) -> web.Response:
        key = vault.deleted.get(request.match_info["name"])
        if key is None:
            raise KvError(404, "KeyNotFound", "Deleted key not found")
        return web.json_response(
            {
                **vault.bundle(key, key.latest),
                "recoveryId": f"{vault.base_url}/deletedkeys/{key.name}",
            }
        )

    async def key_operation(request: web.Request) -> web.Response:
        key = vault.get(request.match_info["name"])
        version = key.find(request.match_info["version"])
        operation = request.match_info["operation"]
        if operation not in ("wrapkey", "unwrapkey"):
            raise KvError(405, "MethodNotAllowed", f"Operation {operation} is not served here")
        data = await body(request)
        alg, value = data.get("alg"), data.get("value")
        if alg not in _OAEP:
            raise KvError(400, "BadParameter", f"Algorithm {str(alg)[:32]} is not supported")
        if not isinstance(value, str):
            raise KvError(400, "BadParameter", "value must be base64url text")
        enabled(key, version, "wrapKey" if operation == "wrapkey" else "unwrapKey")
        try:
            raw = _unb64url(value)
        except (ValueError, TypeError):
            raise KvError(400, "BadParameter", "value is not base64url") from None
        private = version.private_key()
        if operation == "wrapkey":
            out = private.public_key().encrypt(raw, _OAEP[alg]())
        else:
            try:
                out = private.decrypt(raw, _OAEP[alg]())
            except ValueError:
                raise KvError(
                    400, "BadParameter", "The parameter is incorrect: value does not decrypt"
                ) from None
        kid = f"{vault.base_url}/keys/{key.name}/{version.version}"
        return web.json_response({"kid": kid, "value": _b64url(out)})

    app.middlewares.append(key_vault)
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    app.router.add_post("/keys/{name}/create", create)
    app.router.add_post("/keys/{name}/rotate", rotate)
    app.router.add_get("/keys/{name}", get)
    app.router.add_get("/keys/{name}/", get)
    app.router.add_delete("/keys/{name}", delete)
    app.router.add_get("/keys/{name}/{version}", get)
    app.router.add_patch("/keys/{name}/{version}", update)
    app.router.add_post("/keys/{name}/{version}/{operation}", key_operation)
    app.router.add_get("/deletedkeys/{name}", get_deleted)
    return app


def ensure_certificate(data_dir: Path, host: str) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` (an IP address), made once per data dir."""
    cert, key = data_dir / "tls.crt", data_dir / "tls.key"
    if cert.exists() and key.exists():
        return cert, key
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azurekv test vault")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _token_key(data_dir: Path) -> bytes:
    path = data_dir / "token.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    return path.read_bytes()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="azurekv", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret-file", type=Path, required=True)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("azurekv listens on a loopback address only")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    cert, key = ensure_certificate(args.data_dir, args.host)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    base_url = f"https://{args.host}:{args.port}"
    identity = Identity(
        args.tenant,
        args.client_id,
        args.client_secret_file.read_bytes().strip(),
        _token_key(args.data_dir),
    )
    app = build_app(Vault(args.data_dir, base_url), identity, base_url)
    web.run_app(app, host=args.host, port=args.port, ssl_context=tls, print=None, access_log=None)


if __name__ == "__main__":
    main()
