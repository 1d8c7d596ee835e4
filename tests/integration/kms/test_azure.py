"""The Key Vault test double (tools/azurekv) itself, and what the ``azure`` provider
promises beyond the shared contract (``test_contract.py -k azure``).

The server is checked on the wire, with plain HTTPS requests (trusting only its own
certificate): the bearer challenge the SDK relies on, the token endpoint's refusals,
Key Vault's error bodies, and state and tokens that survive a restart. The provider is
checked through the unmodified SDKs against it: the recorded key version, the wrap
context bound by its tag, and its options.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import KmsCorrupt, KmsDenied
from secure_keys.core.kms import azure
from secure_keys.core.kms.base import WrappedKey
from secure_keys.core.kms.registry import KmsConfig
from tests.integration.kms.harness import build_provider
from tests.integration.kms.servers.azure import CLIENT_ID, TENANT, AzureTestServer, open_server

CONTEXT = KeyBinding("payments", "stripe-live", 3).wrap_context(envelope.FORMAT_V1)
API = "api-version=7.5"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[AzureTestServer]:
    with open_server(tmp_path / "azure") as running:
        yield cast(AzureTestServer, running)


def _call(
    server: AzureTestServer,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
    token: str | None = None,
) -> tuple[int, dict[str, str], Any]:
    tls = ssl.create_default_context(cafile=str(server.ca_file))
    data = None
    headers = {}
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(server.url + path, data, headers, method=method)  # noqa: S310 - https to our own server
    try:
        with urllib.request.urlopen(request, context=tls, timeout=10) as answer:  # noqa: S310
            return answer.status, dict(answer.headers), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _token(server: AzureTestServer) -> str:
    status, _, answer = _call(
        server,
        "POST",
        f"/{TENANT}/oauth2/v2.0/token",
        form={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": server.secret_file.read_text(),
            "scope": "https://vault.azure.net/.default",
        },
    )
    assert status == 200, answer
    token: str = answer["access_token"]
    return token


def test_a_request_without_a_token_gets_the_key_vault_challenge(server: AzureTestServer) -> None:
    status, headers, answer = _call(server, "GET", f"/keys/primary?{API}")
    assert status == 401
    assert answer["error"]["code"] == "Unauthorized"
    assert headers["WWW-Authenticate"] == (
        f'Bearer authorization="{server.url}/{TENANT}", resource="https://vault.azure.net"'
    )
    forged = _token(server)[:-2] + "AA"
    assert _call(server, "GET", f"/keys/primary?{API}", token=forged)[0] == 401


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"client_secret": "wrong"}, "invalid_client"),
        ({"client_id": "someone-else"}, "invalid_client"),
        ({"grant_type": "password"}, "unsupported_grant_type"),
        ({"scope": "https://management.azure.com/.default"}, "invalid_scope"),
    ],
)
def test_the_token_endpoint_refuses_what_it_should(
    server: AzureTestServer, change: dict[str, str], error: str
) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": server.secret_file.read_text(),
        "scope": "https://vault.azure.net/.default",
        **change,
    }
    status, _, answer = _call(server, "POST", f"/{TENANT}/oauth2/v2.0/token", form=form)
    assert status in (400, 401)
    assert answer["error"] == error


def test_key_vault_errors_have_key_vault_shapes(server: AzureTestServer) -> None:
    token = _token(server)
    status, _, answer = _call(server, "GET", "/keys/primary", token=token)
    assert (status, answer["error"]["code"]) == (400, "BadParameter")  # no api-version
    status, _, answer = _call(server, "GET", f"/keys/nothing?{API}", token=token)
    assert (status, answer["error"]["code"]) == (404, "KeyNotFound")
    _, _, bundle = _call(server, "GET", f"/keys/primary?{API}", token=token)
    kid: str = bundle["key"]["kid"]
    version = kid.rsplit("/", 1)[1]
    wrap = f"/keys/primary/{version}/wrapkey?{API}"
    unwrap = f"/keys/primary/{version}/unwrapkey?{API}"
    status, _, answer = _call(
        server, "POST", wrap, body={"alg": "RSA1_5", "value": "AAAA"}, token=token
    )
    assert (status, answer["error"]["code"]) == (400, "BadParameter")
    status, _, answer = _call(
        server, "POST", unwrap, body={"alg": "RSA-OAEP-256", "value": "AAAA"}, token=token
    )
    assert (status, answer["error"]["code"]) == (400, "BadParameter")
    status, _, wrapped = _call(
        server, "POST", wrap, body={"alg": "RSA-OAEP-256", "value": "c2VjcmV0"}, token=token
    )
    assert status == 200
    assert wrapped["kid"] == kid
    _call(
        server,
        "PATCH",
        f"/keys/primary/{version}?{API}",
        body={"attributes": {"enabled": False}},
        token=token,
    )
    status, _, answer = _call(
        server, "POST", unwrap, body={"alg": "RSA-OAEP-256", "value": wrapped["value"]}, token=token
    )
    assert (status, answer["error"]["code"], answer["error"]["innererror"]["code"]) == (
        403,
        "Forbidden",
        "KeyDisabled",
    )
    _call(
        server,
        "PATCH",
        f"/keys/primary/{version}?{API}",
        body={"attributes": {"enabled": True}},
        token=token,
    )
    status, _, answer = _call(
        server, "POST", unwrap, body={"alg": "RSA-OAEP-256", "value": wrapped["value"]}, token=token
    )
    assert (status, answer["value"]) == (200, "c2VjcmV0")


def test_keys_and_tokens_survive_a_restart(server: AzureTestServer) -> None:
    token = _token(server)
    before = _call(server, "GET", f"/keys/other?{API}", token=token)[2]["key"]
    server.stop()
    server.start()
    status, _, after = _call(server, "GET", f"/keys/other?{API}", token=token)
    assert status == 200
    assert after["key"] == before


def test_the_wrap_records_the_version_and_binds_the_context(server: AzureTestServer) -> None:
    provider = server.provider()
    dek = bytearray(range(32))
    wrapped = provider.wrap(dek, CONTEXT)
    assert wrapped.key_version == server._versions["primary"]
    assert len(wrapped.ciphertext) == 1 + 2 + 256 + 32  # RSA-2048 and the context tag
    other = KeyBinding("payments", "stripe-live", 4).wrap_context(envelope.FORMAT_V1)
    with pytest.raises(KmsCorrupt, match="did not authenticate"):
        provider.unwrap(wrapped, other)
    tampered = bytearray(wrapped.ciphertext)
    tampered[-1] ^= 1
    with pytest.raises(KmsCorrupt):
        provider.unwrap(WrappedKey(*wrapped[:3], bytes(tampered)), CONTEXT)
    for bad in (b"\x02" + wrapped.ciphertext[1:], wrapped.ciphertext[:-1]):
        with pytest.raises(KmsCorrupt, match="malformed"):
            provider.unwrap(WrappedKey(*wrapped[:3], bad), CONTEXT)
    with pytest.raises(KmsCorrupt, match="malformed key version"):
        provider.unwrap(WrappedKey(*wrapped[:2], "latest", wrapped.ciphertext), CONTEXT)


def test_a_deleted_key_is_denied_to_a_provider_built_before(server: AzureTestServer) -> None:
    provider = server.provider()
    wrapped = provider.wrap(bytearray(32), CONTEXT)
    server.destroy()
    with pytest.raises(KmsDenied, match="404"):
        provider.unwrap(wrapped, CONTEXT)


def test_a_wrong_client_secret_is_denied(server: AzureTestServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the secret")
    options = {**server.options(), "clientSecretFile": str(wrong)}
    provider = build_provider(KmsConfig("azure", server.key_id(), options))
    with pytest.raises(KmsDenied, match="credential"):
        provider.key_version()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": "blue"}, "unknown azure KMS option"),
        ({"credential": "password"}, "credential must be one of"),
        ({"credential": "client-secret", "tenantId": "t"}, "needs tenantId, clientId"),
        ({"algorithm": "RSA1_5"}, "RSA-OAEP-256 or RSA-OAEP"),
        ({"authorityHost": "http://login"}, "https://"),
        ({"maxAttempts": "0"}, "maxAttempts"),
        ({"verifyChallengeResource": "maybe"}, "true or false"),
    ],
)
def test_options_are_checked(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        azure.AzureKmsOptions.parse(options)


@pytest.mark.parametrize(
    "key_id",
    [
        "https://vault.vault.azure.net/keys/k/0123456789abcdef0123456789abcdef",
        "http://vault.vault.azure.net/keys/k",
        "https://vault.vault.azure.net/secrets/k",
        "vault/keys/k",
    ],
)
def test_the_key_id_is_a_versionless_key_identifier(key_id: str) -> None:
    with pytest.raises(ValueError, match="versionless Key Vault key identifier"):
        build_provider(KmsConfig("azure", key_id, {"credential": "cli"}))
