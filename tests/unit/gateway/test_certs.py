"""The gateway's managed certificates (``gateway/certs.py``).

What is specified: the Secret's state over a CA's whole life (serving renewals, the two
steps of a CA rotation, expired CAs leaving the bundle); the guarantee that no certificate
any replica serves is ever unknown to the API server or to a pod admitted within half the
overlap; the same over real TLS (``tls.CertificateReloader``: new handshakes succeed
across a rotation and an open connection keeps flowing); and the leader's writes through
FakeApi (the Secret, the webhook's caBundle, the rolling restart only when the bundle
changes). FakeApi stands in for the API server because these interleavings and a CA's
five-year life cannot be staged against a real one in a unit test; the e2e suite runs the
real thing.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime
import functools
import ssl
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import pytest
from cryptography import x509

from secure_keys.gateway.certs import (
    BUNDLE_ANNOTATION,
    DEPLOYMENTS,
    GATEWAY_CERTS_TYPE,
    REPLACE_CA_ANNOTATION,
    REPLACED_CA_ANNOTATION,
    ROTATE_CA_ANNOTATION,
    ROTATED_CA_ANNOTATION,
    WEBHOOKS,
    CertManager,
    CertOptions,
    CertPolicy,
    CertState,
    UnusableSecret,
    bundle_digest,
    issue_ca,
    issue_server,
    plan,
)
from secure_keys.gateway.tls import CertificateReloader
from secure_keys.kube.client import SECRETS, ApiError, KubeApi
from tests.unit.controller.fakeapi import FakeApi

P = ParamSpec("P")
R = TypeVar("R")


def synchronous(test: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, R]:
    """Run an async test body with asyncio.run (the suite has no async plugin)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return asyncio.run(test(*args, **kwargs))

    return run


H = datetime.timedelta(hours=1)
T0 = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
# A CA life in hours instead of years: the same arithmetic.
POLICY = CertPolicy(
    ca_validity=100 * H,
    ca_overlap=20 * H,
    server_validity=10 * H,
    server_renew_before=3 * H,
    dns_names=("localhost", "secure-keys-gateway.secure-keys-system.svc"),
    ip_addresses=("127.0.0.1",),
)
NS = "secure-keys-system"


def with_overlap(hours: float) -> CertPolicy:
    """POLICY with another CA overlap (to move a rotation step to the present)."""
    return dataclasses.replace(POLICY, ca_overlap=hours * H)


def cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def trusted_by(serving_pem: bytes, bundle: tuple[bytes, ...], at: datetime.datetime) -> bool:
    """Whether a verifier trusting exactly ``bundle`` accepts ``serving_pem`` at ``at``."""
    leaf = cert(serving_pem)
    if not leaf.not_valid_before_utc <= at < leaf.not_valid_after_utc:
        return False
    for pem in bundle:
        ca = cert(pem)
        try:
            leaf.verify_directly_issued_by(ca)
        except Exception:  # noqa: S112 - another CA of the bundle may have signed it
            continue
        if ca.not_valid_before_utc <= at < ca.not_valid_after_utc:
            return True
    return False


def test_a_first_plan_makes_a_ca_and_a_serving_pair_for_the_names() -> None:
    state = plan(None, T0, POLICY)
    assert state.bundle == (state.ca.cert_pem,)
    assert trusted_by(state.tls_cert_pem, state.bundle, T0)
    san = cert(state.tls_cert_pem).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert set(san.value.get_values_for_type(x509.DNSName)) == set(POLICY.dns_names)
    assert [str(i) for i in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    ca = cert(state.ca.cert_pem)
    assert ca.not_valid_after_utc - T0 == POLICY.ca_validity
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_nothing_due_returns_the_same_state() -> None:
    state = plan(None, T0, POLICY)
    assert plan(state, T0 + 2 * H, POLICY) is state


def test_a_serving_certificate_is_renewed_before_it_expires_under_the_same_ca() -> None:
    state = plan(None, T0, POLICY)
    later = plan(state, T0 + 7.5 * H, POLICY)  # 2.5 h left < 3 h
    assert later.tls_cert_pem != state.tls_cert_pem
    assert later.ca == state.ca
    assert later.bundle == state.bundle


def test_new_names_reissue_the_serving_certificate() -> None:
    state = plan(None, T0, POLICY)
    other = dataclasses.replace(POLICY, dns_names=("gateway.example",), ip_addresses=())
    assert plan(state, T0 + H, other).tls_cert_pem != state.tls_cert_pem


def test_over_three_ca_lives_everything_served_is_trusted_by_the_webhook_and_young_pods() -> None:
    """Every hour: the serving certificate is trusted by the bundle the webhook has (the
    API server) and by every pod admitted at most ca_overlap / 2 earlier (the bundle it
    was given); and the CA did rotate, more than once."""
    state = plan(None, T0, POLICY)
    admitted: list[tuple[datetime.datetime, tuple[bytes, ...]]] = []
    cas = {state.ca.cert_pem}
    for hour in range(300):
        now = T0 + hour * H
        state = plan(state, now, POLICY)
        cas.add(state.ca.cert_pem)
        admitted.append((now, state.bundle))
        assert trusted_by(state.tls_cert_pem, state.bundle, now), hour
        for when, bundle in admitted:
            if now - when <= POLICY.ca_overlap / 2:
                assert trusted_by(state.tls_cert_pem, bundle, now), (hour, when)
    assert len(cas) >= 3
    assert len(state.bundle) <= 2  # expired CAs left


def test_a_pod_older_than_the_overlap_is_not_covered() -> None:
    """The bound is real: a pod admitted before the successor existed trusts only the old
    CA, and the first certificate the successor signs is not one it accepts."""
    state = plan(None, T0, POLICY)
    old_bundle = state.bundle
    state = plan(state, T0 + 81 * H, POLICY)  # successor published (19 h left)
    assert state.next is not None
    assert len(state.bundle) == 2
    assert trusted_by(state.tls_cert_pem, old_bundle, T0 + 81 * H)  # old CA still signs
    state = plan(state, T0 + 91 * H, POLICY)  # 9 h left < 10 h: successor signs
    assert state.next is None
    assert not trusted_by(state.tls_cert_pem, old_bundle, T0 + 91 * H)


def test_the_secret_round_trips_and_a_mismatched_pair_is_refused() -> None:
    state = plan(plan(None, T0, POLICY), T0 + 81 * H, POLICY)
    assert CertState.from_data(state.to_data()) == state
    other = plan(None, T0, POLICY)
    data = state.to_data()
    data["tls.key"] = other.to_data()["tls.key"]
    with pytest.raises(ValueError, match=r"tls\.key does not match") as caught:
        CertState.from_data(data)
    assert "PRIVATE" not in str(caught.value)
    with pytest.raises(ValueError, match="missing"):
        CertState.from_data({"ca.crt": data["ca.crt"]})


# -- real TLS across a rotation --------------------------------------------------------


async def _serve(reloader: CertificateReloader) -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=reloader.context)
    return server, server.sockets[0].getsockname()[1]


def _client(bundle: tuple[bytes, ...]) -> ssl.SSLContext:
    return ssl.create_default_context(cadata=b"".join(bundle).decode())


async def _roundtrip(port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )
    writer.write(b"ping\n")
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return line


@synchronous
async def test_a_ca_rotation_over_real_tls_breaks_no_handshake_and_no_open_stream(
    tmp_path: Path,
) -> None:
    """Real clocks: the CA's life is placed around now (30 h left), so OpenSSL's own
    validity checks apply. A pod admitted before the successor was published (trusting
    one CA) and one admitted after (trusting both) connect before and after each step; a
    stream opened first keeps flowing to the end."""
    now = datetime.datetime.now(datetime.UTC)
    manager = CertManager(
        FakeApi(),  # type: ignore[arg-type]
        CertOptions("tls", NS, "a", POLICY),
        tmp_path / "tls.crt",
        tmp_path / "tls.key",
    )
    # A CA made 70 h ago (30 h left): successor due now, promotion 20 h later.
    state = plan(None, now - 70 * H, POLICY)
    state = plan(state, now - 9 * H, POLICY)  # a fresh serving pair, same CA
    assert state.next is None
    manager.serve_files(state)
    reloader = CertificateReloader(manager.cert_file, manager.key_file)
    server, port = await _serve(reloader)
    try:
        before = _client(state.bundle)
        assert await _roundtrip(port, before) == b"ping\n"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=before, server_hostname="localhost"
        )
        # Step 1 (moved to now by a longer overlap: 30 h left <= 40 h): the successor is
        # published; the old CA still signs.
        state = plan(state, now, with_overlap(40))
        assert state.next is not None
        manager.serve_files(state)
        reloader.check()
        after = _client(state.bundle)
        assert await _roundtrip(port, before) == b"ping\n"
        assert await _roundtrip(port, after) == b"ping\n"
        # Step 2 (done at "now" by moving the policy's overlap): the successor signs.
        promoted = plan(state, now, with_overlap(62))  # 30 h left <= 31 h
        assert promoted.ca == state.next
        manager.serve_files(promoted)
        assert reloader.check()
        assert await _roundtrip(port, after) == b"ping\n"  # admitted after step 1
        with pytest.raises(ssl.SSLCertVerificationError):
            await _roundtrip(port, before)  # older than the overlap: the stated bound
        for _ in range(3):  # the stream opened before everything still flows
            writer.write(b"still\n")
            await writer.drain()
            assert await reader.readline() == b"still\n"
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


# -- the leader's writes -----------------------------------------------------------------


def _empty_secret(api: FakeApi) -> None:
    """The certificates Secret as the chart makes it: typed, no data."""
    api.put(
        SECRETS,
        NS,
        {"metadata": {"name": "secure-keys-gateway-tls"}, "type": GATEWAY_CERTS_TYPE},
    )


def _webhook(api: FakeApi) -> None:
    _empty_secret(api)
    api.put(
        WEBHOOKS,
        None,
        {
            "metadata": {"name": "secure-keys-gateway"},
            "webhooks": [{"name": "inject.securekeys.io", "clientConfig": {"url": "https://x"}}],
        },
    )
    api.put(
        DEPLOYMENTS,
        NS,
        {"metadata": {"name": "secure-keys-gateway"}, "spec": {"template": {"metadata": {}}}},
    )


def _manager(api: FakeApi, tmp_path: Path, now: list[datetime.datetime]) -> CertManager:
    options = CertOptions(
        "secure-keys-gateway-tls",
        NS,
        "pod-a",
        POLICY,
        webhook="secure-keys-gateway",
        deployment="secure-keys-gateway",
    )
    return CertManager(
        api,  # type: ignore[arg-type]
        options,
        tmp_path / "tls.crt",
        tmp_path / "tls.key",
        clock=lambda: now[0],
    )


@synchronous
async def test_the_leader_writes_the_secret_and_the_ca_bundle_and_restarts_only_on_a_new_bundle(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    _webhook(api)
    now = [T0]
    manager = _manager(api, tmp_path, now)
    state = await manager.reconcile()
    stored = api.stored(SECRETS, NS, "secure-keys-gateway-tls")
    assert CertState.from_data(stored["data"]) == state
    hook = api.stored(WEBHOOKS, None, "secure-keys-gateway")["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == state.bundle_pem
    assert hook["clientConfig"]["url"] == "https://x"
    template = api.stored(DEPLOYMENTS, NS, "secure-keys-gateway")["spec"]["template"]
    assert BUNDLE_ANNOTATION not in (template["metadata"].get("annotations") or {})

    calls = len(api.calls)
    assert await manager.reconcile() == state
    assert [c[0] for c in api.calls[calls:]] == ["get", "get"]  # reads only

    now[0] = T0 + 7.5 * H  # serving renewal: same bundle, no restart
    await manager.reconcile()
    template = api.stored(DEPLOYMENTS, NS, "secure-keys-gateway")["spec"]["template"]
    assert BUNDLE_ANNOTATION not in (template["metadata"].get("annotations") or {})

    now[0] = T0 + 81 * H  # successor published: new bundle, rolling restart
    rotated = await manager.reconcile()
    annotations = api.stored(DEPLOYMENTS, NS, "secure-keys-gateway")["spec"]["template"][
        "metadata"
    ]["annotations"]
    assert annotations[BUNDLE_ANNOTATION] == bundle_digest(rotated.bundle_pem)
    hook = api.stored(WEBHOOKS, None, "secure-keys-gateway")["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == rotated.bundle_pem


@synchronous
async def test_a_concurrent_writer_makes_the_replace_fail_rather_than_overwrite(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    _webhook(api)
    now = [T0]
    await _manager(api, tmp_path, now).reconcile()
    now[0] = T0 + 7.5 * H

    def other_writer(fake: FakeApi, *_: object) -> None:
        fake.put(SECRETS, NS, fake.stored(SECRETS, NS, "secure-keys-gateway-tls"))

    api.before("replace", "secrets", "", other_writer)
    with pytest.raises(ApiError) as caught:
        await _manager(api, tmp_path, now).reconcile()
    assert caught.value.conflict


@synchronous
async def test_replicas_bootstrap_from_the_one_secret_the_lease_holder_made(
    tmp_path: Path,
) -> None:
    from secure_keys.kube.leader import LeaderElector, LeaseTiming

    api = FakeApi()
    _webhook(api)
    timing = LeaseTiming(lease_duration=3.0, renew_deadline=2.0, retry_period=0.1)
    states = []
    for identity in ("pod-a", "pod-b"):
        directory = tmp_path / identity
        directory.mkdir()
        manager = CertManager(
            api,  # type: ignore[arg-type]
            CertOptions("secure-keys-gateway-tls", NS, identity, POLICY, "secure-keys-gateway"),
            directory / "tls.crt",
            directory / "tls.key",
        )
        elector = LeaderElector(
            api,  # type: ignore[arg-type]
            NS,
            "secure-keys-gateway-certs",
            identity,
            timing,
        )
        states.append(await asyncio.wait_for(manager.bootstrap(elector), 10))
        assert (directory / "tls.crt").read_bytes() == states[-1].tls_cert_pem
        assert (directory / "tls.key").stat().st_mode & 0o077 == 0
    assert states[0] == states[1]
    writes = [c for c in api.calls if c[1] == "secrets" and c[0] in ("create", "replace")]
    assert [c[0] for c in writes] == ["replace"]  # filled once; never created
    _ = KubeApi  # the type FakeApi stands in for


def test_a_requested_ca_rotation_runs_both_steps_half_the_overlap_apart() -> None:
    """``securekeys.io/rotate-ca``: the successor now, signing ca_overlap / 2 later; every
    certificate served meanwhile is trusted by the webhook and by pods admitted since."""
    state = plan(None, T0, POLICY)
    asked = T0 + 2 * H
    state = plan(state, asked, POLICY, rotate_ca=True)
    assert state.next is not None
    successor = state.next
    admitted_after = state.bundle
    for hour in range(2, 12):  # 10 h = ca_overlap / 2 after the request
        now = T0 + hour * H
        state = plan(state, now, POLICY)
        assert state.next == successor, hour
        assert trusted_by(state.tls_cert_pem, admitted_after, now)
    state = plan(state, T0 + 12 * H, POLICY)
    assert state.ca == successor
    assert state.next is None
    assert trusted_by(state.tls_cert_pem, admitted_after, T0 + 12 * H)
    assert plan(state, T0 + 13 * H, POLICY).ca == successor  # asked once, done once


@synchronous
async def test_a_rotation_request_on_the_secret_is_honoured_once(tmp_path: Path) -> None:
    api = FakeApi()
    _webhook(api)
    now = [T0]
    manager = _manager(api, tmp_path, now)
    first = await manager.reconcile()
    secret = api.stored(SECRETS, NS, "secure-keys-gateway-tls")
    secret["metadata"]["annotations"] = {ROTATE_CA_ANNOTATION: "1"}
    now[0] = T0 + H
    asked = await manager.reconcile()
    assert asked.next is not None
    assert asked.ca == first.ca
    stored = api.stored(SECRETS, NS, "secure-keys-gateway-tls")["metadata"]["annotations"]
    assert stored[ROTATED_CA_ANNOTATION] == "1"
    now[0] = T0 + 11 * H
    promoted = await manager.reconcile()
    assert promoted.ca == asked.next
    now[0] = T0 + 12 * H
    assert (await manager.reconcile()).next is None  # no second rotation


# -- what the Secret may hold -------------------------------------------------------------


def _rotated() -> CertState:
    """A state with a signing CA and its predecessor (after a rotation's second step)."""
    state = plan(plan(None, T0, POLICY), T0 + 81 * H, POLICY)
    state = plan(state, T0 + 91 * H, POLICY)
    assert state.previous is not None
    return state


def _b64(pem: bytes) -> str:
    return base64.b64encode(pem).decode()


def test_the_bundle_is_made_only_from_the_signing_ca_its_successor_and_its_predecessor() -> None:
    state = _rotated()
    assert state.bundle == (state.ca.cert_pem, state.previous)
    assert CertState.from_data(state.to_data()) == state
    expired = plan(state, T0 + 101 * H, POLICY)  # the predecessor expired at T0 + 100 h
    assert expired.previous is None
    assert expired.bundle == (expired.ca.cert_pem,)


def test_a_certificate_planted_in_the_bundle_is_refused_not_kept() -> None:
    """Hand-editing bundle.crt cannot add a CA the API server or new pods would trust."""
    state = _rotated()
    planted = issue_ca(T0, 1000 * H)  # a CA of the same shape, made by someone else
    data = state.to_data()
    data["bundle.crt"] = _b64(state.bundle_pem + planted.cert_pem)
    with pytest.raises(ValueError, match=r"bundle\.crt is not exactly"):
        CertState.from_data(data)
    data["bundle.crt"] = _b64(state.ca.cert_pem)  # the predecessor dropped by hand
    with pytest.raises(ValueError, match=r"bundle\.crt is not exactly"):
        CertState.from_data(data)


def test_a_ca_key_that_does_not_match_its_certificate_is_refused() -> None:
    state = plan(None, T0, POLICY)
    other = issue_ca(T0, 100 * H)
    data = state.to_data()
    data["ca.key"] = _b64(other.key_pem)
    with pytest.raises(ValueError, match=r"does not match ca\.crt") as caught:
        CertState.from_data(data)
    assert "PRIVATE" not in str(caught.value)


def test_a_ca_that_is_not_ours_is_refused_as_ca_next_or_previous() -> None:
    """A leaf certificate (not a CA) stands in for a foreign one in each place."""
    state = _rotated()
    leaf, leaf_key = issue_server(state.ca, T0 + 91 * H, POLICY)
    for field, value in (("ca.crt", leaf), ("previous.crt", leaf)):
        data = state.to_data()
        data[field] = _b64(value)
        if field == "ca.crt":
            data["ca.key"] = _b64(leaf_key)
        with pytest.raises(ValueError, match="not a secure-keys gateway CA"):
            CertState.from_data(data)


def test_unknown_fields_and_a_half_successor_are_refused() -> None:
    data = plan(None, T0, POLICY).to_data()
    with pytest.raises(ValueError, match="unknown fields"):
        CertState.from_data({**data, "extra.crt": data["ca.crt"]})
    with pytest.raises(ValueError, match="go together"):
        CertState.from_data({**data, "next.crt": data["ca.crt"]})


def test_the_emergency_replacement_signs_with_a_new_ca_and_trusts_nothing_older() -> None:
    """``replace_ca``: no overlap. The new CA signs at once and is the whole bundle; a
    pod admitted before (trusting the old CAs only) no longer accepts the gateway."""
    state = plan(_rotated(), T0 + 92 * H, POLICY, rotate_ca=True)  # mid-rotation, too
    assert state.next is not None
    assert state.previous is not None
    old = state.bundle
    replaced = plan(state, T0 + 93 * H, POLICY, replace_ca=True)
    assert replaced.bundle == (replaced.ca.cert_pem,)
    assert replaced.ca.cert_pem not in old
    assert trusted_by(replaced.tls_cert_pem, replaced.bundle, T0 + 93 * H)
    assert not trusted_by(replaced.tls_cert_pem, old, T0 + 93 * H)  # the stated cost


@synchronous
async def test_the_gateway_never_creates_its_secret_and_says_so_when_it_is_missing(
    tmp_path: Path,
) -> None:
    api = FakeApi()
    now = [T0]
    with pytest.raises(UnusableSecret, match="made by the Helm chart"):
        await _manager(api, tmp_path, now).reconcile()
    api.put(SECRETS, NS, {"metadata": {"name": "secure-keys-gateway-tls"}, "type": "Opaque"})
    with pytest.raises(UnusableSecret, match=r"not securekeys\.io/gateway-certs"):
        await _manager(api, tmp_path, now).reconcile()
    assert not [c for c in api.calls if c[0] != "get"]


@synchronous
async def test_a_refused_secret_is_neither_served_nor_rewritten(tmp_path: Path) -> None:
    api = FakeApi()
    _webhook(api)
    now = [T0]
    manager = _manager(api, tmp_path, now)
    await manager.reconcile()
    secret = api.stored(SECRETS, NS, "secure-keys-gateway-tls")
    planted = issue_ca(T0, 1000 * H)
    secret["data"]["bundle.crt"] = _b64(
        base64.b64decode(secret["data"]["bundle.crt"]) + planted.cert_pem
    )
    calls = len(api.calls)
    with pytest.raises(UnusableSecret, match="refused") as caught:
        await manager.reconcile()
    assert "PRIVATE" not in str(caught.value)
    assert [c[0] for c in api.calls[calls:]] == ["get"]
    hook = api.stored(WEBHOOKS, None, "secure-keys-gateway")["webhooks"][0]
    assert planted.cert_pem not in base64.b64decode(hook["clientConfig"]["caBundle"])


@synchronous
async def test_an_emergency_replacement_on_the_secret_is_honoured_once(tmp_path: Path) -> None:
    api = FakeApi()
    _webhook(api)
    now = [T0]
    manager = _manager(api, tmp_path, now)
    first = await manager.reconcile()
    secret = api.stored(SECRETS, NS, "secure-keys-gateway-tls")
    secret["metadata"]["annotations"] = {REPLACE_CA_ANNOTATION: "leak-2026-12"}
    now[0] = T0 + H
    replaced = await manager.reconcile()
    assert replaced.ca != first.ca
    assert replaced.bundle == (replaced.ca.cert_pem,)
    stored = api.stored(SECRETS, NS, "secure-keys-gateway-tls")["metadata"]["annotations"]
    assert stored[REPLACED_CA_ANNOTATION] == "leak-2026-12"
    hook = api.stored(WEBHOOKS, None, "secure-keys-gateway")["webhooks"][0]
    assert base64.b64decode(hook["clientConfig"]["caBundle"]) == replaced.bundle_pem
    template = api.stored(DEPLOYMENTS, NS, "secure-keys-gateway")["spec"]["template"]
    assert template["metadata"]["annotations"][BUNDLE_ANNOTATION] == bundle_digest(
        replaced.bundle_pem
    )
    now[0] = T0 + 2 * H
    assert (await manager.reconcile()).ca == replaced.ca  # asked once, done once
