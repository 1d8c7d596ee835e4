"""Benchmark: each KMS provider against the raw SDK call to the same server, in the same run.

For every provider whose test server can run here (``tests/integration/kms/servers``):

- ``overhead_ratio``: one ``envelope.seal`` + ``envelope.open`` of a 64-byte key through
  the provider (one wrap and one unwrap at the KMS, plus framing, binding and AES-GCM),
  divided by the raw baseline: the same two KMS operations made directly with the SDK
  (or, for ``local``, with the AES-GCM primitive it calls) on a 32-byte key, against the
  same server. Both run interleaved for several rounds and the best round of each is kept.
- ``kms_calls_per_1000_reads``: a version sealed through the controller's DEK cache
  (``CachedUnwraps``), then opened 1,000 times: how many unwraps reached the KMS. Goal: 0.
  ``..._cold_cache``: the same after emptying the cache (expected: 1, the first read).

A provider whose server cannot run here is listed with ``skipped`` and the reason. The
last line printed is JSON: ``{"bench": "kms", "providers": {"local": {...}, ...}}``.
Providers add themselves to ``BASELINES`` (name -> raw baseline builder).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for extra in (ROOT, ROOT / "devtools"):  # the test servers live in tests/, and use devtools
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import pytest  # noqa: E402 - after the path set-up above
from tests.integration.kms.harness import PROVIDERS, KmsTestServer, open_server  # noqa: E402

from secure_keys.core import envelope  # noqa: E402
from secure_keys.core.binding import KeyBinding  # noqa: E402
from secure_keys.core.kms.cache import CachedUnwraps, DekCache  # noqa: E402
from secure_keys.core.kms.observed import ObservedKms  # noqa: E402
from secure_keys.core.memory import zero  # noqa: E402

PLAINTEXT = os.urandom(64)
BINDING = KeyBinding("bench", "api-key", 1)
CONTEXT = BINDING.wrap_context(envelope.FORMAT_V1)

RawRoundTrip = Callable[[], None]
"""One raw wrap and unwrap of a 32-byte key, against the provider's server."""


def _local_baseline(server: KmsTestServer) -> RawRoundTrip:
    from secure_keys.core.aead import AeadKey  # the primitive the local provider calls

    kek = AeadKey(os.urandom(32))
    dek = os.urandom(32)
    aad = CONTEXT.canonical

    def raw() -> None:
        nonce = os.urandom(12)
        back = kek.decrypt(nonce, kek.encrypt(nonce, dek, aad), aad)
        zero(back)

    return raw


def _aws_baseline(server: KmsTestServer) -> RawRoundTrip:
    from secure_keys.core.kms.aws import AwsOptions, make_client

    config = server.config()
    client = make_client(config.key_id, AwsOptions.parse(config.options))
    context = CONTEXT.as_dict()
    dek = os.urandom(32)

    def raw() -> None:
        out = client.encrypt(KeyId=config.key_id, Plaintext=dek, EncryptionContext=context)
        client.decrypt(
            CiphertextBlob=out["CiphertextBlob"], KeyId=out["KeyId"], EncryptionContext=context
        )

    return raw


def _gcp_baseline(server: KmsTestServer) -> RawRoundTrip:
    # Encrypt + Decrypt with AAD through the bare SDK client, on its own plaintext channel
    # to the same emulator: no CRC32C fields, no version binding, no retry loop.
    import grpc  # type: ignore[import-untyped]
    from google.cloud import kms_v1
    from google.cloud.kms_v1.services.key_management_service.transports import (
        KeyManagementServiceGrpcTransport,
    )

    config = server.config()
    channel = grpc.insecure_channel(str(config.options["endpoint"]))
    client = kms_v1.KeyManagementServiceClient(
        transport=KeyManagementServiceGrpcTransport(channel=channel)
    )
    dek = os.urandom(32)
    aad = CONTEXT.canonical

    def raw() -> None:
        out = client.encrypt(
            request={"name": config.key_id, "plaintext": dek, "additional_authenticated_data": aad}
        )
        client.decrypt(
            request={
                "name": config.key_id,
                "ciphertext": out.ciphertext,
                "additional_authenticated_data": aad,
            }
        )

    return raw


def _pkcs11_baseline(server: KmsTestServer) -> RawRoundTrip:
    # The token's own AES-GCM on the same KEK object, through python-pkcs11 directly.
    import pkcs11
    from pkcs11.mechanisms import GCMParams

    config = server.config()
    server.provider().key_version()  # logs this process in to the token
    token = pkcs11.lib(str(config.options["library"])).get_token(
        token_label=str(config.options["tokenLabel"])
    )
    session = token.open()
    kek: Any
    (kek,) = session.get_objects(
        {
            pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            pkcs11.Attribute.LABEL: config.key_id,
        }
    )
    dek = os.urandom(32)
    aad = CONTEXT.canonical

    def raw() -> None:
        params = GCMParams(os.urandom(12), aad, 128)
        sealed = kek.encrypt(dek, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)
        kek.decrypt(sealed, mechanism=pkcs11.Mechanism.AES_GCM, mechanism_param=params)

    return raw


def _azure_baseline(server: KmsTestServer) -> RawRoundTrip:
    # wrapKey + unwrapKey (RSA-OAEP-256) through the bare SDK client on the key's current
    # version, same credential and vault: no version lookup, no context tag.
    from azure.keyvault.keys import KeyClient
    from azure.keyvault.keys.crypto import CryptographyClient, KeyWrapAlgorithm

    from secure_keys.core.kms.azure import AzureKmsOptions

    config = server.config()
    options = AzureKmsOptions.parse(config.options)
    credential = options.build_credential()
    kwargs = {"verify_challenge_resource": False, **options.transport()}
    vault, name = config.key_id.split("/keys/")
    version = KeyClient(vault, credential, **kwargs).get_key(name).properties.version
    client = CryptographyClient(f"{config.key_id}/{version}", credential, **kwargs)
    dek = os.urandom(32)

    def raw() -> None:
        out = client.wrap_key(KeyWrapAlgorithm.rsa_oaep_256, dek)
        client.unwrap_key(KeyWrapAlgorithm.rsa_oaep_256, out.encrypted_key)

    return raw


BASELINES: dict[str, Callable[[KmsTestServer], RawRoundTrip]] = {
    "local": _local_baseline,
    "aws": _aws_baseline,
    "gcp": _gcp_baseline,
    "pkcs11": _pkcs11_baseline,
    "azure": _azure_baseline,
}


def _per_op(fn: Callable[[], None], ops: int) -> float:
    start = time.perf_counter()
    for _ in range(ops):
        fn()
    return (time.perf_counter() - start) / ops


def measure(name: str, server: KmsTestServer, ops: int, rounds: int) -> dict[str, Any]:
    provider = server.provider()
    raw = BASELINES[name](server)

    def ours() -> None:
        sealed = envelope.seal(PLAINTEXT, BINDING, provider).to_bytes()
        zero(envelope.open(sealed, BINDING, provider))

    ours()  # warm both paths (connections, memoised encodings)
    raw()
    ours_t = raw_t = float("inf")
    for _ in range(rounds):
        raw_t = min(raw_t, _per_op(raw, ops))
        ours_t = min(ours_t, _per_op(ours, ops))

    counting = ObservedKms(provider)
    cached = CachedUnwraps(counting, DekCache())
    sealed = envelope.seal(PLAINTEXT, BINDING, cached).to_bytes()
    for _ in range(1000):
        zero(envelope.open(sealed, BINDING, cached))
    warm = counting.unwraps  # the seal cached its DEK: no read reached the KMS
    cached.cache.clear()  # cold: the first read must ask the KMS, the rest must not
    for _ in range(1000):
        zero(envelope.open(sealed, BINDING, cached))
    cold = counting.unwraps - warm
    cached.cache.clear()
    return {
        "overhead_ratio": round(ours_t / raw_t, 2),
        "seal_open_ms": round(ours_t * 1e3, 3),
        "raw_sdk_ms": round(raw_t * 1e3, 3),
        "kms_calls_per_1000_reads": warm,
        "kms_calls_per_1000_reads_cold_cache": cold,
        "ops_per_round": ops,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200, help="operations per round (network)")
    parser.add_argument("--local-ops", type=int, default=5000, help="operations per round (local)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--provider", action="append", choices=PROVIDERS, help="only these")
    args = parser.parse_args()

    results: dict[str, dict[str, Any]] = {}
    for name in args.provider or PROVIDERS:
        if name not in BASELINES:
            results[name] = {"skipped": "no raw baseline in bench/kms.py yet"}
            continue
        with tempfile.TemporaryDirectory(prefix=f"bench-kms-{name}-") as tmp:
            try:
                with open_server(name, Path(tmp)) as server:
                    ops = args.local_ops if name == "local" else args.ops
                    results[name] = measure(name, server, ops, args.rounds)
            except pytest.skip.Exception as skipped:
                results[name] = {"skipped": str(skipped)}
        got = results[name]
        if "skipped" in got:
            print(f"{name:7} skipped: {got['skipped']}")
        else:
            print(
                f"{name:7} seal+open {got['seal_open_ms']:8.3f} ms   raw SDK "
                f"{got['raw_sdk_ms']:8.3f} ms   overhead x{got['overhead_ratio']:<5}  "
                f"KMS calls per 1000 cached reads: {got['kms_calls_per_1000_reads']}"
            )
    print(json.dumps({"bench": "kms", "providers": results}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
