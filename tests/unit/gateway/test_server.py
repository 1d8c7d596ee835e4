"""The gateway's edge over real sockets: TLS with certificate reload, health, readiness,
the mutate endpoint's status codes, its canonical log line, and the watch-fed caches."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from structlog.testing import capture_logs

from secure_keys.gateway.server import build_app
from secure_keys.gateway.tls import CertificateReloader
from secure_keys.gateway.webhook.caches import GatewayCaches, project_apikey, project_keyrole
from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.kube.informer import LISTED, InformerEvent
from secure_keys_dev import pki
from tests.unit.gateway.helpers import NS, body, pod, review

CA = pki.CertificateAuthority.generate("gateway-test-ca")


def _write_pair(directory: Path, common_name: str) -> None:
    pair = CA.issue_server(common_name, ips=("127.0.0.1",), dns_names=("localhost",))
    (directory / "tls.crt").write_bytes(pair.cert_pem)
    (directory / "tls.key").write_bytes(pair.key_pem)


def _client_context() -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=CA.cert_pem.decode())
    context.check_hostname = False
    return context


def _synced_caches() -> GatewayCaches:
    caches = GatewayCaches()
    for cache in caches.all:
        cache.apply(LISTED)
    return caches


def _added(obj: dict[str, Any]) -> InformerEvent:
    return InformerEvent("ADDED", obj)


def _serve(
    app: web.Application, context: ssl.SSLContext | None, test: Callable[[str], Awaitable[None]]
) -> None:
    async def main() -> None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        try:
            await test(f"{'https' if context else 'http'}://127.0.0.1:{port}")
        finally:
            await runner.cleanup()

    asyncio.run(main())


async def _peer_common_name(url: str) -> str:
    host, port = url.removeprefix("https://").split(":")
    _reader, writer = await asyncio.open_connection(host, int(port), ssl=_client_context())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    name = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        x509.oid.NameOID.COMMON_NAME
    )
    return str(name[0].value)


def test_certificate_is_reloaded_when_the_files_change(tmp_path: Path) -> None:
    _write_pair(tmp_path, "first")
    reloader = CertificateReloader(tmp_path / "tls.crt", tmp_path / "tls.key")
    app = build_app(_synced_caches(), GatewaySettings())

    async def test(url: str) -> None:
        assert await _peer_common_name(url) == "first"
        assert reloader.check() is False  # nothing changed
        # A half-written pair (new certificate, old key) is not served.
        other = CA.issue_server("second", ips=("127.0.0.1",))
        (tmp_path / "tls.crt").write_bytes(other.cert_pem)
        with capture_logs() as logs:
            assert reloader.check() is False
        assert [e["event"] for e in logs] == ["tls.reload_failed"]
        assert await _peer_common_name(url) == "first"
        (tmp_path / "tls.key").write_bytes(other.key_pem)
        os.utime(tmp_path / "tls.key", ns=(1, 1))  # a different mtime even on coarse clocks
        assert reloader.check() is True
        assert await _peer_common_name(url) == "second"

    _serve(app, reloader.context, test)


def test_health_readiness_and_status_codes(tmp_path: Path) -> None:
    caches = GatewayCaches()
    app = build_app(caches, GatewaySettings())

    async def test(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{url}/readyz") as response:
                assert response.status == 503
            # Not synced yet: an opted-in pod is denied (fail closed), not admitted.
            async with session.post(f"{url}/mutate", data=body(review(pod()))) as response:
                assert response.status == 200
                answer = (await response.json())["response"]
                assert answer["allowed"] is False
                assert answer["status"]["code"] == 503
            for cache in caches.all:
                cache.apply(LISTED)
            async with session.get(f"{url}/readyz") as response:
                assert response.status == 200
            for garbage in (b"", b"{", b"[]", b'{"kind":"AdmissionReview"}', body({"kind": "Pod"})):
                async with session.post(f"{url}/mutate", data=garbage) as response:
                    assert response.status == 400, garbage

    _serve(app, None, test)


def test_one_canonical_log_line_per_request() -> None:
    caches = _synced_caches()
    caches.apikeys.apply(_added({"metadata": {"name": "stripe-live", "namespace": NS}}))
    caches.service_accounts.apply(_added({"metadata": {"name": "app", "namespace": NS}}))
    caches.keyroles.apply(
        _added(
            {
                "metadata": {"name": "r", "namespace": NS},
                "spec": {
                    "subjects": [{"kind": "ServiceAccount", "name": "app"}],
                    "keys": {"names": ["stripe-live"]},
                    "permissions": ["read"],
                },
            }
        )
    )
    app = build_app(caches, GatewaySettings())

    async def test(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            with capture_logs() as logs:
                async with session.post(f"{url}/mutate", data=body(review(pod()))) as response:
                    answer = (await response.json())["response"]
                async with session.post(f"{url}/mutate", data=b"nope") as response:
                    assert response.status == 400
        assert answer["allowed"] is True
        assert answer["patchType"] == "JSONPatch"
        assert answer["uid"] == review(pod())["request"]["uid"]
        lines = [e for e in logs if e["event"] == "admission"]
        assert len(lines) == 2
        first = lines[0]
        assert first["outcome"] == "injected"
        assert first["namespace"] == NS
        assert first["keys"] == ["stripe-live"]
        assert first["mode"] == "native"
        assert first["duration_ms"] >= 0
        assert lines[1]["outcome"] == "bad-request"

    _serve(app, None, test)


def test_caches_follow_informer_events() -> None:
    caches = GatewayCaches()
    apikeys = caches.apikeys
    assert not caches.synced
    stripe: dict[str, Any] = {
        "metadata": {"name": "stripe-live", "namespace": NS, "labels": {"tier": "live"}},
        "spec": {
            "source": {"sealed": {"ciphertext": "CANARY-CIPHERTEXT"}},
            "delivery": {"fileName": "stripe.key"},
        },
    }
    apikeys.apply(_added(stripe))
    view = apikeys.get(NS, "stripe-live")
    assert view is not None
    assert view.file_name == "stripe.key"
    assert "CANARY" not in repr(view)  # the source never stays in the gateway
    gone: dict[str, Any] = {
        **stripe,
        "metadata": {**stripe["metadata"], "deletionTimestamp": "2024-01-01T00:00:00Z"},
    }
    apikeys.apply(InformerEvent("MODIFIED", gone))
    assert apikeys.in_namespace(NS)["stripe-live"].deleting
    apikeys.apply(InformerEvent("DELETED", {"metadata": {"name": "stripe-live", "namespace": NS}}))
    assert apikeys.get(NS, "stripe-live") is None
    assert len(apikeys) == 0
    assert apikeys.in_namespace(NS) == {}
    # A KeyRole the projection cannot read is left out (and counted), never half-kept.
    caches.keyroles.apply(_added({"metadata": {"name": "bad", "namespace": NS}, "spec": {}}))
    assert caches.keyroles.get(NS, "bad") is None
    assert caches.keyroles.rejected == 1
    for cache in caches.all:
        cache.apply(LISTED)
    assert caches.synced


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"metadata": {"name": "k", "namespace": NS}}, "k"),
        (
            {"metadata": {"name": "k", "namespace": NS}, "spec": {"delivery": {"fileName": "f"}}},
            "f",
        ),
        ({"metadata": {"name": "k", "namespace": NS}, "spec": "x"}, "k"),
        ({"metadata": {}}, None),
    ],
)
def test_apikey_projection(obj: dict[str, Any], expected: str | None) -> None:
    view = project_apikey(obj)
    assert (view.file_name if view else None) == expected


def test_keyrole_projection_defaults_permissions_to_read() -> None:
    view = project_keyrole(
        {
            "metadata": {"name": "r", "namespace": NS},
            "spec": {"subjects": [{"kind": "Group", "name": "g"}], "keys": {"names": ["a"]}},
        }
    )
    assert view is not None
    assert view.rules.permissions == ("read",)
    assert json.loads(view.rules.model_dump_json())["keys"]["names"] == ["a"]
