"""What the ``pkcs11`` provider promises beyond the shared contract, against SoftHSM2.

The contract suite (``test_contract.py -k pkcs11``) covers round trips, contexts, versions,
key states and outages. These cases cover what only an HSM provider has: the KEK really
is non-extractable, an unfit key is refused, the PIN never leaves its file, the session
pool is bounded, and KEK rotation by the admin command (run in another process, as an
operator would) is seen by a provider that is already running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from secure_keys.core import envelope
from secure_keys.core.binding import KeyBinding
from secure_keys.core.errors import KmsCorrupt, KmsDenied, KmsError, KmsUnavailable
from secure_keys.core.kms.registry import KmsConfig
from secure_keys.core.memory import zero
from tests.integration.kms.harness import build_provider
from tests.integration.kms.servers.pkcs11 import LIBRARY, SoftHsmServer, open_server

pkcs11 = pytest.importorskip("pkcs11")
p11 = pytest.importorskip("secure_keys.core.kms.pkcs11")

CONTEXT = KeyBinding("payments", "stripe-live", 1).wrap_context(envelope.FORMAT_V1)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[SoftHsmServer]:
    with open_server(tmp_path / "hsm") as opened:
        assert isinstance(opened, SoftHsmServer)
        yield opened


def _pin(server: SoftHsmServer) -> str:
    return server.pin_file.read_text().rstrip("\n")


def _token_session(server: SoftHsmServer) -> object:
    """A raw session for inspecting the token, logged in through the provider module."""
    lib = pkcs11.lib(LIBRARY)
    token = lib.get_token(token_label=server.token_label)
    return token.open(rw=True)  # the provider module has logged this process in


def _config(server: SoftHsmServer, key: str = "primary", **extra: str) -> KmsConfig:
    base = server.config(key)
    return KmsConfig(base.provider, base.key_id, {**base.options, **extra})


def test_the_kek_is_sensitive_and_never_leaves_the_token(server: SoftHsmServer) -> None:
    server.provider().key_version()  # logs in
    session = _token_session(server)
    keys = list(
        session.get_objects(  # type: ignore[attr-defined]
            {
                pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                pkcs11.Attribute.LABEL: "primary",
            }
        )
    )
    assert len(keys) == 1
    key = keys[0]
    assert key[pkcs11.Attribute.ID] == (1).to_bytes(4, "big")
    assert key[pkcs11.Attribute.EXTRACTABLE] is False
    assert key[pkcs11.Attribute.SENSITIVE] is True
    assert key[pkcs11.Attribute.NEVER_EXTRACTABLE] is True
    assert key[pkcs11.Attribute.TOKEN] is True
    assert key[pkcs11.Attribute.WRAP] is False
    with pytest.raises(pkcs11.exceptions.AttributeSensitive):
        key[pkcs11.Attribute.VALUE]
    with pytest.raises(pkcs11.exceptions.AttributeReadOnly):
        key[pkcs11.Attribute.EXTRACTABLE] = True


def test_an_extractable_key_is_refused_as_a_kek(server: SoftHsmServer) -> None:
    server.provider().key_version()  # logs in
    session = _token_session(server)
    session.generate_key(  # type: ignore[attr-defined]
        pkcs11.KeyType.AES,
        256,
        id=(1).to_bytes(4, "big"),
        label="weak",
        store=True,
        template={pkcs11.Attribute.EXTRACTABLE: True, pkcs11.Attribute.SENSITIVE: False},
    )
    weak = build_provider(KmsConfig("pkcs11", "weak", server.config().options))
    with pytest.raises(KmsDenied, match="not a sensitive, non-extractable AES-256 key"):
        weak.wrap(bytearray(32), CONTEXT)


def test_the_pin_appears_in_no_log_and_no_error(server: SoftHsmServer) -> None:
    pin = _pin(server)
    seen: list[str] = []
    with structlog.testing.capture_logs() as logs:
        provider = server.provider()
        wrapped = provider.wrap(bytearray(32), CONTEXT)
        server.stop()
        try:
            with pytest.raises(KmsUnavailable) as outage:
                provider.unwrap(wrapped, CONTEXT)
            seen.append(str(outage.value))
            seen.append(provider.health().detail)
        finally:
            server.start()
        zero(provider.unwrap(wrapped, CONTEXT))
        seen.append(repr(provider))
    seen.extend(repr(event) for event in logs)
    for text in seen:
        assert pin not in text
    assert any(event["event"] == "kms.pkcs11.reinitialised" for event in logs)


def test_a_wrong_pin_is_denied_once_and_not_retried(server: SoftHsmServer, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.pin"
    wrong.write_text("00000000\n")
    script = (
        "import sys\n"
        "from secure_keys.core.kms.pkcs11 import from_config\n"
        "from secure_keys.core.errors import KmsDenied\n"
        "p = from_config('primary', dict(library=sys.argv[1], tokenLabel=sys.argv[2],"
        " pinFile=sys.argv[3]))\n"
        "for _ in range(2):\n"
        "    try:\n"
        "        p.key_version()\n"
        "    except KmsDenied as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, our script
        [sys.executable, "-c", script, LIBRARY, server.token_label, str(wrong)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    first, second = done.stdout.splitlines()
    assert "the token refused the PIN from pinFile (PinIncorrect)" in first
    assert "refused the PIN earlier" in second  # the token was not asked again
    assert "00000000" not in done.stdout + done.stderr


def test_the_session_pool_is_bounded_and_its_wait_too(server: SoftHsmServer) -> None:
    provider = build_provider(_config(server, sessionPoolSize="1", sessionTimeoutSeconds="0.3"))
    assert isinstance(provider, p11.Pkcs11Kms)
    for _ in range(20):
        zero(provider.unwrap(provider.wrap(bytearray(32), CONTEXT), CONTEXT))
    assert provider._pool.idle_count == 1  # one session, reused for every call

    holding, release = threading.Event(), threading.Event()

    def hold(session: object) -> None:
        holding.set()
        release.wait(10)

    holder = threading.Thread(target=provider._call, args=("holding", hold))
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        with pytest.raises(KmsUnavailable, match=r"no PKCS#11 session free within 0\.3 s") as busy:
            provider.wrap(bytearray(32), CONTEXT)
        assert 0.25 <= time.monotonic() - started < 2.0
        assert busy.value.retryable
    finally:
        release.set()
        holder.join(10)
    zero(provider.unwrap(provider.wrap(bytearray(32), CONTEXT), CONTEXT))


def test_rotation_by_the_admin_command_reaches_a_running_provider(server: SoftHsmServer) -> None:
    provider = build_provider(_config(server, versionCacheSeconds="2"))
    old = provider.wrap(bytearray(b"k" * 32), CONTEXT)
    cached_at = time.monotonic()
    assert old.key_version == "1"
    command = [
        sys.executable, "-m", "secure_keys.cli", "pkcs11", "generate-key",
        "--library", LIBRARY, "--token", server.token_label, "--label", "primary",
        "--pin-file", str(server.pin_file),
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - our interpreter, our module
        command, capture_output=True, text=True, timeout=60, check=True, env=dict(os.environ)
    )
    assert done.stdout.strip() == "2"
    assert _pin(server) not in done.stdout + done.stderr
    # Another process made the new version: this one keeps using version 1 while its
    # version cache is fresh, and sees version 2 once it expires (versionCacheSeconds).
    if time.monotonic() - cached_at < 1.5:  # (a loaded machine may take longer)
        assert provider.key_version() == "1"
    time.sleep(max(0.0, cached_at + 2.1 - time.monotonic()))
    assert provider.key_version() == "2"
    new = provider.wrap(bytearray(b"k" * 32), CONTEXT)
    assert new.key_version == "2"
    back = provider.unwrap(old, CONTEXT)
    assert back == b"k" * 32
    zero(back)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tokenLabel": "t", "pinFile": "/x"}, "option library is required"),
        ({"library": LIBRARY, "pinFile": "/x"}, "option tokenLabel is required"),
        ({"library": LIBRARY, "tokenLabel": "t"}, "option pinFile is required"),
        ({"library": LIBRARY, "tokenLabel": "t", "pinFile": "/x", "sessionPoolSize": "0"},
         "sessionPoolSize must be from 1 to 64"),
        ({"library": LIBRARY, "tokenLabel": "t", "pinFile": "/x", "retries": "many"},
         "retries must be an integer"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_by_name(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        p11.Pkcs11Options.parse("primary", options)


def test_a_missing_library_is_unavailable_and_names_the_key(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    provider = p11.from_config(
        "primary",
        {"library": str(tmp_path / "nothing.so"), "tokenLabel": "t", "pinFile": str(pin)},
    )
    with pytest.raises(KmsUnavailable) as caught:
        provider.key_version()
    error: KmsError = caught.value
    assert error.provider == "pkcs11"
    assert error.key_id == "primary"
    assert "nothing.so" in str(error)
    assert "1234" not in str(error)


def test_the_version_is_bound_even_between_versions_with_the_same_key(
    server: SoftHsmServer,
) -> None:
    # Two versions holding the same key material (an operator importing a key twice):
    # the token alone could not tell them apart, the associated data does.
    server.provider().key_version()  # logs in
    session = _token_session(server)
    value = os.urandom(32)
    for version in (1, 2):
        session.create_object(  # type: ignore[attr-defined]
            {
                pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
                pkcs11.Attribute.TOKEN: True,
                pkcs11.Attribute.PRIVATE: True,
                pkcs11.Attribute.SENSITIVE: True,
                pkcs11.Attribute.EXTRACTABLE: False,
                pkcs11.Attribute.ENCRYPT: True,
                pkcs11.Attribute.DECRYPT: True,
                pkcs11.Attribute.LABEL: "twin",
                pkcs11.Attribute.ID: version.to_bytes(4, "big"),
                pkcs11.Attribute.VALUE: value,
            }
        )
    twin = build_provider(KmsConfig("pkcs11", "twin", server.config().options))
    wrapped = twin.wrap(bytearray(32), CONTEXT)
    assert wrapped.key_version == "2"
    relabelled = type(wrapped)("pkcs11", "twin", "1", wrapped.ciphertext)
    with pytest.raises(KmsCorrupt):
        twin.unwrap(relabelled, CONTEXT)
    zero(twin.unwrap(wrapped, CONTEXT))


def test_a_running_provider_sees_disable_enable_and_destroy(server: SoftHsmServer) -> None:
    # The controller keeps one provider for its lifetime: its cached key versions must
    # not hide a state change made in the token.
    provider = build_provider(_config(server, versionCacheSeconds="3600"))
    wrapped = provider.wrap(bytearray(32), CONTEXT)
    server.disable()
    with pytest.raises(KmsDenied, match="disabled"):
        provider.unwrap(wrapped, CONTEXT)
    with pytest.raises(KmsDenied, match="disabled"):
        provider.wrap(bytearray(32), CONTEXT)
    server.enable()
    zero(provider.unwrap(wrapped, CONTEXT))
    server.destroy()
    with pytest.raises(KmsDenied, match="no key object"):
        provider.unwrap(wrapped, CONTEXT)
