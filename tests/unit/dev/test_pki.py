"""Certificates for the local control plane: what Kubernetes reads from them."""

from __future__ import annotations

import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secure_keys_dev import pki


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.CertificateAuthority.generate("test-ca")


def test_ca_is_a_ca(ca: pki.CertificateAuthority) -> None:
    constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    ca.certificate.verify_directly_issued_by(ca.certificate)


def test_server_cert_names_its_addresses_and_chains_to_the_ca(
    ca: pki.CertificateAuthority,
) -> None:
    pair = ca.issue_server("api", ips=("127.0.0.1", "10.96.0.1"), dns_names=("localhost", "k"))
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    cert.verify_directly_issued_by(ca.certificate)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "k"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    ]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key = load_pem_private_key(pair.key_pem, None)
    assert key.public_key() == cert.public_key()


def test_client_cert_carries_user_in_cn_and_groups_in_o(ca: pki.CertificateAuthority) -> None:
    pair = ca.issue_client("alice", ["devs", "system:masters"])
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    cert.verify_directly_issued_by(ca.certificate)
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    assert [a.value for a in cn] == ["alice"]
    assert [a.value for a in orgs] == ["devs", "system:masters"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_each_certificate_has_its_own_key(ca: pki.CertificateAuthority) -> None:
    assert ca.issue_client("a").key_pem != ca.issue_client("a").key_pem


def test_csr_carries_the_subject_and_matches_its_key() -> None:
    csr_pem, key_pem = pki.certificate_signing_request("bob", ["g1"])
    csr = x509.load_pem_x509_csr(csr_pem)
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "bob"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "g1"
    assert load_pem_private_key(key_pem, None).public_key() == csr.public_key()
