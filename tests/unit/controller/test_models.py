"""The parsed ApiKey (secure_keys.controller.models): what it accepts, what it refuses, that
its errors never echo a value, and the source digest."""

from __future__ import annotations

import traceback
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_keys.controller.models import (
    FINALIZER,
    ROTATE_ANNOTATION,
    ApiKey,
    ApiKeySpec,
    InvalidSpec,
    source_digest,
)
from tests.conftest import CANARY

RECIPIENT = "x25519:0123456789abcdef"
METADATA = {"name": "stripe-live", "namespace": "payments", "uid": "0000-1111"}


def body(source: Any = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": dict(METADATA),
        "spec": {"source": {"generate": {}} if source is None else source, **spec},
    }


def spec_of(source: dict[str, Any]) -> ApiKeySpec:
    return ApiKey.parse(body(source)).spec


# -- accepted --------------------------------------------------------------------------------


def test_minimal_generate_takes_the_crd_defaults() -> None:
    key = ApiKey.parse(body())
    assert key.spec.source.kind == "generate"
    generate = key.spec.source.generate
    assert generate is not None
    assert (generate.length, generate.alphabet, generate.prefix) == (40, "base62", "")
    assert (key.spec.kms.provider, key.spec.kms.key_id) == (None, None)
    assert key.spec.rotation is None
    delivery = key.spec.delivery
    assert (delivery.file_name, delivery.format, delivery.env_name, delivery.mode) == (
        None,
        "raw",
        None,
        "0400",
    )
    assert key.status == {}
    assert key.metadata.generation == 1
    assert key.metadata.finalizers == ()
    assert key.rotation_request is None
    assert not key.deleting


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ({"generate": {"length": 64, "alphabet": "hex", "prefix": "sk_live."}}, "generate"),
        ({"secretRef": {"name": "upstream", "key": "api-key"}}, "secretRef"),
        (
            {"secretRef": {"name": "upstream", "key": "token", "deleteAfterSeal": True}},
            "secretRef",
        ),
        ({"sealed": {"recipient": RECIPIENT, "ciphertext": "c2VhbGVk"}}, "sealed"),
        ({"generate": None, "sealed": {"recipient": RECIPIENT, "ciphertext": "x"}}, "sealed"),
    ],
)
def test_each_source_kind(source: dict[str, Any], kind: str) -> None:
    assert ApiKey.parse(body(source)).spec.source.kind == kind


def test_full_object() -> None:
    key = ApiKey.parse(
        {
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "ApiKey",
            "metadata": {
                **METADATA,
                "generation": 4,
                "resourceVersion": "991",
                "annotations": {ROTATE_ANNOTATION: "2030-01-01T00:00:00Z", "other": "x"},
                "deletionTimestamp": "2030-01-02T00:00:00Z",
                "finalizers": [FINALIZER],
                "managedFields": [{"ignored": True}],
            },
            "spec": {
                "source": {"secretRef": {"name": "s", "key": "k", "deleteAfterSeal": True}},
                "kms": {"provider": "aws", "keyId": "arn:aws:kms:eu-west-1:1:key/x"},
                "rotation": {"interval": "720h", "retain": 2},
                "delivery": {
                    "fileName": "stripe.key",
                    "format": "env",
                    "envName": "STRIPE_KEY",
                    "mode": "0440",
                },
                "unknownField": 1,
            },
            "status": {"currentVersion": 3},
        }
    )
    assert key.metadata.generation == 4
    assert key.metadata.resource_version == "991"
    assert key.metadata.finalizers == (FINALIZER,)
    assert key.rotation_request == "2030-01-01T00:00:00Z"
    assert key.deleting
    ref = key.spec.source.secret_ref
    assert ref is not None
    assert ref.delete_after_seal
    assert (key.spec.kms.provider, key.spec.kms.key_id) == ("aws", "arn:aws:kms:eu-west-1:1:key/x")
    assert key.spec.rotation == {"interval": "720h", "retain": 2}
    assert key.spec.delivery.file_name == "stripe.key"
    assert key.spec.delivery.env_name == "STRIPE_KEY"
    assert key.status == {"currentVersion": 3}


def test_parsed_models_are_frozen() -> None:
    key = ApiKey.parse(body())
    with pytest.raises(ValueError, match="frozen"):
        key.spec.delivery.mode = "0440"  # type: ignore[misc]


# -- refused -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        pytest.param(body({}), "spec.source: Value error, exactly one of", id="no-source"),
        pytest.param(
            body({"generate": {}, "secretRef": {"name": "s", "key": "k"}}),
            "spec.source: Value error, exactly one of",
            id="two-sources",
        ),
        pytest.param(
            body(
                {
                    "generate": {},
                    "secretRef": {"name": "s", "key": "k"},
                    "sealed": {"recipient": RECIPIENT, "ciphertext": "x"},
                }
            ),
            "exactly one of",
            id="three-sources",
        ),
        pytest.param(body({"generate": {"length": 15}}), "spec.source.generate.length", id="short"),
        pytest.param(body({"generate": {"length": 513}}), "spec.source.generate.length", id="long"),
        pytest.param(
            body({"generate": {"prefix": "a" * 33}}), "spec.source.generate.prefix", id="prefix"
        ),
        pytest.param(
            body({"secretRef": {"name": "", "key": "k"}}),
            "spec.source.secretRef.name",
            id="empty-secret-name",
        ),
        pytest.param(
            body({"sealed": {"recipient": RECIPIENT, "ciphertext": ""}}),
            "spec.source.sealed.ciphertext",
            id="empty-ciphertext",
        ),
        pytest.param(
            body(delivery={"fileName": "a..b"}),
            "spec.delivery: Value error, delivery.fileName must be a plain file name",
            id="dot-dot-inside",
        ),
        pytest.param(
            body(delivery={"fileName": "key.."}), "delivery.fileName must be", id="dot-dot-end"
        ),
        pytest.param(
            body(delivery={"fileName": "../etc"}), "spec.delivery.fileName", id="dot-dot-start"
        ),
        pytest.param(body(delivery={"fileName": "dir/key"}), "spec.delivery.fileName", id="slash"),
        pytest.param(body(delivery={"fileName": ".env"}), "spec.delivery.fileName", id="hidden"),
        pytest.param(body(delivery={"mode": "0644"}), "spec.delivery.mode", id="mode"),
        pytest.param(body(kms={"provider": "vault"}), "spec.kms.provider", id="kms-provider"),
        pytest.param({"spec": body()["spec"]}, "metadata: Field required", id="no-metadata"),
        pytest.param({"metadata": METADATA}, "spec: Field required", id="no-spec"),
    ],
)
def test_invalid_specs(bad: dict[str, Any], where: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        ApiKey.parse(bad)
    assert where in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_plain_file_name_with_single_dots_is_fine() -> None:
    delivery = ApiKey.parse(body(delivery={"fileName": "a.b.c-d_e"})).spec.delivery
    assert delivery.file_name == "a.b.c-d_e"


def test_every_error_is_reported() -> None:
    with pytest.raises(InvalidSpec) as info:
        ApiKey.parse(body({"generate": {"length": 1, "alphabet": "morse"}}, delivery={"mode": 1}))
    message = str(info.value)
    for where in (
        "spec.source.generate.length",
        "spec.source.generate.alphabet",
        "spec.delivery.mode",
    ):
        assert where in message
    assert message.count("; ") == 2


# -- no value ever reaches an error --------------------------------------------------------------

LONG = CANARY * (131072 // len(CANARY) + 1)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(body({"generate": {"prefix": CANARY}}), id="generate.prefix"),
        pytest.param(body({"generate": {"alphabet": CANARY}}), id="generate.alphabet"),
        pytest.param(body({"generate": {"length": CANARY}}), id="generate.length"),
        pytest.param(body({"generate": CANARY}), id="generate"),
        pytest.param(body(CANARY), id="source"),
        pytest.param(body({"sealed": {"recipient": CANARY, "ciphertext": "x"}}), id="recipient"),
        pytest.param(body({"sealed": {"recipient": RECIPIENT, "ciphertext": LONG}}), id="long"),
        pytest.param(
            body({"sealed": {"recipient": RECIPIENT, "ciphertext": [CANARY]}}), id="ciphertext"
        ),
        pytest.param(
            body({"sealed": {"recipient": RECIPIENT, "ciphertext": CANARY}, "generate": {}}),
            id="two-sources",
        ),
        pytest.param(body({"secretRef": {"name": "s", "key": "/" + CANARY}}), id="secret.key"),
        pytest.param(body({"secretRef": {"name": LONG, "key": "k"}}), id="secret.name"),
        pytest.param(
            body({"secretRef": {"name": "s", "key": "k", "deleteAfterSeal": CANARY}}),
            id="deleteAfterSeal",
        ),
        pytest.param(body(delivery={"fileName": CANARY + "/x"}), id="fileName"),
        pytest.param(body(delivery={"fileName": CANARY + ".."}), id="fileName-dots"),
        pytest.param(body(delivery={"envName": CANARY}), id="envName"),
        pytest.param(body(delivery={"format": CANARY}), id="format"),
        pytest.param(body(kms={"keyId": LONG}), id="kms.keyId"),
        pytest.param(body(kms={"provider": CANARY}), id="kms.provider"),
        pytest.param(body(rotation=CANARY), id="rotation"),
        pytest.param(
            {"metadata": {**METADATA, "annotations": {"note": [CANARY]}}, "spec": body()["spec"]},
            id="annotation-value",
        ),
        pytest.param({"metadata": {**METADATA, "uid": [CANARY]}, "spec": body()["spec"]}, id="uid"),
    ],
)
def test_errors_never_contain_the_input(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidSpec) as info:
        ApiKey.parse(bad)
    exc = info.value
    for text in (str(exc), repr(exc), "".join(traceback.format_exception(exc))):
        assert CANARY not in text
        assert CANARY[8:24] not in text
    assert exc.__cause__ is None
    assert exc.__suppress_context__  # the ValidationError, which holds the input, is hidden


# -- source digest -------------------------------------------------------------------------------


def test_source_digest_shape() -> None:
    digest = source_digest(spec_of({"generate": {}}))
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 32
    int(digest.removeprefix("sha256:"), 16)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        pytest.param(
            {"secretRef": {"name": "s", "key": "k"}},
            {"secretRef": {"key": "k", "name": "s"}},
            id="key-order",
        ),
        pytest.param(
            {"generate": {"length": 32, "alphabet": "hex"}},
            {"generate": {"alphabet": "hex", "length": 32}},
            id="generate-key-order",
        ),
        pytest.param(
            {"generate": {}},
            {"generate": {"length": 40, "alphabet": "base62", "prefix": ""}},
            id="explicit-defaults",
        ),
        pytest.param(
            {"secretRef": {"name": "s", "key": "k"}},
            {"secretRef": {"name": "s", "key": "k", "deleteAfterSeal": False}},
            id="explicit-default-flag",
        ),
        pytest.param(
            {"generate": {}},
            {"generate": {}, "secretRef": None, "sealed": None},
            id="explicit-nulls",
        ),
    ],
)
def test_source_digest_ignores_spelling(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert source_digest(spec_of(one)) == source_digest(spec_of(other))


def test_source_digest_ignores_the_rest_of_the_spec() -> None:
    plain = ApiKey.parse(body()).spec
    dressed = ApiKey.parse(
        body(kms={"provider": "local"}, rotation={"interval": "1h"}, delivery={"format": "json"})
    ).spec
    assert source_digest(plain) == source_digest(dressed)


SOURCES: list[dict[str, Any]] = [
    {"generate": {}},
    {"generate": {"length": 41}},
    {"generate": {"alphabet": "hex"}},
    {"generate": {"prefix": "sk_"}},
    {"secretRef": {"name": "s", "key": "k"}},
    {"secretRef": {"name": "t", "key": "k"}},
    {"secretRef": {"name": "s", "key": "j"}},
    {"sealed": {"recipient": RECIPIENT, "ciphertext": "one"}},
    {"sealed": {"recipient": RECIPIENT, "ciphertext": "two"}},
    {"sealed": {"recipient": "x25519:fedcba9876543210", "ciphertext": "one"}},
]


def test_source_digest_changes_with_the_source() -> None:
    digests = [source_digest(spec_of(source)) for source in SOURCES]
    assert len(set(digests)) == len(SOURCES)


@given(
    st.from_regex(r"[A-Za-z0-9_.-]{0,32}", fullmatch=True),
    st.integers(16, 512),
    st.sampled_from(["base62", "hex", "base64url", "alphanumeric"]),
)
def test_source_digest_is_a_function_of_the_source(prefix: str, length: int, alphabet: str) -> None:
    fields: dict[str, Any] = {"prefix": prefix, "length": length, "alphabet": alphabet}
    source = {"generate": fields}
    reordered = {"generate": dict(reversed(list(fields.items())))}
    assert source_digest(spec_of(source)) == source_digest(spec_of(reordered))
    if (prefix, length, alphabet) != ("", 40, "base62"):
        assert source_digest(spec_of(source)) != source_digest(spec_of({"generate": {}}))


def test_toggling_delete_after_seal_keeps_the_digest() -> None:
    keep = {"secretRef": {"name": "s", "key": "k", "deleteAfterSeal": False}}
    delete = {"secretRef": {"name": "s", "key": "k", "deleteAfterSeal": True}}
    assert source_digest(spec_of(keep)) == source_digest(spec_of(delete))
