"""The ApiKey and KeyRole CRDs in crds/ are enforced by a real API server.

Every validation rule of the schemas has a case here that the API server refuses
(422, with the rule's message on the right field), and the valid shapes, the
defaults, the examples in examples/, kubectl explain, the printer columns, the
short names and the `securekeys` category are checked against the same server.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient

from secure_keys_dev.cluster import Binaries, MissingBinaries
from secure_keys_dev.stack import eventually
from tests.e2e.conftest import Target

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"
GROUP = "securekeys.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PLURALS = {"ApiKey": "apikeys", "KeyRole": "keyroles"}


def load_crds() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(CRD_DIR.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# -- installing the CRDs ----------------------------------------------------------------


def _is_established(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    crd = extensions.read_custom_resource_definition(name)
    conditions = {c.type: c.status for c in (crd.status.conditions or [])}
    return conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True"


def _gone(extensions: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        extensions.read_custom_resource_definition(name)
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def _install(extensions: client.ApiextensionsV1Api, crd: dict[str, Any]) -> bool:
    """Create or replace one CRD; True when this call created it."""
    name = crd["metadata"]["name"]
    try:
        extensions.create_custom_resource_definition(crd)
    except ApiException as exc:
        if exc.status != 409:
            raise
    else:
        return True
    existing = extensions.read_custom_resource_definition(name)
    if existing.metadata.deletion_timestamp is not None:
        # Another module's teardown is still deleting it: wait, then start afresh.
        eventually(lambda: _gone(extensions, name), timeout=60, what=f"{name} to finish deleting")
        extensions.create_custom_resource_definition(crd)
        return True
    body = json.loads(json.dumps(crd))
    body["metadata"]["resourceVersion"] = existing.metadata.resource_version
    extensions.replace_custom_resource_definition(name, body)
    return False


@pytest.fixture(scope="module")
def crds(admin_api: client.ApiClient) -> Iterator[list[dict[str, Any]]]:
    """Both CRDs installed from crds/ and served; removed at the end if this module made them.

    Overrides the session fixture of the same name in conftest.py: this module also proves
    that the files install on a cluster that has none, and cleans up after itself there.
    """
    extensions = client.ApiextensionsV1Api(admin_api)
    objects = client.CustomObjectsApi(admin_api)
    docs = load_crds()
    created = [crd["metadata"]["name"] for crd in docs if _install(extensions, crd)]
    for crd in docs:
        name = crd["metadata"]["name"]
        eventually(partial(_is_established, extensions, name), what=f"{name} Established")

        def served(plural: str = crd["spec"]["names"]["plural"]) -> bool:
            try:
                objects.list_cluster_custom_object(GROUP, VERSION, plural)
            except ApiException as exc:
                if exc.status == 404:
                    return False
                raise
            return True

        eventually(served, what=f"{name} to be served")
    yield docs
    for name in created:
        extensions.delete_custom_resource_definition(name)
    for name in created:
        eventually(partial(_gone, extensions, name), timeout=60, what=f"{name} deleted")


# -- helpers ----------------------------------------------------------------------------


def manifest(kind: str, spec: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name or f"{kind.lower()}-{secrets.token_hex(3)}"},
        "spec": spec,
    }


def create(api: client.ApiClient, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
    created: dict[str, Any] = client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURALS[obj["kind"]], obj
    )
    return created


def rejection(api: client.ApiClient, namespace: str, obj: dict[str, Any]) -> str:
    """The API server's message refusing `obj`, which must be a 422."""
    with pytest.raises(ApiException) as caught:
        create(api, namespace, obj)
    assert caught.value.status == 422, caught.value.body
    message: str = json.loads(caught.value.body)["message"]
    return message


def ak(**parts: Any) -> dict[str, Any]:
    """An ApiKey spec: a generated source unless `source` is given, plus `parts`."""
    return {"source": {"generate": {}}, **parts}


def kr(**parts: Any) -> dict[str, Any]:
    """A KeyRole spec: one ServiceAccount subject and one key unless given, plus `parts`."""
    return {
        "subjects": [{"kind": "ServiceAccount", "name": "app"}],
        "keys": {"names": ["stripe-live"]},
        **parts,
    }


SECRET_REF = {"name": "bootstrap", "key": "api-key"}
SEALED = {
    "recipient": "x25519:0123456789abcdef",
    "ciphertext": base64.b64encode(b"\x01" + bytes(range(60))).decode(),
}
EXACTLY_ONE = "exactly one of source.generate, source.secretRef or source.sealed must be set"
CRON = "rotation.schedule must be a 5-field cron expression"
NOT_BOTH = "set rotation.schedule or rotation.interval, not both"
GRACE = "rotation.gracePeriod must be shorter than rotation.interval"
PLAIN = "delivery.fileName must be a plain file name: no '/', no '..'"
MATCH = "should match"


# -- ApiKey: every rule refuses ---------------------------------------------------------

APIKEY_REJECTIONS = [
    # spec.source: required, and exactly one of the three
    pytest.param({}, "spec.source", "Required value", id="no-source"),
    pytest.param(ak(source={}), "spec.source", EXACTLY_ONE, id="empty-source"),
    pytest.param(
        ak(source={"generate": {}, "secretRef": SECRET_REF}),
        "spec.source",
        EXACTLY_ONE,
        id="generate-and-secretRef",
    ),
    pytest.param(
        ak(source={"secretRef": SECRET_REF, "sealed": SEALED}),
        "spec.source",
        EXACTLY_ONE,
        id="secretRef-and-sealed",
    ),
    pytest.param(
        ak(source={"generate": {}, "secretRef": SECRET_REF, "sealed": SEALED}),
        "spec.source",
        EXACTLY_ONE,
        id="all-three-sources",
    ),
    # source.generate
    pytest.param(
        ak(source={"generate": {"length": 15}}),
        "spec.source.generate.length",
        "should be greater than or equal to 16",
        id="generate-length-15",
    ),
    pytest.param(
        ak(source={"generate": {"length": 513}}),
        "spec.source.generate.length",
        "should be less than or equal to 512",
        id="generate-length-513",
    ),
    pytest.param(
        ak(source={"generate": {"alphabet": "base32"}}),
        "spec.source.generate.alphabet",
        'Unsupported value: "base32"',
        id="generate-alphabet-unknown",
    ),
    pytest.param(
        ak(source={"generate": {"prefix": "sk live "}}),
        "spec.source.generate.prefix",
        MATCH,
        id="generate-prefix-space",
    ),
    pytest.param(
        ak(source={"generate": {"prefix": "p" * 33}}),
        "spec.source.generate.prefix",
        "Too long",
        id="generate-prefix-33-chars",
    ),
    # source.secretRef
    pytest.param(
        ak(source={"secretRef": {"name": "bootstrap"}}),
        "spec.source.secretRef.key",
        "Required value",
        id="secretRef-without-key",
    ),
    pytest.param(
        ak(source={"secretRef": {"key": "api-key"}}),
        "spec.source.secretRef.name",
        "Required value",
        id="secretRef-without-name",
    ),
    pytest.param(
        ak(source={"secretRef": {"name": "Bad_Name", "key": "api-key"}}),
        "spec.source.secretRef.name",
        MATCH,
        id="secretRef-name-not-dns1123",
    ),
    pytest.param(
        ak(source={"secretRef": {"name": "bootstrap", "key": "a/b"}}),
        "spec.source.secretRef.key",
        MATCH,
        id="secretRef-key-slash",
    ),
    # source.sealed
    pytest.param(
        ak(source={"sealed": {"recipient": SEALED["recipient"]}}),
        "spec.source.sealed.ciphertext",
        "Required value",
        id="sealed-without-ciphertext",
    ),
    pytest.param(
        ak(source={"sealed": {**SEALED, "recipient": "x25519:0123456789ABCDEF"}}),
        "spec.source.sealed.recipient",
        MATCH,
        id="sealed-recipient-upper-hex",
    ),
    pytest.param(
        ak(source={"sealed": {**SEALED, "recipient": "age1qqqqqqqqqqqqqqqq"}}),
        "spec.source.sealed.recipient",
        MATCH,
        id="sealed-recipient-wrong-scheme",
    ),
    pytest.param(
        ak(source={"sealed": {**SEALED, "ciphertext": "not base64!"}}),
        "spec.source.sealed.ciphertext",
        MATCH,
        id="sealed-ciphertext-not-base64",
    ),
    pytest.param(
        ak(source={"sealed": {**SEALED, "ciphertext": "abcde"}}),
        "spec.source.sealed.ciphertext",
        MATCH,
        id="sealed-ciphertext-bad-padding",
    ),
    # kms
    pytest.param(
        ak(kms={"provider": "vault"}),
        "spec.kms.provider",
        'Unsupported value: "vault"',
        id="kms-provider-unknown",
    ),
    pytest.param(
        ak(kms={"provider": "aws", "keyId": "k" * 2049}),
        "spec.kms.keyId",
        "Too long",
        id="kms-keyId-too-long",
    ),
    # rotation.schedule
    *(
        pytest.param(
            ak(rotation={"schedule": schedule}),
            "spec.rotation.schedule",
            CRON,
            id=f"cron-{schedule}",
        )
        for schedule in (
            "61 * * * *",
            "every day",
            "* * * *",
            "* * * * * *",
            "* 24 * * *",
            "0 0 0 * *",
            "0 0 32 * *",
            "0 0 * 13 *",
            "0 0 * * 8",
            "*/0 * * * *",
            "0 3 * * MONDAY",
            "0 3 * FOO *",
            "@reboot",
            "@every 1h",
            " 0 3 * * *",
            "",
        )
    ),
    pytest.param(
        ak(rotation={"schedule": "@daily", "interval": "24h"}),
        "spec.rotation",
        NOT_BOTH,
        id="schedule-and-interval",
    ),
    # rotation.interval and rotation.gracePeriod
    pytest.param(
        ak(rotation={"interval": "5s"}),
        "spec.rotation.interval",
        "rotation.interval must be at least 10s",
        id="interval-5s",
    ),
    pytest.param(
        ak(rotation={"interval": "9999ms"}),
        "spec.rotation.interval",
        "rotation.interval must be at least 10s",
        id="interval-9999ms",
    ),
    pytest.param(
        # Past Go's largest duration (about 2562047h): the rule cannot evaluate, so it refuses.
        ak(rotation={"interval": "3000000h"}),
        "spec.rotation.interval",
        "rotation.interval must be at least 10s",
        id="interval-overflows",
    ),
    *(
        pytest.param(
            ak(rotation={"interval": interval}),
            "spec.rotation.interval",
            "rotation.interval must be a duration such as 720h",
            id=f"interval-{interval}",
        )
        for interval in ("1 day", "1d", "30", "-1h", "1h 30m", "h")
    ),
    pytest.param(
        ak(rotation={"gracePeriod": "1 day"}),
        "spec.rotation.gracePeriod",
        "rotation.gracePeriod must be a duration such as 1h",
        id="gracePeriod-1-day",
    ),
    pytest.param(
        ak(rotation={"interval": "1h", "gracePeriod": "1h"}),
        "spec.rotation.gracePeriod",
        GRACE,
        id="gracePeriod-equal-to-interval",
    ),
    pytest.param(
        ak(rotation={"interval": "30m", "gracePeriod": "1.5h"}),
        "spec.rotation.gracePeriod",
        GRACE,
        id="gracePeriod-longer-than-interval",
    ),
    # rotation.retain
    pytest.param(
        ak(rotation={"retain": 0}),
        "spec.rotation.retain",
        "should be greater than or equal to 1",
        id="retain-0",
    ),
    pytest.param(
        ak(rotation={"retain": 101}),
        "spec.rotation.retain",
        "should be less than or equal to 100",
        id="retain-101",
    ),
    # delivery.fileName
    pytest.param(
        ak(delivery={"fileName": "../etc/passwd"}),
        "spec.delivery.fileName",
        PLAIN,
        id="fileName-parent-traversal",
    ),
    pytest.param(
        ak(delivery={"fileName": "a/b"}), "spec.delivery.fileName", PLAIN, id="fileName-slash"
    ),
    pytest.param(
        ak(delivery={"fileName": "a..b"}),
        "spec.delivery.fileName",
        PLAIN,
        id="fileName-double-dot",
    ),
    pytest.param(
        ak(delivery={"fileName": ".."}), "spec.delivery.fileName", PLAIN, id="fileName-dotdot"
    ),
    pytest.param(
        ak(delivery={"fileName": ".hidden"}),
        "spec.delivery.fileName",
        MATCH,
        id="fileName-leading-dot",
    ),
    pytest.param(
        ak(delivery={"fileName": "my key"}),
        "spec.delivery.fileName",
        MATCH,
        id="fileName-space",
    ),
    pytest.param(
        ak(delivery={"fileName": ""}), "spec.delivery.fileName", MATCH, id="fileName-empty"
    ),
    pytest.param(
        ak(delivery={"fileName": "stripe.previous"}),
        "spec.delivery.fileName",
        "must not end in .previous or .meta.json",
        id="fileName-reserved-previous",
    ),
    pytest.param(
        ak(delivery={"fileName": "stripe.meta.json"}),
        "spec.delivery.fileName",
        "must not end in .previous or .meta.json",
        id="fileName-reserved-meta",
    ),
    # delivery.format, envName, mode
    pytest.param(
        ak(delivery={"format": "yaml"}),
        "spec.delivery.format",
        'Unsupported value: "yaml"',
        id="format-unknown",
    ),
    pytest.param(
        ak(delivery={"format": "env", "envName": "api_key"}),
        "spec.delivery.envName",
        MATCH,
        id="envName-lower-case",
    ),
    pytest.param(
        ak(delivery={"format": "env", "envName": "1KEY"}),
        "spec.delivery.envName",
        MATCH,
        id="envName-leading-digit",
    ),
    pytest.param(
        ak(delivery={"envName": "API_KEY"}),
        "spec.delivery.envName",
        "delivery.envName is only used with delivery.format env",
        id="envName-without-env-format",
    ),
    pytest.param(
        ak(delivery={"mode": "0777"}),
        "spec.delivery.mode",
        'Unsupported value: "0777"',
        id="mode-0777",
    ),
    pytest.param(
        ak(delivery={"mode": 256}),
        "spec.delivery.mode",
        "must be of type string",
        id="mode-as-integer",
    ),
]


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(("spec", "field", "text"), APIKEY_REJECTIONS)
def test_apikey_rule_is_enforced(
    admin_api: client.ApiClient, namespace: str, spec: dict[str, Any], field: str, text: str
) -> None:
    message = rejection(admin_api, namespace, manifest("ApiKey", spec))
    assert f"{field}:" in message, message
    assert text in message, message


@pytest.mark.usefixtures("crds")
def test_apikey_needs_a_spec(admin_api: client.ApiClient, namespace: str) -> None:
    obj = manifest("ApiKey", {})
    del obj["spec"]
    assert "spec: Required value" in rejection(admin_api, namespace, obj)


# -- ApiKey: valid shapes are accepted, with defaults -----------------------------------

DEFAULTS_OF_SOURCE: dict[str, dict[str, Any]] = {
    "generate": {"length": 40, "alphabet": "base62", "prefix": ""},
    "secretRef": {"deleteAfterSeal": False},
}

APIKEY_ACCEPTED = [
    pytest.param(ak(), id="generate-defaults"),
    pytest.param(
        ak(source={"generate": {"length": 16, "alphabet": "hex", "prefix": "sk_live."}}),
        id="generate-min-length",
    ),
    pytest.param(
        ak(source={"generate": {"length": 512, "alphabet": "alphanumeric"}}),
        id="generate-max-length",
    ),
    pytest.param(ak(source={"generate": {"alphabet": "base64url"}}), id="generate-base64url"),
    pytest.param(ak(source={"secretRef": SECRET_REF}), id="secretRef"),
    pytest.param(
        ak(source={"secretRef": {"name": "a.b-c", "key": ".env_KEY-1", "deleteAfterSeal": True}}),
        id="secretRef-delete-after-seal",
    ),
    pytest.param(ak(source={"sealed": SEALED}), id="sealed"),
    *(
        pytest.param(ak(kms={"provider": provider, "keyId": "some-key"}), id=f"kms-{provider}")
        for provider in ("local", "aws", "gcp", "pkcs11", "azure")
    ),
    pytest.param(ak(kms={"keyId": "alias/secure-keys"}), id="kms-key-only"),
    *(
        pytest.param(ak(rotation={"schedule": schedule}), id=f"cron-{schedule}")
        for schedule in (
            "*/15 * * * *",
            "0 3 * * MON-FRI",
            "0 3 * * mon-fri",
            "@daily",
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@hourly",
            "5,35 9-17/2 * * 1-5",
            "0 0 1 JAN,JUL *",
            "59 23 31 12 7",
            "0 0 1-15/3 */2 0",
            "00 03 * * *",
            "0  3  *  *  *",
        )
    ),
    *(
        pytest.param(ak(rotation={"interval": interval}), id=f"interval-{interval}")
        for interval in ("720h", "30m", "45s", "1h30m", "1.5h", "10s", "10000ms")
    ),
    pytest.param(ak(rotation={"interval": "24h", "gracePeriod": "23h59m"}), id="grace-shorter"),
    pytest.param(ak(rotation={"schedule": "@daily", "gracePeriod": "48h"}), id="grace-cron"),
    pytest.param(ak(rotation={"retain": 1}), id="retain-1"),
    pytest.param(ak(rotation={}), id="rotation-on-demand-only"),
    pytest.param(
        ak(delivery={"fileName": "stripe.key", "format": "json", "mode": "0440"}),
        id="delivery-json",
    ),
    pytest.param(
        ak(delivery={"fileName": "a", "format": "env", "envName": "_STRIPE_KEY_2"}),
        id="delivery-env",
    ),
    pytest.param(ak(delivery={"fileName": "x" * 128}), id="fileName-128-chars"),
]


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("spec", APIKEY_ACCEPTED)
def test_valid_apikey_is_accepted(
    admin_api: client.ApiClient, namespace: str, spec: dict[str, Any]
) -> None:
    created = create(admin_api, namespace, manifest("ApiKey", spec))
    assert created["spec"]["source"] == {
        key: DEFAULTS_OF_SOURCE.get(key, {}) | value for key, value in spec["source"].items()
    }


@pytest.mark.usefixtures("crds")
def test_apikey_defaults_are_applied(admin_api: client.ApiClient, namespace: str) -> None:
    created = create(
        admin_api, namespace, manifest("ApiKey", ak(rotation={"interval": "1h"}, delivery={}))
    )
    assert created["spec"] == {
        "source": {"generate": {"length": 40, "alphabet": "base62", "prefix": ""}},
        "rotation": {"interval": "1h", "retain": 3},
        "delivery": {"format": "raw", "mode": "0400"},
    }


@pytest.mark.usefixtures("crds")
def test_unknown_fields_are_pruned_not_stored(admin_api: client.ApiClient, namespace: str) -> None:
    spec = ak(plaintext="sk-should-never-be-stored")
    spec["source"] = {"generate": {"length": 20, "entropy": "extra"}}
    created = create(admin_api, namespace, manifest("ApiKey", spec))
    assert "plaintext" not in created["spec"]
    assert "entropy" not in created["spec"]["source"]["generate"]
    # With strict field validation the same object is refused instead.
    with pytest.raises(ApiException) as caught:
        client.CustomObjectsApi(admin_api).create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            "apikeys",
            manifest("ApiKey", spec),
            field_validation="Strict",
        )
    assert 'unknown field "spec.plaintext"' in json.loads(caught.value.body)["message"]


# -- KeyRole: every rule refuses --------------------------------------------------------

NAMESPACE_ONLY_FOR_SA = "subjects[].namespace is only valid for kind ServiceAccount"
VALUES_RULE = "matchExpressions[].values must be non-empty for In and NotIn"
TTL_RANGE = "access.ttl must be more than 0s and at most 24h"
WINDOW = {"days": ["Mon"], "start": "09:00", "end": "17:00"}

KEYROLE_REJECTIONS = [
    # subjects
    pytest.param({"keys": {"names": ["k"]}}, "spec.subjects", "Required value", id="no-subjects"),
    pytest.param(kr(subjects=[]), "spec.subjects", "at least 1 items", id="empty-subjects"),
    pytest.param(
        kr(subjects=[{"kind": "Robot", "name": "r2"}]),
        "spec.subjects[0].kind",
        'Unsupported value: "Robot"',
        id="subject-kind-unknown",
    ),
    pytest.param(
        kr(subjects=[{"name": "alice"}]),
        "spec.subjects[0].kind",
        "Required value",
        id="subject-without-kind",
    ),
    pytest.param(
        kr(subjects=[{"kind": "User"}]),
        "spec.subjects[0].name",
        "Required value",
        id="subject-without-name",
    ),
    pytest.param(
        kr(subjects=[{"kind": "User", "name": ""}]),
        "spec.subjects[0].name",
        "at least 1 chars long",
        id="subject-empty-name",
    ),
    pytest.param(
        kr(subjects=[{"kind": "User", "name": "alice", "namespace": "default"}]),
        "spec.subjects[0].namespace",
        NAMESPACE_ONLY_FOR_SA,
        id="namespace-on-user",
    ),
    pytest.param(
        kr(
            subjects=[
                {"kind": "ServiceAccount", "name": "app", "namespace": "ops"},
                {"kind": "Group", "name": "devs", "namespace": "ops"},
            ]
        ),
        "spec.subjects[1].namespace",
        NAMESPACE_ONLY_FOR_SA,
        id="namespace-on-group",
    ),
    pytest.param(
        kr(subjects=[{"kind": "ServiceAccount", "name": "app", "namespace": "Not_NS"}]),
        "spec.subjects[0].namespace",
        MATCH,
        id="namespace-not-dns1123-label",
    ),
    # keys
    pytest.param(
        {"subjects": [{"kind": "User", "name": "alice"}]},
        "spec.keys",
        "Required value",
        id="no-keys",
    ),
    pytest.param(
        kr(keys={}),
        "spec.keys",
        "keys must set at least one of keys.names or keys.selector",
        id="keys-neither-names-nor-selector",
    ),
    pytest.param(
        kr(keys={"names": []}), "spec.keys.names", "at least 1 items", id="keys-names-empty"
    ),
    pytest.param(
        kr(keys={"names": ["Stripe_Live"]}),
        "spec.keys.names[0]",
        MATCH,
        id="keys-name-not-dns1123",
    ),
    pytest.param(
        kr(keys={"names": ["a", "a"]}),
        "spec.keys.names[1]",
        'Duplicate value: "a"',
        id="keys-names-duplicate",
    ),
    pytest.param(
        kr(keys={"selector": {"matchExpressions": [{"key": "team", "operator": "Like"}]}}),
        "spec.keys.selector.matchExpressions[0].operator",
        'Unsupported value: "Like"',
        id="selector-operator-unknown",
    ),
    pytest.param(
        kr(keys={"selector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}),
        "spec.keys.selector.matchExpressions[0].values",
        VALUES_RULE,
        id="selector-in-without-values",
    ),
    pytest.param(
        kr(
            keys={
                "selector": {
                    "matchExpressions": [{"key": "team", "operator": "Exists", "values": ["a"]}]
                }
            }
        ),
        "spec.keys.selector.matchExpressions[0].values",
        VALUES_RULE,
        id="selector-exists-with-values",
    ),
    pytest.param(
        kr(keys={"selector": {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]}}),
        "spec.keys.selector.matchExpressions[0].key",
        MATCH,
        id="selector-expression-bad-key",
    ),
    pytest.param(
        kr(keys={"selector": {"matchLabels": {"bad key": "x"}}}),
        "spec.keys.selector.matchLabels",
        "keys.selector.matchLabels keys must be valid label keys",
        id="selector-label-bad-key",
    ),
    pytest.param(
        kr(keys={"selector": {"matchLabels": {"team": "a b"}}}),
        "spec.keys.selector.matchLabels.team",
        MATCH,
        id="selector-label-bad-value",
    ),
    # permissions
    pytest.param(
        kr(permissions=["read", "write"]),
        "spec.permissions[1]",
        'Unsupported value: "write"',
        id="permission-unknown",
    ),
    pytest.param(kr(permissions=[]), "spec.permissions", "at least 1 items", id="no-permissions"),
    pytest.param(
        kr(permissions=["read", "read"]),
        "spec.permissions[1]",
        'Duplicate value: "read"',
        id="permission-duplicate",
    ),
    # access.ttl
    pytest.param(kr(access={"ttl": "48h"}), "spec.access.ttl", TTL_RANGE, id="ttl-48h"),
    pytest.param(kr(access={"ttl": "24h1s"}), "spec.access.ttl", TTL_RANGE, id="ttl-24h1s"),
    pytest.param(kr(access={"ttl": "0s"}), "spec.access.ttl", TTL_RANGE, id="ttl-0s"),
    pytest.param(
        kr(access={"ttl": "1 day"}),
        "spec.access.ttl",
        "access.ttl must be a duration such as 15m",
        id="ttl-1-day",
    ),
    # access.timeWindows
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "start": "25:00"}]}),
        "spec.access.timeWindows[0].start",
        MATCH,
        id="window-start-25h",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "end": "9:00"}]}),
        "spec.access.timeWindows[0].end",
        MATCH,
        id="window-end-one-digit-hour",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "end": "12:60"}]}),
        "spec.access.timeWindows[0].end",
        MATCH,
        id="window-end-minute-60",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "start": "09:00", "end": "09:00"}]}),
        "spec.access.timeWindows[0].end",
        "timeWindows[].start and timeWindows[].end must differ",
        id="window-start-equals-end",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "days": []}]}),
        "spec.access.timeWindows[0].days",
        "at least 1 items",
        id="window-no-days",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "days": ["Monday"]}]}),
        "spec.access.timeWindows[0].days[0]",
        'Unsupported value: "Monday"',
        id="window-day-unknown",
    ),
    pytest.param(
        kr(access={"timeWindows": [{"days": ["Mon"], "start": "09:00"}]}),
        "spec.access.timeWindows[0].end",
        "Required value",
        id="window-without-end",
    ),
    pytest.param(
        kr(access={"timeWindows": [{**WINDOW, "timeZone": "Europe Berlin"}]}),
        "spec.access.timeWindows[0].timeZone",
        MATCH,
        id="window-timezone-space",
    ),
    pytest.param(
        kr(access={"requireMFA": "yes"}),
        "spec.access.requireMFA",
        "must be of type boolean",
        id="requireMFA-not-boolean",
    ),
]


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize(("spec", "field", "text"), KEYROLE_REJECTIONS)
def test_keyrole_rule_is_enforced(
    admin_api: client.ApiClient, namespace: str, spec: dict[str, Any], field: str, text: str
) -> None:
    message = rejection(admin_api, namespace, manifest("KeyRole", spec))
    assert f"{field}:" in message, message
    assert text in message, message


# -- KeyRole: valid shapes are accepted, with defaults ----------------------------------

KEYROLE_ACCEPTED = [
    pytest.param(kr(), id="minimal"),
    pytest.param(
        kr(
            subjects=[
                {"kind": "ServiceAccount", "name": "app", "namespace": "other"},
                {"kind": "User", "name": "alice@example.com"},
                {"kind": "Group", "name": "system:authenticated"},
            ]
        ),
        id="every-subject-kind",
    ),
    pytest.param(kr(keys={"selector": {}}), id="empty-selector"),
    pytest.param(
        kr(
            keys={
                "selector": {
                    "matchLabels": {"securekeys.io/team": "payments", "tier": ""},
                    "matchExpressions": [
                        {"key": "env", "operator": "In", "values": ["prod", "staging"]},
                        {"key": "example.com/legacy", "operator": "DoesNotExist"},
                        {"key": "owner", "operator": "Exists", "values": []},
                    ],
                }
            }
        ),
        id="selector",
    ),
    pytest.param(kr(keys={"names": ["a", "b.c"], "selector": {}}), id="names-and-selector"),
    pytest.param(kr(permissions=["read", "list", "rotate", "audit"]), id="every-permission"),
    pytest.param(kr(access={"ttl": "24h"}), id="ttl-24h"),
    pytest.param(kr(access={"ttl": "15m", "requireMFA": True}), id="ttl-and-mfa"),
    pytest.param(
        kr(
            access={
                "timeWindows": [
                    {"days": ["Mon", "Tue", "Wed", "Thu", "Fri"], "start": "00:00", "end": "23:59"},
                    {
                        "days": ["Sat", "Sun"],
                        "start": "22:00",
                        "end": "06:00",
                        "timeZone": "America/Argentina/Buenos_Aires",
                    },
                    {"days": ["Sun"], "start": "10:00", "end": "11:00", "timeZone": "Etc/GMT+5"},
                ]
            }
        ),
        id="time-windows",
    ),
]


@pytest.mark.usefixtures("crds")
@pytest.mark.parametrize("spec", KEYROLE_ACCEPTED)
def test_valid_keyrole_is_accepted(
    admin_api: client.ApiClient, namespace: str, spec: dict[str, Any]
) -> None:
    created = create(admin_api, namespace, manifest("KeyRole", spec))
    assert created["spec"]["subjects"] == spec["subjects"]
    assert created["spec"]["keys"] == spec["keys"]


@pytest.mark.usefixtures("crds")
def test_keyrole_defaults_are_applied(admin_api: client.ApiClient, namespace: str) -> None:
    created = create(
        admin_api, namespace, manifest("KeyRole", kr(access={"timeWindows": [WINDOW]}))
    )
    assert created["spec"]["permissions"] == ["read"]
    assert created["spec"]["access"] == {
        "requireMFA": False,
        "timeWindows": [{**WINDOW, "timeZone": "UTC"}],
    }


# -- status is a subresource ------------------------------------------------------------


@pytest.mark.usefixtures("crds")
def test_status_is_written_only_through_the_subresource(
    admin_api: client.ApiClient, namespace: str
) -> None:
    objects = client.CustomObjectsApi(admin_api)
    obj = manifest("ApiKey", ak())
    obj["status"] = {"currentVersion": 7}
    created = create(admin_api, namespace, obj)
    assert "status" not in created
    name = created["metadata"]["name"]
    status = {
        "observedGeneration": 1,
        "currentVersion": 1,
        "nextRotation": "2030-01-01T03:00:00Z",
        "versions": [
            {
                "version": 1,
                "state": "Active",
                "createdAt": "2029-12-01T03:00:00Z",
                "activatedAt": "2029-12-01T03:00:01Z",
                "kmsProvider": "local",
                "kmsKeyId": "default",
                "kmsKeyVersion": "1",
                "fingerprint": "hmac-sha256:0f1e2d3c",
            }
        ],
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Sealed",
                "message": "version 1 is active",
                "lastTransitionTime": "2029-12-01T03:00:01Z",
                "observedGeneration": 1,
            }
        ],
        "lastRotationRequest": "2029-12-01",
    }
    updated = objects.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, "apikeys", name, {"status": status}
    )
    # Every field was stored as written. (A controller running in this session may have
    # written status fields of its own first; the patch response shows the merged result.)
    assert {key: updated["status"].get(key) for key in status} == status
    # The status schema is enforced too.
    bad = {"status": {"versions": [{"version": 2, "state": "Revoked"}]}}
    with pytest.raises(ApiException) as caught:
        objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, "apikeys", name, bad
        )
    assert caught.value.status == 422
    assert 'Unsupported value: "Revoked"' in json.loads(caught.value.body)["message"]


# -- the examples -----------------------------------------------------------------------


def _example_documents() -> list[tuple[str, dict[str, Any]]]:
    docs: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(EXAMPLES_DIR.glob("*.y*ml")):
        docs.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def test_examples_cover_both_kinds_without_a_namespace() -> None:
    docs = _example_documents()
    assert {doc["kind"] for _, doc in docs} >= {"ApiKey", "KeyRole"}
    for name, doc in docs:
        assert "namespace" not in doc["metadata"], f"{name} should apply to the current namespace"


@pytest.mark.usefixtures("crds")
def test_every_example_is_accepted_by_server_side_apply(
    admin_api: client.ApiClient, namespace: str
) -> None:
    dynamic = DynamicClient(admin_api)
    docs = _example_documents()
    assert docs, "examples/ holds no manifests"
    for filename, doc in docs:
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        for _ in range(2):  # applying again is a no-op, not a conflict
            try:
                applied = resource.server_side_apply(
                    body=doc,
                    name=doc["metadata"]["name"],
                    namespace=namespace,
                    field_manager="e2e-examples",
                )
            except ApiException as exc:
                pytest.fail(f"{filename} was refused: {exc.status} {exc.body}")
            assert applied.metadata.namespace == namespace
        stored = resource.get(name=doc["metadata"]["name"], namespace=namespace).to_dict()
        _assert_subset(doc["spec"], stored["spec"], f"{filename}: spec")


def _assert_subset(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), where
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} was dropped"
            _assert_subset(value, actual[key], f"{where}.{key}")
    else:
        assert expected == actual, where


# -- the schemas read well --------------------------------------------------------------


def _undocumented(schema: dict[str, Any], path: str) -> Iterator[str]:
    if not str(schema.get("description", "")).strip():
        yield path
    for name, child in schema.get("properties", {}).items():
        if "." not in path and name == "metadata":
            # The API server allows only `type: object` on the root metadata and supplies
            # ObjectMeta's own documentation to kubectl explain.
            assert child == {"type": "object"}
            continue
        yield from _undocumented(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _undocumented(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _undocumented(schema["additionalProperties"], f"{path}{{}}")


def _walk(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    for child in schema.get("properties", {}).values():
        yield from _walk(child)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk(schema[key])


@pytest.mark.parametrize("crd", load_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_every_schema_field_has_a_description(crd: dict[str, Any]) -> None:
    kind = crd["spec"]["names"]["kind"]
    assert list(_undocumented(_schema(crd), kind)) == []


@pytest.mark.parametrize("crd", load_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_schema_is_closed_and_shaped_as_agreed(crd: dict[str, Any]) -> None:
    spec = crd["spec"]
    (version,) = spec["versions"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert spec["group"] == GROUP
    assert spec["scope"] == "Namespaced"
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)
    for node in _walk(_schema(crd)):
        assert "x-kubernetes-preserve-unknown-fields" not in node
    if spec["names"]["kind"] == "KeyAccessReview":
        # Never stored: created as a server-side dry run and answered in the returned
        # object's status by the gateway's webhook (docs/access.md). A status subresource
        # would reset that status before admission; with nothing stored there is nothing
        # for `kubectl get securekeys` or printer columns to show.
        assert "subresources" not in version
        assert "categories" not in spec["names"]
        assert "additionalPrinterColumns" not in version
        assert spec["names"]["shortNames"] == ["kar"]
        return
    assert version["subresources"] == {"status": {}}
    assert spec["names"]["categories"] == ["securekeys"]
    assert (
        spec["names"]["shortNames"] == {"ApiKey": ["ak"], "KeyRole": ["kr"]}[spec["names"]["kind"]]
    )
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[0] == "Ready"
    assert columns[-1] == "Age"


@pytest.mark.parametrize("crd", load_crds(), ids=lambda crd: crd["metadata"]["name"])
def test_installed_schema_matches_the_file(
    crds: list[dict[str, Any]], admin_api: client.ApiClient, crd: dict[str, Any]
) -> None:
    installed = admin_api.sanitize_for_serialization(
        client.ApiextensionsV1Api(admin_api).read_custom_resource_definition(
            crd["metadata"]["name"]
        )
    )
    assert installed["spec"]["versions"][0]["schema"] == crd["spec"]["versions"][0]["schema"]


# -- kubectl ----------------------------------------------------------------------------


@pytest.fixture
def kubectl(kube: Target, tmp_path: Path) -> Callable[..., str]:
    try:
        binary = str(Binaries.find().kubectl)
    except MissingBinaries:
        found = shutil.which("kubectl")
        if found is None:
            pytest.skip("no kubectl in build/bin or on PATH")
        binary = found
    cache = tmp_path / "kubectl-cache"

    def run(*args: str) -> str:
        done = subprocess.run(  # noqa: S603
            [binary, f"--kubeconfig={kube.kubeconfig}", f"--cache-dir={cache}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "NO_COLOR": "1"},
        )
        if done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr}")
        return done.stdout

    return run


def _flat(text: str) -> str:
    return " ".join(text.split())


def _explained(kubectl: Callable[..., str], resource: str) -> str:
    # The API server publishes a new CRD's OpenAPI a moment after it is Established.
    def attempt() -> str | None:
        try:
            return kubectl("explain", resource)
        except AssertionError:
            return None

    return _flat(eventually(attempt, what=f"kubectl explain {resource}"))


@pytest.mark.usefixtures("crds")
def test_kubectl_explain_reads_the_descriptions(kubectl: Callable[..., str]) -> None:
    crd_docs = {crd["spec"]["names"]["plural"]: _schema(crd) for crd in load_crds()}
    source = crd_docs["apikeys"]["properties"]["spec"]["properties"]["source"]

    out = _explained(kubectl, "apikeys.spec.source")
    assert f"GROUP: {GROUP} KIND: ApiKey VERSION: {VERSION}" in out
    assert _flat(source["description"]) in out
    for field in ("generate", "secretRef", "sealed"):
        assert f"{field} <Object>" in out
        assert _flat(source["properties"][field]["description"]) in out

    schedule = _explained(kubectl, "apikeys.spec.rotation.schedule")
    assert "5-field cron expression" in schedule

    ttl = _explained(kubectl, "keyroles.spec.access.ttl")
    assert "at most 24h" in ttl


@pytest.mark.usefixtures("crds")
def test_kubectl_short_names_category_and_columns(
    kubectl: Callable[..., str], admin_api: client.ApiClient, namespace: str
) -> None:
    create(admin_api, namespace, manifest("ApiKey", ak(), name="stripe-live"))
    create(admin_api, namespace, manifest("KeyRole", kr(), name="payments-readers"))

    def listed(*args: str) -> str | None:
        try:
            return kubectl("get", *args, "-n", namespace)
        except AssertionError:
            return None  # discovery of the new resources can lag behind Established

    apikeys = eventually(lambda: listed("ak"), what="kubectl get ak")
    header = apikeys.splitlines()[0].split()
    assert header[:5] == ["NAME", "READY", "VERSION", "NEXT", "ROTATION"]
    assert header[-1] == "AGE"
    assert "stripe-live" in apikeys

    keyroles = eventually(lambda: listed("kr"), what="kubectl get kr")
    assert keyroles.splitlines()[0].split() == ["NAME", "READY", "PERMISSIONS", "AGE"]
    assert "payments-readers" in keyroles
    assert '["read"]' in keyroles

    everything = eventually(lambda: listed("securekeys", "-o", "name"), what="category")
    assert set(everything.split()) == {
        "apikey.securekeys.io/stripe-live",
        "keyrole.securekeys.io/payments-readers",
    }
