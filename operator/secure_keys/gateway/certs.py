"""Owns the gateway's serving certificate and its CA, when the gateway manages them
(``--certs-secret``, as the Helm chart runs it).

One replica, elected through a Lease (``secure_keys.kube.leader``), issues a CA and a
serving certificate into one Secret, writes the CA bundle into the ``caBundle`` of the
gateway's MutatingWebhookConfiguration, and renews both before they expire. Every replica
copies the serving pair from the Secret to the files it serves from, which
``tls.CertificateReloader`` picks up without a restart.

The guarantee (docs/gateway.md, "Certificates"): the CA is long-lived and the serving
certificates short-lived. Renewing a serving certificate changes nothing anyone trusts.
A CA rotation happens in two steps: ``ca_overlap`` before the CA expires its successor is
generated and added to the bundle (webhook ``caBundle``, and the bundle every newly
admitted pod's key container trusts), while the old CA keeps signing; at ``ca_overlap / 2``
the successor starts signing, and the old CA stays in the bundle until it expires. So the
API server trusts every certificate any replica serves at any moment, and a pod admitted
at most ``ca_overlap / 2`` before the switch (with the default values, six months) trusts
the new CA before it is used; open streams are never cut, since a TLS connection keeps
the certificate it was opened with.

When the bundle changes, the leader restarts the gateway Deployment (one replica at a
time: the chart's rolling update keeps every replica available) so that every replica
injects the new bundle into the pods it admits.

The Secret is made (empty, of type ``GATEWAY_CERTS_TYPE``) by the Helm chart, never by
the gateway: its ServiceAccount may get and update that one Secret and create none (a
Secret writer that can also read Secrets could otherwise mint service-account tokens).
A missing Secret, or one of another type, is a clear error and nothing is served.

Secret format: ``ca.crt``/``ca.key`` (the signing CA), ``tls.crt``/``tls.key`` (the
serving pair), ``bundle.crt`` (every trusted CA, PEM, signing CA first), between the two
steps of a CA rotation ``next.crt``/``next.key``, and after one ``previous.crt`` (the CA
that signed before, until it expires; no key). The bundle is always rebuilt from these
CAs and nothing else: a Secret whose bundle holds any other certificate, or whose keys do
not match their certificates, is refused (hand-editing cannot plant a trusted CA). Keys
are ECDSA P-256 in PKCS#8 PEM. Nothing here logs key material.

Emergency replacement (``securekeys.io/replace-ca``): for a CA whose key may have leaked,
a new CA signs at once and every older CA leaves the bundle in the same write. The cost is
stated in docs/gateway.md: pods admitted before trust only the old CAs, so their key
container fails its TLS handshakes with the gateway until they are restarted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_keys.kube.client import SECRETS, ApiError, Credentials, KubeApi, Resource
from secure_keys.kube.leader import LeaderElector, LeaseTiming

if TYPE_CHECKING:
    from secure_keys.gateway.server import GatewayOptions

_log = structlog.get_logger("secure_keys.gateway.certs")

WEBHOOKS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations")
DEPLOYMENTS = Resource("apps", "v1", "deployments")
BUNDLE_ANNOTATION = "securekeys.io/ca-bundle-sha256"
"""On the gateway Deployment's pod template: the bundle its pods inject (a restart key)."""
ROTATE_CA_ANNOTATION = "securekeys.io/rotate-ca"
"""On the certificates Secret: a new value asks for a CA rotation now (its two steps,
``ca_overlap / 2`` apart): ``kubectl annotate secret ... securekeys.io/rotate-ca=1``."""
ROTATED_CA_ANNOTATION = "securekeys.io/rotated-ca"
"""Written by the gateway: the ``rotate-ca`` value it has honoured."""
REPLACE_CA_ANNOTATION = "securekeys.io/replace-ca"
"""On the certificates Secret: a new value replaces the CA at once (the emergency mode for
a compromised CA): a new CA signs and the bundle holds it alone."""
REPLACED_CA_ANNOTATION = "securekeys.io/replaced-ca"
"""Written by the gateway: the ``replace-ca`` value it has honoured."""
GATEWAY_CERTS_TYPE = "securekeys.io/gateway-certs"
"""The certificates Secret's type (the chart makes it; the secret-types policy admits it)."""

CA_CERT, CA_KEY = "ca.crt", "ca.key"
TLS_CERT, TLS_KEY = "tls.crt", "tls.key"
NEXT_CERT, NEXT_KEY = "next.crt", "next.key"
PREVIOUS_CERT = "previous.crt"
BUNDLE = "bundle.crt"
_FIELDS = (CA_CERT, CA_KEY, TLS_CERT, TLS_KEY, BUNDLE)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind ours
_PEM_END = b"-----END CERTIFICATE-----"
HOUR = datetime.timedelta(hours=1)
_ORGANIZATION = "secure-keys"


@dataclass(frozen=True)
class CertPolicy:
    """Lifetimes and names; the defaults are the chart's."""

    ca_validity: datetime.timedelta = 43800 * HOUR
    ca_overlap: datetime.timedelta = 8760 * HOUR
    server_validity: datetime.timedelta = 2160 * HOUR
    server_renew_before: datetime.timedelta = 720 * HOUR
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not datetime.timedelta(0) < self.ca_overlap < self.ca_validity:
            raise ValueError("need 0 < ca overlap < ca validity")
        if not datetime.timedelta(0) < self.server_renew_before < self.server_validity:
            raise ValueError("need 0 < server renew-before < server validity")
        if not self.dns_names and not self.ip_addresses:
            raise ValueError("the serving certificate needs a DNS name or an IP address")
        for ip in self.ip_addresses:
            ipaddress.ip_address(ip)  # ValueError names nothing secret


@dataclass(frozen=True)
class Authority:
    """A CA: its certificate and private key (PEM)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_pem)


@dataclass(frozen=True)
class CertState:
    """What the Secret holds, parsed."""

    ca: Authority
    tls_cert_pem: bytes
    tls_key_pem: bytes = field(repr=False)
    next: Authority | None = None
    previous: bytes | None = None
    """The CA certificate that signed before ``ca`` (PEM), trusted until it expires."""

    @property
    def bundle(self) -> tuple[bytes, ...]:
        """Every trusted CA certificate (PEM): the signing CA, its successor, its
        predecessor; made from these alone."""
        return tuple(p for p in (self.ca.cert_pem, self.next_pem, self.previous) if p)

    @property
    def next_pem(self) -> bytes | None:
        return self.next.cert_pem if self.next is not None else None

    @property
    def bundle_pem(self) -> bytes:
        return b"".join(self.bundle)

    def to_data(self) -> dict[str, str]:
        """The Secret's ``data`` (base64)."""
        raw = {
            CA_CERT: self.ca.cert_pem,
            CA_KEY: self.ca.key_pem,
            TLS_CERT: self.tls_cert_pem,
            TLS_KEY: self.tls_key_pem,
            BUNDLE: self.bundle_pem,
        }
        if self.next is not None:
            raw[NEXT_CERT], raw[NEXT_KEY] = self.next.cert_pem, self.next.key_pem
        if self.previous is not None:
            raw[PREVIOUS_CERT] = self.previous
        return {k: base64.b64encode(v).decode() for k, v in raw.items()}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> CertState:
        """Parse a Secret's ``data``; ValueError (naming only the field) if unusable."""
        raw: dict[str, bytes] = {}
        for name, value in data.items():
            if not isinstance(value, str):
                raise ValueError(f"{name} is not a string")
            raw[name] = base64.b64decode(value, validate=True)
        missing = [k for k in _FIELDS if k not in raw]
        if missing:
            raise ValueError(f"missing {missing}")
        unknown = sorted(set(raw) - {*_FIELDS, NEXT_CERT, NEXT_KEY, PREVIOUS_CERT})
        if unknown:
            raise ValueError(f"unknown fields {[u[:32] for u in unknown[:4]]}")
        if (NEXT_CERT in raw) != (NEXT_KEY in raw):
            raise ValueError("next.crt and next.key go together")
        nxt = None
        if NEXT_CERT in raw:
            nxt = Authority(raw[NEXT_CERT], raw[NEXT_KEY])
        state = cls(
            Authority(raw[CA_CERT], raw[CA_KEY]),
            raw[TLS_CERT],
            raw[TLS_KEY],
            nxt,
            raw.get(PREVIOUS_CERT),
        )
        state.check()
        # Compared as parsed certificates (PEM whitespace is not a difference).
        stored = [x509.load_pem_x509_certificate(p) for p in split_bundle(raw[BUNDLE])]
        ours = [x509.load_pem_x509_certificate(p) for p in state.bundle]
        if stored != ours:
            raise ValueError(
                "bundle.crt is not exactly ca.crt, next.crt and previous.crt"
                " (a certificate was added or removed by hand)"
            )
        return state

    def check(self) -> None:
        """Every part parses, each CA is one we issue (self-signed, a CA) and its key
        matches it, and the serving pair belongs together; else ValueError."""
        for field_name, authority in ((CA_CERT, self.ca), (NEXT_CERT, self.next)):
            if authority is not None:
                _check_ca(field_name, authority.certificate)
                if _load_key(authority.key_pem).public_key() != authority.certificate.public_key():
                    raise ValueError(f"the key does not match {field_name}")
        if self.previous is not None:
            _check_ca(PREVIOUS_CERT, x509.load_pem_x509_certificate(self.previous))
        cert = x509.load_pem_x509_certificate(self.tls_cert_pem)
        if _load_key(self.tls_key_pem).public_key() != cert.public_key():
            raise ValueError("tls.key does not match tls.crt")


def _check_ca(field_name: str, cert: x509.Certificate) -> None:
    """ValueError unless ``cert`` has the shape ``issue_ca`` gives: a self-signed CA
    certificate of this project (a CA from elsewhere is refused, not trusted)."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    organization = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if (
        constraints is None
        or not constraints.ca
        or [a.value for a in organization] != [_ORGANIZATION]
        or not _signed_by(cert, cert)
    ):
        raise ValueError(f"{field_name} is not a secure-keys gateway CA")


def split_bundle(pem: bytes) -> tuple[bytes, ...]:
    """The certificates of a PEM bundle, each as its own PEM block."""
    parts = []
    for chunk in pem.split(_PEM_END):
        start = chunk.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            parts.append(chunk[start:] + _PEM_END + b"\n")
    if not parts:
        raise ValueError("no certificate in the bundle")
    return tuple(parts)


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an EC private key")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue_ca(now: datetime.datetime, validity: datetime.timedelta) -> Authority:
    """A new self-signed CA, valid from ``now`` (less a few minutes) for ``validity``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, f"secure-keys-gateway-ca-{now:%Y%m%d%H%M%S}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_server(ca: Authority, now: datetime.datetime, policy: CertPolicy) -> tuple[bytes, bytes]:
    """A serving pair signed by ``ca`` for the policy's names; never outlives ``ca``."""
    ca_cert, ca_key = ca.certificate, _load_key(ca.key_pem)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in policy.dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in policy.ip_addresses]
    common = policy.dns_names[0] if policy.dns_names else policy.ip_addresses[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + policy.server_validity, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (InvalidSignature, ValueError, TypeError):  # not this CA's, or another issuer
        return False
    return True


def _server_current(state: CertState, now: datetime.datetime, policy: CertPolicy) -> bool:
    cert = x509.load_pem_x509_certificate(state.tls_cert_pem)
    if not _signed_by(cert, state.ca.certificate):
        return False
    if cert.not_valid_after_utc - now <= policy.server_renew_before:
        return False
    dns, ips = _names(cert)
    want_ips = {str(ipaddress.ip_address(ip)) for ip in policy.ip_addresses}
    return dns == set(policy.dns_names) and ips == want_ips


def plan(
    state: CertState | None,
    now: datetime.datetime,
    policy: CertPolicy,
    *,
    rotate_ca: bool = False,
    replace_ca: bool = False,
) -> CertState:
    """The state the Secret should hold at ``now``; ``state`` itself when nothing is due.

    Deterministic in its decisions (it generates keys, nothing else is random):
    1. nothing usable: a new CA and serving pair;
    2. CA within ``ca_overlap`` of expiry (or ``rotate_ca``: a rotation asked for now)
       and no successor: make one, add it to the bundle;
    3. successor published ``ca_overlap / 2`` ago, or CA within ``ca_overlap / 2`` of
       expiry: the successor signs from now on (made here if step 2 never ran, which only
       a lapse of the gateway for that long allows);
    4. the previous CA leaves the bundle when it expires;
    5. a serving certificate not signed by the signing CA, near its expiry, or for other
       names is reissued.
    ``replace_ca`` (the emergency mode) skips the overlap: a new CA signs now, and the old
    ones (signing, successor, previous) are dropped from the bundle at once.
    The bundle is never stored apart: it is ``ca``, ``next`` and ``previous``.
    """
    if state is None or replace_ca:
        ca = issue_ca(now, policy.ca_validity)
        cert, key = issue_server(ca, now, policy)
        return CertState(ca, cert, key)
    new = state
    remaining = new.ca.certificate.not_valid_after_utc - now
    if (remaining <= policy.ca_overlap or rotate_ca) and new.next is None:
        new = replace(new, next=issue_ca(now, policy.ca_validity))
    if new.next is not None and (
        remaining <= policy.ca_overlap / 2
        or now - (new.next.certificate.not_valid_before_utc + _BACKDATE) >= policy.ca_overlap / 2
    ):
        new = replace(new, ca=new.next, next=None, previous=new.ca.cert_pem)
    if (
        new.previous is not None
        and x509.load_pem_x509_certificate(new.previous).not_valid_after_utc <= now
    ):
        new = replace(new, previous=None)
    if not _server_current(new, now, policy):
        cert, key = issue_server(new.ca, now, policy)
        new = replace(new, tls_cert_pem=cert, tls_key_pem=key)
    return new


def bundle_digest(bundle_pem: bytes) -> str:
    return hashlib.sha256(bundle_pem).hexdigest()[:32]


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> bool:
    """Replace ``path`` with ``data`` unless it already holds it; True if written."""
    with contextlib.suppress(OSError):
        if path.read_bytes() == data:
            return False
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)
    return True


@dataclass(frozen=True)
class CertOptions:
    """``--certs-*`` flags."""

    secret: str
    namespace: str
    identity: str
    policy: CertPolicy
    webhook: str = ""
    lease: str = ""
    deployment: str = ""
    interval: float = 60.0
    lease_timing: LeaseTiming = field(default_factory=LeaseTiming)


class UnusableSecret(RuntimeError):
    """The certificates Secret is missing or refused; the message says which and why
    (names and short prefixes only, never key material)."""


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class CertManager:
    """The Secret's reader (every replica) and its writer (the elected one)."""

    def __init__(
        self,
        api: KubeApi,
        options: CertOptions,
        cert_file: Path,
        key_file: Path,
        *,
        clock: Callable[[], datetime.datetime] = _utcnow,
    ) -> None:
        self.api = api
        self.options = options
        self.cert_file, self.key_file = cert_file, key_file
        self.clock = clock
        self.leading = False
        self.served: CertState | None = None

    async def read(self) -> tuple[CertState | None, dict[str, Any]]:
        """The Secret's state (None while it is still empty, as the chart made it) and the
        Secret itself; ``UnusableSecret`` if it is missing, of another type, or holds
        anything ``CertState.from_data`` refuses (nothing is served from it)."""
        where = f"{self.options.namespace}/{self.options.secret}"
        try:
            body = await self.api.get(SECRETS, self.options.namespace, self.options.secret)
        except ApiError as exc:
            if exc.not_found:
                raise UnusableSecret(
                    f"Secret {where} does not exist: it is made by the Helm chart"
                    " (templates/gateway-tls-secret.yaml), never by the gateway"
                ) from None
            raise
        if body.get("type") != GATEWAY_CERTS_TYPE:
            raise UnusableSecret(
                f"Secret {where} is of type {str(body.get('type'))[:64]!r},"
                f" not {GATEWAY_CERTS_TYPE}"
            )
        data = body.get("data") or {}
        if not data:
            return None, body
        try:
            return CertState.from_data(data), body
        except (ValueError, TypeError) as exc:
            raise UnusableSecret(
                f"Secret {where} is refused: {str(exc)[:160]}; to start over with a new CA,"
                " empty its data (pods admitted before must then be restarted)"
            ) from None

    async def reconcile(self) -> CertState:
        """As the leader: bring the Secret, the webhook's caBundle and the Deployment's
        bundle annotation to the planned state; returns it."""
        current, body = await self.read()
        annotations = (body.get("metadata") or {}).get("annotations") or {}
        asked = str(annotations.get(ROTATE_CA_ANNOTATION, ""))[:64]
        rotate_ca = bool(asked) and asked != annotations.get(ROTATED_CA_ANNOTATION)
        emergency = str(annotations.get(REPLACE_CA_ANNOTATION, ""))[:64]
        replace_ca = bool(emergency) and emergency != annotations.get(REPLACED_CA_ANNOTATION)
        wanted = plan(
            current,
            self.clock(),
            self.options.policy,
            rotate_ca=rotate_ca,
            replace_ca=replace_ca and current is not None,
        )
        if wanted is not current or rotate_ca or replace_ca:
            written = body["metadata"].setdefault("annotations", {})
            if rotate_ca:
                written[ROTATED_CA_ANNOTATION] = asked
                _log.info("certs.ca_rotation_requested", secret=self.options.secret)
            if replace_ca:
                written[REPLACED_CA_ANNOTATION] = emergency
                _log.warning("certs.ca_replaced", secret=self.options.secret)
            body["data"] = wanted.to_data()  # carries its resourceVersion: a race is a 409
            await self.api.replace(SECRETS, self.options.namespace, self.options.secret, body)
            _log.info(
                "certs.written",
                secret=self.options.secret,
                ca_expires=wanted.ca.certificate.not_valid_after_utc.isoformat(),
                cas_trusted=len(wanted.bundle),
                successor=wanted.next is not None,
            )
        await self._publish_bundle(wanted.bundle_pem)
        if current is not None and set(current.bundle) != set(wanted.bundle):
            await self._restart_replicas(wanted.bundle_pem)
        return wanted

    async def _publish_bundle(self, bundle_pem: bytes) -> None:
        if not self.options.webhook:
            return
        config = await self.api.get(WEBHOOKS, None, self.options.webhook)
        encoded = base64.b64encode(bundle_pem).decode()
        ops: list[dict[str, Any]] = []
        for index, hook in enumerate(config.get("webhooks") or []):
            if (hook.get("clientConfig") or {}).get("caBundle") == encoded:
                continue
            ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": hook["name"]})
            ops.append(
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
            )
        if ops:
            await self.api.patch(WEBHOOKS, None, self.options.webhook, ops, kind="json")
            _log.info("certs.ca_bundle_published", webhook=self.options.webhook)

    async def _restart_replicas(self, bundle_pem: bytes) -> None:
        """A rolling restart of the gateway, so every replica injects the new bundle."""
        if not self.options.deployment:
            return
        patch = {
            "spec": {
                "template": {
                    "metadata": {"annotations": {BUNDLE_ANNOTATION: bundle_digest(bundle_pem)}}
                }
            }
        }
        await self.api.patch(DEPLOYMENTS, self.options.namespace, self.options.deployment, patch)
        _log.info("certs.replicas_restarted", deployment=self.options.deployment)

    def serve_files(self, state: CertState) -> bool:
        """Write the serving pair where the TLS listener reads it; True if it changed.

        The key goes first: the reloader ignores a pair that does not match and loads it
        once both files are new.
        """
        changed = write_atomically(self.key_file, state.tls_key_pem)
        changed = write_atomically(self.cert_file, state.tls_cert_pem, 0o644) or changed
        self.served = state
        if changed:
            _log.info("certs.files_written", cert=str(self.cert_file))
        return changed

    async def bootstrap(self, elector: LeaderElector) -> CertState:
        """Wait until the Secret holds a usable state (made by whichever replica wins the
        Lease first), write the files, and return it."""
        acquiring = asyncio.create_task(elector.acquire(), name="certs-lease")
        try:
            while True:
                state, _ = await self.read()
                if acquiring.done():
                    acquiring.result()
                    self.leading = True
                    state = await self.reconcile()
                if state is not None:
                    self.serve_files(state)
                    return state
                await asyncio.sleep(1.0)
        finally:
            if not acquiring.done():
                acquiring.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await acquiring

    async def follow(self) -> None:
        """Every replica: keep the files in step with the Secret."""
        while True:
            await asyncio.sleep(self.options.interval)
            try:
                state, _ = await self.read()
            except UnusableSecret as exc:  # the pair already served keeps serving
                _log.error("certs.secret_refused", error=str(exc))
                continue
            except Exception as exc:  # retried next round; the old pair keeps serving
                _log.warning("certs.read_failed", error=type(exc).__name__)
                continue
            if state is not None:
                self.serve_files(state)

    async def lead(self, make_elector: Callable[[], LeaderElector]) -> None:
        """Campaign for the Lease; while held, reconcile every ``interval``."""
        while True:
            elector = make_elector()
            await elector.acquire()  # at once when bootstrap won the Lease: our own term
            self.leading = True
            lost = asyncio.Event()
            holding = asyncio.create_task(elector.hold(lost.set), name="certs-hold")
            try:
                while not lost.is_set():
                    try:
                        state = await self.reconcile()
                        self.serve_files(state)
                    except UnusableSecret as exc:  # written by nobody; the next round retries
                        _log.error("certs.secret_refused", error=str(exc))
                    except Exception as exc:  # the next round retries
                        _log.warning("certs.reconcile_failed", error=type(exc).__name__)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.options.interval)
            finally:
                self.leading = False
                holding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await holding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--certs-*`` flags of ``secure-keys-gateway``."""
    group = parser.add_argument_group(
        "managed certificates",
        "with --certs-secret, the gateway issues and renews its own serving certificate "
        "and CA in that Secret (one replica, elected through a Lease) and writes the pair "
        "to --tls-cert/--tls-key; the CA bundle is injected for the broker",
    )
    group.add_argument("--certs-secret", default="", help="Secret holding the CA and pair")
    group.add_argument("--certs-webhook", default="", help="webhook configuration to patch")
    group.add_argument("--certs-lease", default="", help="Lease for the election")
    group.add_argument("--certs-deployment", default="", help="restarted when the bundle changes")
    group.add_argument("--certs-dns-name", action="append", default=[], help="repeatable")
    group.add_argument("--certs-ip", action="append", default=[], help="repeatable")
    group.add_argument("--certs-interval", type=float, default=60.0, help="seconds")
    group.add_argument("--ca-validity-hours", type=float, default=43800)
    group.add_argument("--ca-overlap-hours", type=float, default=8760)
    group.add_argument("--server-validity-hours", type=float, default=2160)
    group.add_argument("--server-renew-before-hours", type=float, default=720)


def options_from(args: argparse.Namespace, namespace: str) -> CertOptions | None:
    """The parsed ``--certs-*`` flags; None without ``--certs-secret``."""
    if not args.certs_secret:
        return None
    policy = CertPolicy(
        ca_validity=args.ca_validity_hours * HOUR,
        ca_overlap=args.ca_overlap_hours * HOUR,
        server_validity=args.server_validity_hours * HOUR,
        server_renew_before=args.server_renew_before_hours * HOUR,
        dns_names=tuple(args.certs_dns_name),
        ip_addresses=tuple(args.certs_ip),
    )
    return CertOptions(
        secret=args.certs_secret,
        namespace=namespace,
        identity=os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}",
        policy=policy,
        webhook=args.certs_webhook,
        lease=args.certs_lease,
        deployment=args.certs_deployment,
        interval=args.certs_interval,
    )


async def run_with_certs(
    options: GatewayOptions,
    certs: CertOptions,
    serve: Callable[[GatewayOptions], Awaitable[None]],
) -> None:
    """Bootstrap the serving pair, then ``serve`` with it while keeping it current; the
    pods this replica admits trust the bundle it found at start."""
    async with KubeApi(
        Credentials.discover(options.kubeconfig), user_agent="secure-keys-gateway-certs"
    ) as api:
        manager = CertManager(api, certs, options.tls_cert, options.tls_key)

        def elector() -> LeaderElector:
            return LeaderElector(
                api,
                certs.namespace,
                certs.lease or certs.secret,
                certs.identity,
                certs.lease_timing,
            )

        state = await manager.bootstrap(elector())
        settings = replace(options.settings, broker_ca_pem=state.bundle_pem.decode())
        tasks = [
            asyncio.create_task(manager.follow(), name="certs-follow"),
            asyncio.create_task(manager.lead(elector), name="certs-lead"),
        ]
        try:
            await serve(replace(options, settings=settings))
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
