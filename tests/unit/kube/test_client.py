"""``KubeApi`` against a real HTTP server: exec credential plugins, 429/503 retries, 410.

The server (tests/unit/kube/apiserver.py) is a real aiohttp HTTP(S) server on 127.0.0.1,
not a mock: the client's requests cross a socket, TLS included. The exec plugin is a real
program (tests/unit/kube/plugin.py) that the client runs as a subprocess.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from secure_keys.kube.client import (
    SECRETS,
    ApiError,
    Credentials,
    KubeApi,
    RetryPolicy,
    WatchExpired,
    parse_retry_after,
    retryable,
)
from secure_keys.kube.exec_auth import ExecConfig, ExecPluginError, parse_exec_credential
from secure_keys_dev import pki
from tests.unit.kube.apiserver import ScriptedServer, ok, status, stream

PLUGIN = Path(__file__).with_name("plugin.py")
SECRET_PATH = "/api/v1/namespaces/ns/secrets/s"
FAST = RetryPolicy(retries=3, max_delay=0.05, base_delay=0.01, jitter=0.0)


def _kubeconfig(
    tmp_path: Path,
    server: str,
    *,
    env: dict[str, str] | None = None,
    api_version: str = "client.authentication.k8s.io/v1",
    interactive: str | None = "Never",
    ca_pem: bytes | None = None,
    args: tuple[str, ...] = (),
) -> Path:
    state = tmp_path / "plugin"
    state.mkdir(exist_ok=True)
    plugin_env = {"PLUGIN_STATE": str(state), "PLUGIN_API_VERSION": api_version} | (env or {})
    exec_section: dict[str, Any] = {
        "apiVersion": api_version,
        "command": sys.executable,
        "args": [str(PLUGIN), *args],
        "env": [{"name": k, "value": v} for k, v in plugin_env.items()],
        "provideClusterInfo": True,
    }
    if interactive is not None:
        exec_section["interactiveMode"] = interactive
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        (tmp_path / "ca.crt").write_bytes(ca_pem)
        cluster["certificate-authority"] = "ca.crt"
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": {"exec": exec_section}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(document))
    return path


def _plugin_calls(tmp_path: Path) -> list[dict[str, Any]]:
    calls = tmp_path / "plugin" / "calls.jsonl"
    if not calls.exists():
        return []
    return [json.loads(line) for line in calls.read_text().splitlines()]


def _accept_tokens(*tokens: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") in {f"Bearer {t}" for t in tokens}:
            return ok({"kind": "Secret", "metadata": {"name": "s"}})
        return status(401, "Unauthorized")

    return handler


# -- exec credential plugins ----------------------------------------------------------------


def test_exec_plugin_token_is_sent_and_cached_until_it_expires(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", SECRET_PATH, _accept_tokens("token-1"))
            config = _kubeconfig(
                tmp_path,
                server.url,
                env={"PLUGIN_EXPIRES_IN": "3600", "PLUGIN_MODE": "a b; $(echo no-shell)"},
                args=("--profile", "dev; rm -rf /"),
            )
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                for _ in range(3):
                    await api.get(SECRETS, "ns", "s")
                assert api.exec_auth is not None
                assert api.exec_auth.runs == 1
        [call] = _plugin_calls(tmp_path)
        # argv and env as written, with no shell between (the ';' and '$(' stay literal).
        assert call["argv"] == ["--profile", "dev; rm -rf /"]
        assert call["mode"] == "a b; $(echo no-shell)"
        assert call["info"]["kind"] == "ExecCredential"
        assert call["info"]["apiVersion"] == "client.authentication.k8s.io/v1"
        assert call["info"]["spec"]["interactive"] is False
        assert call["info"]["spec"]["cluster"]["server"] == server.url
        assert call["stdin"] == ""  # stdin closed: never interactive

    asyncio.run(scenario())


def test_exec_plugin_runs_again_when_its_credential_is_about_to_expire(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", SECRET_PATH, _accept_tokens("token-1", "token-2", "token-3"))
            # 5 s left is inside the renewal margin: every request needs a new credential.
            config = _kubeconfig(tmp_path, server.url, env={"PLUGIN_EXPIRES_IN": "5"})
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                for _ in range(3):
                    await api.get(SECRETS, "ns", "s")
                assert api.exec_auth is not None
                assert api.exec_auth.runs == 3
        tokens = [s.headers["Authorization"] for s in server.seen]
        assert tokens == ["Bearer token-1", "Bearer token-2", "Bearer token-3"]

    asyncio.run(scenario())


def test_401_runs_the_plugin_again_once_and_repeats_the_request(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", SECRET_PATH, _accept_tokens("token-2"))  # token-1 was revoked
            config = _kubeconfig(tmp_path, server.url)
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                assert (await api.get(SECRETS, "ns", "s"))["metadata"]["name"] == "s"
                assert api.exec_auth is not None
                assert api.exec_auth.runs == 2
                await api.get(SECRETS, "ns", "s")  # the new one is cached
                assert api.exec_auth.runs == 2

    asyncio.run(scenario())


def test_401_with_a_fresh_credential_too_is_an_error_not_a_loop(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", SECRET_PATH, _accept_tokens())
            config = _kubeconfig(tmp_path, server.url)
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                with pytest.raises(ApiError) as caught:
                    await api.get(SECRETS, "ns", "s")
                assert caught.value.status == 401
                assert api.exec_auth is not None
                assert api.exec_auth.runs == 2
        assert len(server.seen) == 2

    asyncio.run(scenario())


def test_a_failing_plugin_is_named_and_its_stdout_never_quoted(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            config = _kubeconfig(
                tmp_path, server.url, env={"PLUGIN_FAIL": "1", "PLUGIN_TOKEN_PREFIX": "CANARY"}
            )
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                with pytest.raises(ExecPluginError) as caught:
                    await api.get(SECRETS, "ns", "s")
        message = str(caught.value)
        assert sys.executable in message
        assert "status 3" in message
        assert "has no credentials configured" in message  # its stderr helps the user
        assert "CANARY" not in message  # the token it printed before failing does not
        assert server.seen == []

    asyncio.run(scenario())


def test_a_missing_plugin_names_the_command_and_the_install_hint(tmp_path: Path) -> None:
    config = ExecConfig.from_kubeconfig(
        {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "securekeys-no-such-plugin",
            "installHint": "install it with: pip install no-such-plugin",
        }
    )
    creds = Credentials(server="http://127.0.0.1:9", exec=config)

    async def scenario() -> None:
        async with KubeApi(creds) as api:
            await api.get(SECRETS, "ns", "s")

    with pytest.raises(ExecPluginError, match=r"securekeys-no-such-plugin.*pip install"):
        asyncio.run(scenario())


def test_interactive_mode_rules() -> None:
    base = {"command": "x", "apiVersion": "client.authentication.k8s.io/v1"}
    with pytest.raises(ExecPluginError, match="interactiveMode is required"):
        ExecConfig.from_kubeconfig(base)
    beta = ExecConfig.from_kubeconfig(
        {**base, "apiVersion": "client.authentication.k8s.io/v1beta1"}
    )
    assert beta.interactive_mode == "IfAvailable"
    with pytest.raises(ExecPluginError, match="apiVersion"):
        ExecConfig.from_kubeconfig({**base, "apiVersion": "client.authentication.k8s.io/v1alpha1"})


def test_interactive_mode_always_fails_without_running_the_plugin(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            config = _kubeconfig(tmp_path, server.url, interactive="Always")
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                with pytest.raises(ExecPluginError, match="no terminal"):
                    await api.get(SECRETS, "ns", "s")

    asyncio.run(scenario())
    assert _plugin_calls(tmp_path) == []


def test_plugin_answering_another_api_version_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            config = _kubeconfig(
                tmp_path,
                server.url,
                api_version="client.authentication.k8s.io/v1beta1",
                env={"PLUGIN_API_VERSION": "client.authentication.k8s.io/v1"},
            )
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                with pytest.raises(ExecPluginError, match="answered apiVersion"):
                    await api.get(SECRETS, "ns", "s")

    asyncio.run(scenario())


def test_exec_plugin_client_certificate_authenticates_over_tls(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.generate("test-ca")
    serving = ca.issue_server("apiserver")
    client = ca.issue_client("exec-user", ("team",))
    (tmp_path / "client.crt").write_bytes(client.cert_pem)
    (tmp_path / "client.key").write_bytes(client.key_pem)
    (tmp_path / "serving.crt").write_bytes(serving.cert_pem)
    (tmp_path / "serving.key").write_bytes(serving.key_pem)
    (tmp_path / "ca-for-server.crt").write_bytes(ca.cert_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "serving.crt", tmp_path / "serving.key")
    context.load_verify_locations(tmp_path / "ca-for-server.crt")
    context.verify_mode = ssl.CERT_REQUIRED  # no client certificate, no handshake

    async def scenario() -> None:
        async with ScriptedServer(ssl_context=context) as server:
            server.on("GET", SECRET_PATH, _accept_tokens())  # a token would not do
            server.on("GET", "/api/v1/namespaces/ns/configmaps/c", _cert_only)
            config = _kubeconfig(
                tmp_path,
                server.url,
                ca_pem=ca.cert_pem,
                env={
                    "PLUGIN_CERT": str(tmp_path / "client.crt"),
                    "PLUGIN_KEY": str(tmp_path / "client.key"),
                },
            )
            async with KubeApi(Credentials.from_kubeconfig(config)) as api:
                await api.request("GET", "/api/v1/namespaces/ns/configmaps/c")
        [seen] = server.seen
        assert seen.peer_common_name == "exec-user"
        assert "Authorization" not in seen.headers

    asyncio.run(scenario())


async def _cert_only(request: web.Request) -> web.StreamResponse:
    return ok({"kind": "ConfigMap"})


# -- 429 / 503 and Retry-After ---------------------------------------------------------------


def _scripted(*answers: Callable[[], web.StreamResponse]) -> Callable[..., Any]:
    queue = list(answers)

    async def handler(request: web.Request) -> web.StreamResponse:
        return queue.pop(0)() if len(queue) > 1 else queue[0]()

    return handler


def test_429_waits_as_long_as_retry_after_says() -> None:
    async def scenario() -> float:
        async with ScriptedServer() as server:
            server.on(
                "GET",
                SECRET_PATH,
                _scripted(
                    lambda: status(429, "TooManyRequests", "slow down", **{"Retry-After": "1"}),
                    lambda: ok({"kind": "Secret"}),
                ),
            )
            creds = Credentials(server=server.url)
            async with KubeApi(creds, retry=RetryPolicy(jitter=0.0)) as api:
                started = time.monotonic()
                await api.get(SECRETS, "ns", "s")
                elapsed = time.monotonic() - started
            assert len(server.seen) == 2
            return elapsed

    elapsed = asyncio.run(scenario())
    assert 1.0 <= elapsed < 2.0


def test_429_retries_are_bounded_and_retry_after_is_capped() -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            # An hour asked, max_delay 0.05 s given: the test would time out uncapped.
            server.on(
                "PATCH",
                SECRET_PATH,
                _scripted(lambda: status(429, "TooManyRequests", "", **{"Retry-After": "3600"})),
            )
            async with KubeApi(Credentials(server=server.url), retry=FAST) as api:
                with pytest.raises(ApiError) as caught:
                    await api.patch(SECRETS, "ns", "s", {"data": {}})
            assert caught.value.status == 429
            assert caught.value.retry_after == 3600
            assert len(server.seen) == 1 + FAST.retries  # PATCH too: 429 is never processed

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("method", "retry_after", "attempts"),
    [
        ("GET", None, 4),  # idempotent: retried
        ("DELETE", None, 4),
        ("POST", None, 1),  # may have been processed: not retried
        ("PATCH", None, 1),
        ("POST", "1", 4),  # Retry-After: refused before processing, retried
    ],
)
def test_503_is_retried_only_where_safe(
    method: str, retry_after: str | None, attempts: int
) -> None:
    headers = {"Retry-After": retry_after} if retry_after else {}

    async def scenario() -> None:
        async with ScriptedServer() as server:
            path = "/api/v1/namespaces/ns/secrets"
            server.on(
                method, path, _scripted(lambda: status(503, "ServiceUnavailable", "", **headers))
            )
            async with KubeApi(Credentials(server=server.url), retry=FAST) as api:
                with pytest.raises(ApiError) as caught:
                    await api.request(
                        method, path, body={} if method in {"POST", "PATCH"} else None
                    )
            assert caught.value.status == 503
            assert len(server.seen) == attempts

    asyncio.run(scenario())


def test_other_errors_are_not_retried() -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", SECRET_PATH, _scripted(lambda: status(500, "InternalError", "boom")))
            async with KubeApi(Credentials(server=server.url), retry=FAST) as api:
                with pytest.raises(ApiError):
                    await api.get(SECRETS, "ns", "s")
            assert len(server.seen) == 1

    asyncio.run(scenario())


def test_retry_arithmetic() -> None:
    policy = RetryPolicy(retries=3, max_delay=10, base_delay=0.5, jitter=0.2)
    assert policy.delay(0, None, 0.0) == 0.5
    assert policy.delay(2, None, 0.0) == 2.0
    assert policy.delay(0, 3, 0.0) == 3
    assert policy.delay(0, 60, 0.0) == 10  # capped
    assert policy.delay(0, 3, 1.0) == pytest.approx(3.6)  # jitter adds at most 20 %
    assert retryable("POST", 429, None)
    assert not retryable("POST", 503, None)
    assert retryable("PUT", 503, None)
    assert not retryable("GET", 500, None)
    now = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)
    assert parse_retry_after("7") == 7
    assert parse_retry_after("Tue, 01 Dec 2026 12:00:05 GMT", now) == 5
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# -- watch: 410 Gone ------------------------------------------------------------------------


def test_watch_raises_watch_expired_for_a_410_error_event() -> None:
    async def scenario() -> list[str]:
        async def watch(request: web.Request) -> web.StreamResponse:
            gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
            events = [
                {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}},
                {"type": "ERROR", "object": gone},
            ]
            return await stream(request, events, hang=True)

        async with ScriptedServer() as server:
            server.on("GET", "/api/v1/secrets", watch)
            seen: list[str] = []

            async def consume(api: KubeApi) -> None:
                async for event in api.watch(SECRETS, None, resource_version="1"):
                    seen.append(event["object"]["metadata"]["name"])

            async with KubeApi(Credentials(server=server.url)) as api:
                with pytest.raises(WatchExpired):
                    await consume(api)
            return seen

    assert asyncio.run(scenario()) == ["a"]


def test_watch_raises_watch_expired_for_a_410_status() -> None:
    async def scenario() -> None:
        async with ScriptedServer() as server:
            server.on("GET", "/api/v1/secrets", _scripted(lambda: status(410, "Gone", "too old")))
            async with KubeApi(Credentials(server=server.url)) as api:
                with pytest.raises(WatchExpired):
                    async for _ in api.watch(SECRETS, None, resource_version="1"):
                        pass

    asyncio.run(scenario())


def test_credentials_and_plugin_settings_stay_out_of_repr() -> None:
    config = ExecConfig.from_kubeconfig(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "get-token",
            "args": ["--secret", "ARG-SECRET"],
            "env": [{"name": "PLUGIN_PASSWORD", "value": "ENV-SECRET"}],
            "interactiveMode": "Never",
        }
    )
    stdout = json.dumps(
        {
            "apiVersion": "client.authentication.k8s.io/v1",
            "kind": "ExecCredential",
            "status": {"token": "TOKEN-SECRET", "expirationTimestamp": "2030-01-01T00:00:00Z"},
        }
    ).encode()
    credential = parse_exec_credential(config, stdout)
    assert credential.token == "TOKEN-SECRET"
    assert credential.expires_at == datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    shown = repr(config) + repr(credential) + repr(Credentials(server="s", exec=config))
    for secret in ("ARG-SECRET", "ENV-SECRET", "TOKEN-SECRET"):
        assert secret not in shown


def test_a_cluster_ca_is_trusted_alone_and_the_system_store_only_without_one() -> None:
    ca = pki.CertificateAuthority.generate("only-ca")
    own = Credentials(server="https://127.0.0.1:1", ca_pem=ca.cert_pem).ssl_context()
    assert own.cert_store_stats()["x509_ca"] == 1
    assert [c["subject"] for c in own.get_ca_certs()] == [((("commonName", "only-ca"),),)]
    system = Credentials(server="https://example.invalid").ssl_context()
    assert system.cert_store_stats() == ssl.create_default_context().cert_store_stats()
    for empty in (b"", b"  \n"):  # e.g. certificate-authority-data: "-" decodes to nothing
        with pytest.raises(ValueError, match="certificate authority is empty"):
            Credentials(server="https://127.0.0.1:1", ca_pem=empty).ssl_context()
