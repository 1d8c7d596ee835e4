"""Identities on any cluster: ServiceAccount tokens and client-cert users.

These go through the Kubernetes API only (TokenRequest, CertificateSigningRequest),
so the same helpers serve the local control plane and an existing cluster such
as kind, where we do not hold the CA key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from pathlib import Path

from kubernetes import client, config

from secure_keys_dev import kubeconfig, pki

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client"


def api_client(path: Path) -> client.ApiClient:
    """A Python client for the current context of a kubeconfig file."""
    return config.new_client_from_config(config_file=str(path))


def request_token(
    api: client.ApiClient,
    namespace: str,
    service_account: str,
    audiences: Sequence[str],
    expiration_seconds: int = 600,
) -> str:
    """A bound ServiceAccount token from the TokenRequest API."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=list(audiences), expiration_seconds=expiration_seconds
        )
    )
    response = client.CoreV1Api(api).create_namespaced_service_account_token(
        service_account, namespace, request
    )
    token: str = response.status.token
    return token


def csr_user_kubeconfig(
    admin_kubeconfig: Path,
    user: str,
    groups: Sequence[str],
    out: Path,
    *,
    timeout: float = 30.0,
) -> Path:
    """Have the cluster's signer issue a client cert for `user` and write its kubeconfig.

    Creates a CertificateSigningRequest for the kube-apiserver-client signer,
    approves it as the admin, waits for the certificate and deletes the request.
    """
    csr_pem, key_pem = pki.certificate_signing_request(user, groups)
    with api_client(admin_kubeconfig) as api:
        cert_pem = _issue(client.CertificatesV1Api(api), csr_pem, user, timeout)
    server, ca_pem, _ = kubeconfig.current_cluster(admin_kubeconfig)
    if ca_pem is None:
        raise ValueError(f"{admin_kubeconfig} has no certificate authority for its cluster")
    document = kubeconfig.build(
        server=server, ca_pem=ca_pem, user=user, cert_pem=cert_pem, key_pem=key_pem
    )
    return kubeconfig.write(out, document)


def _issue(
    certificates: client.CertificatesV1Api, csr_pem: bytes, user: str, timeout: float
) -> bytes:
    name = f"securekeys-{user}-{time.time_ns()}".lower().replace(":", "-")[:63]
    certificates.create_certificate_signing_request(
        client.V1CertificateSigningRequest(
            metadata=client.V1ObjectMeta(name=name),
            spec=client.V1CertificateSigningRequestSpec(
                request=base64.b64encode(csr_pem).decode(),
                signer_name=CLIENT_SIGNER,
                usages=["client auth"],
                expiration_seconds=24 * 3600,
            ),
        )
    )
    try:
        body = certificates.read_certificate_signing_request(name)
        body.status.conditions = [
            client.V1CertificateSigningRequestCondition(
                type="Approved",
                status="True",
                reason="SecureKeysTest",
                message="approved by the secure-keys test harness",
            )
        ]
        certificates.replace_certificate_signing_request_approval(name, body)
        deadline = time.monotonic() + timeout
        while True:
            status = certificates.read_certificate_signing_request(name).status
            if status.certificate:
                cert_pem = base64.b64decode(status.certificate)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"CSR {name} was approved but not signed within {timeout} s")
            time.sleep(0.1)
    finally:
        certificates.delete_certificate_signing_request(name)
    return cert_pem
