"""Certificates for the local control plane: a CA, serving certs and client certs.

Pure builders over `cryptography`'s x509 API. Nothing here touches the disk or
the network; `cluster` writes the PEM it gets from these functions. kopf's own
self-signed path needs oscrypto, which cannot parse OpenSSL >= 3.0.10 version
strings, so every certificate the project needs (API server, webhooks, users)
comes from here instead.

Keys are ECDSA P-256: quick to generate, and accepted by kube-apiserver for
serving, client authentication and service-account token signing (ES256).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY = datetime.timedelta(days=30)
_BACKDATE = datetime.timedelta(minutes=5)  # tolerate small clock differences


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both as PEM."""

    cert_pem: bytes
    key_pem: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_private_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @classmethod
    def generate(
        cls, common_name: str, validity: datetime.timedelta = DEFAULT_VALIDITY
    ) -> CertificateAuthority:
        key = new_private_key()
        name = _name(common_name)
        now = _now()
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
                    digital_signature=True,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return private_key_pem(self.key)

    def _issue(
        self,
        subject: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: Sequence[x509.GeneralName],
        validity: datetime.timedelta,
    ) -> KeyPair:
        key = new_private_key()
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), private_key_pem(key))

    def issue_server(
        self,
        common_name: str,
        *,
        ips: Sequence[str] = ("127.0.0.1",),
        dns_names: Sequence[str] = ("localhost",),
        validity: datetime.timedelta = DEFAULT_VALIDITY,
    ) -> KeyPair:
        """A TLS serving certificate valid for the given addresses and DNS names."""
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        return self._issue(_name(common_name), ExtendedKeyUsageOID.SERVER_AUTH, sans, validity)

    def issue_client(
        self,
        user: str,
        groups: Sequence[str] = (),
        *,
        validity: datetime.timedelta = DEFAULT_VALIDITY,
    ) -> KeyPair:
        """A client certificate: Kubernetes reads the user from CN and groups from O."""
        return self._issue(_name(user, groups), ExtendedKeyUsageOID.CLIENT_AUTH, (), validity)


def certificate_signing_request(user: str, groups: Sequence[str] = ()) -> tuple[bytes, bytes]:
    """A PKCS#10 request for a client cert (CSR PEM, private key PEM).

    Used against clusters whose CA key we do not hold: the request goes through
    the CertificateSigningRequest API and the cluster's own signer.
    """
    key = new_private_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(user, groups))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), private_key_pem(key)


@dataclass(frozen=True)
class NodeCertificates:
    """The certificates that let a kubelet and the API server authenticate each other."""

    kubelet_client: KeyPair
    """The kubelet's identity: CN ``system:node:<node>``, O ``system:nodes`` (the Node
    authorizer and NodeRestriction key on exactly these)."""
    kubelet_serving: KeyPair
    """The kubelet's HTTPS endpoint, valid for the node's address."""
    apiserver_kubelet_client: KeyPair
    """The API server's identity towards kubelets (logs, exec): group system:masters,
    which the kubelet's webhook authorization accepts."""


APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"


def issue_node_certificates(
    ca: CertificateAuthority, node_name: str, address: str
) -> NodeCertificates:
    return NodeCertificates(
        kubelet_client=ca.issue_client(f"system:node:{node_name}", ["system:nodes"]),
        kubelet_serving=ca.issue_server(node_name, ips=(address,), dns_names=("localhost",)),
        apiserver_kubelet_client=ca.issue_client(APISERVER_KUBELET_CLIENT, ["system:masters"]),
    )
