"""Whatever an ApiKey holds, a reconcile ends in a well-formed outcome, never a traceback.

Hypothesis builds ApiKey bodies (valid-looking and malformed specs of each source kind,
arbitrary status bodies, rotate-now annotations), optional blob Secrets (real envelopes,
garbage, foreign Secrets) and optional ``secretRef`` Secrets with values from 0 bytes to
1 MiB, and runs the real reconciler against ``FakeApi`` with the local KMS. After each
reconcile, and after a second one:

* it returned an ``Outcome`` or raised ``Retry``, nothing else, and logged no traceback;
* the ApiKey has exactly one well-formed Ready condition (True/False, a CamelCase reason,
  a message, the current generation);
* Ready=False, or a ``Retry``, came with a Warning Event of that reason;
* Ready=True names one Active version whose blob exists;
* status writes keep to the CRD's status schema when the status read did;
* no status field, Event, log line or exception message holds the source's plaintext;
* after an ``Outcome`` from a schema-valid status, the key is at a fixed point: a
  second pass writes nothing (no status write, no Event).

The example tests pin the case that started this file: a ``secretRef`` value one byte
over the 64 KiB envelope limit crashed every reconcile with a ``ValueError``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import re
import traceback
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from secure_keys.controller.config import KmsDirectory, KmsSettings
from secure_keys.controller.controller_keys import ControllerKeys
from secure_keys.controller.models import FINALIZER, ROTATE_ANNOTATION, ApiKey, InvalidSpec
from secure_keys.controller.models import source_digest as spec_source_digest
from secure_keys.controller.reconciler import Outcome, Reconciler, Retry, blob_secret_name
from secure_keys.core import envelope
from secure_keys.core.binding import MAX_VERSION, KeyBinding
from secure_keys.core.envelope import MAX_PLAINTEXT_SIZE
from secure_keys.core.hierarchy import MIN_ITERATIONS
from secure_keys.core.sealing import RecipientPrivateKey, seal_to_recipient
from secure_keys.kube.client import APIKEYS, EVENTS, SECRETS, KubeApi
from secure_keys_dev.localkms import write_local_kms
from tests.conftest import CANARY
from tests.support.crd_schema import STATUS_SCHEMA, is_stamp, schema_errors
from tests.unit.controller.fakeapi import FakeApi

NS = "team"
NOW = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
SOURCE = "src"
SOURCE_KEY = "k"
LONG_NAME = "k" * 253
NAMES = ("k", "stripe-live", LONG_NAME)
CAMEL_CASE = re.compile(r"[A-Z][A-Za-z0-9]*")
OVERSIZED_REASONS = frozenset({"SourceInvalid"})
"""Reasons that say "the source value is unusable as it is" (the lead picks the name)."""

SECRET_MARKERS = (
    CANARY,
    base64.b64encode(CANARY.encode())[:32].decode(),
    CANARY.encode().hex()[:32],
)
"""The canary and the encodings a careless message would carry it in."""


# -- the environment: one KMS, one pair of controller keys, real blobs -------------------


class Env:
    """One local KMS, one pair of controller keys, and real sealed values of the canary.

    ``blobs`` maps (ApiKey name, version) to a real envelope as the blob Secret stores it;
    ``sealed`` maps an ApiKey name to a real ``spec.source.sealed.ciphertext``.
    """

    def __init__(self, kms: KmsDirectory, keys: ControllerKeys) -> None:
        self.kms = kms
        self.keys = keys
        self.blobs: dict[tuple[str, int], str] = {}
        self.sealed: dict[str, str] = {}

    def __repr__(self) -> str:
        return "Env(local KMS, controller keys, real blobs)"

    def reconciler(self, api: FakeApi) -> Reconciler:
        return Reconciler(cast(KubeApi, api), self.kms, self.keys, clock=lambda: NOW)


def _make_env(directory: Path) -> Env:
    config = write_local_kms(directory, iterations=MIN_ITERATIONS)
    env = Env(
        KmsDirectory(KmsSettings.load(config)),
        ControllerKeys(RecipientPrivateKey.generate(), bytearray(os.urandom(32))),
    )
    provider = env.kms.default()
    plaintext = CANARY.encode()
    for name in NAMES:
        for version in range(1, 5):
            sealed = envelope.seal(plaintext, KeyBinding(NS, name, version), provider)
            env.blobs[(name, version)] = base64.b64encode(sealed.to_bytes()).decode()
        env.sealed[name] = seal_to_recipient(
            env.keys.recipient.public(), plaintext, namespace=NS, name=name
        )
    return env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Env:
    return _make_env(tmp_path_factory.mktemp("kms"))


# -- strategies ----------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)


def mostly(usual: st.SearchStrategy[Any], *rare: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` seven times in ten, else one of ``rare``; shrinks towards ``usual``."""
    return st.integers(min_value=0, max_value=9).flatmap(
        lambda roll: usual if roll < 7 else st.one_of(*rare)
    )


junk: st.SearchStrategy[Any] = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
"""Any JSON value: what a hand edit, an older CRD or a buggy client could leave."""

awkward_text = st.sampled_from(
    ["", " ", "ключ", "🔑", "a\x00b", "x" * 300, "${HOME}", "../../etc", "null"]
) | st.text(max_size=40)

good_stamps = st.sampled_from(
    [
        "2026-11-28T12:00:00Z",
        "2026-11-28T11:00:00Z",
        "2026-11-27T12:00:00Z",
        "2025-01-01T00:00:00Z",
        "2026-11-28T13:00:00.123456+02:00",
        "2099-01-01T00:00:00Z",
        "9999-12-31T23:59:59Z",
        "0001-01-01T00:00:00Z",
    ]
)
bad_stamps = st.sampled_from(
    ["2026-11-28T12:00:00", "yesterday", "", "2026-13-01T00:00:00Z", "28/11/2026", "0"]
) | st.integers(min_value=0, max_value=2**40)
stamps = good_stamps | good_stamps | bad_stamps

version_numbers = (
    st.integers(min_value=1, max_value=6)
    | st.sampled_from([0, -1, MAX_VERSION, MAX_VERSION + 1, 2**63])
    | st.sampled_from(["1", "two", None, 1.5, True])
)
states_ = st.sampled_from(["Pending", "Active", "Archived", "Destroyed"])
state_values = states_ | states_ | st.sampled_from(["active", "", "Revoked", None, 3])

valid_record = st.fixed_dictionaries(
    {
        "version": st.integers(min_value=1, max_value=6)
        | st.sampled_from([MAX_VERSION, MAX_VERSION + 1, 2**63 - 1]),
        "state": states_,
    },
    optional={
        "createdAt": good_stamps,
        "activatedAt": good_stamps,
        "archivedAt": good_stamps,
        "destroyedAt": good_stamps,
        "fingerprint": st.sampled_from(["hs256:00", ""]),
        "kmsProvider": st.sampled_from(["local", "local", "aws", "nope", ""]),
        "kmsKeyId": st.sampled_from(["default", "default", "other", ""]),
        "kmsKeyVersion": st.sampled_from(["1", "1", "0", "2", ""]),
    },
)
"""A version record the CRD schema accepts (odd values, right types)."""

record = st.fixed_dictionaries(
    {"version": version_numbers, "state": state_values},
    optional={
        "createdAt": stamps,
        "activatedAt": stamps,
        "archivedAt": stamps,
        "destroyedAt": stamps,
        "fingerprint": st.sampled_from(["hs256:00", ""]) | junk,
        "kmsProvider": st.sampled_from(["local", "local", "aws", "nope", ""]) | junk,
        "kmsKeyId": st.sampled_from(["default", "default", "other", ""]) | junk,
        "kmsKeyVersion": st.sampled_from(["1", "1", "0", "2", ""]) | junk,
    },
)
"""A version record: mostly the right shape, with odd values in every field."""

condition = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["Ready", "Sealed", "Other"]) | junk,
        "status": st.sampled_from(["True", "False", "Unknown"]) | junk,
        "reason": st.sampled_from(["Active", "InvalidSpec", "SourceUnavailable"]) | junk,
        "message": awkward_text | junk,
        "lastTransitionTime": stamps,
        "observedGeneration": st.integers(min_value=-1, max_value=9) | junk,
    },
)

valid_conditions = st.lists(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["Ready", "Sealed", "Other"]),
            "status": st.sampled_from(["True", "False", "Unknown"]),
            "reason": st.sampled_from(["Active", "InvalidSpec", "SourceUnavailable"]),
            "message": st.sampled_from(["version 1 is active", "ключ 🔑", "x" * 300]),
            "lastTransitionTime": good_stamps,
        },
        optional={"observedGeneration": st.integers(min_value=0, max_value=9)},
    ),
    max_size=3,
    unique_by=lambda c: c["type"],
)
valid_status = st.fixed_dictionaries(
    {},
    optional={
        "versions": st.lists(valid_record, max_size=6),
        "currentVersion": st.integers(min_value=0, max_value=6),
        "conditions": valid_conditions,
        "observedGeneration": st.integers(min_value=0, max_value=9),
        "nextRotation": good_stamps,
        "sourceDigest": st.sampled_from(["sha256:0", ""]),
        "lastRotationRequest": st.sampled_from(["r1", "", "x" * 256]),
        "consumedSource": st.fixed_dictionaries(
            {},
            optional={
                "name": st.sampled_from([SOURCE, "other"]),
                "uid": st.text(max_size=8),
                "resourceVersion": st.text(max_size=8),
            },
        ),
    },
)
"""A status the CRD schema accepts: what any client with status access can write."""

status_bodies: st.SearchStrategy[Any] = mostly(
    valid_status,
    st.fixed_dictionaries(
        {},
        optional={
            "versions": st.lists(mostly(record, junk), max_size=6) | junk,
            "currentVersion": version_numbers,
            "conditions": st.lists(condition | junk, max_size=4) | junk,
            "observedGeneration": st.integers(min_value=-1, max_value=9) | junk,
            "nextRotation": stamps,
            "sourceDigest": st.sampled_from(["sha256:0", ""]) | junk,
            "lastRotationRequest": awkward_text | junk,
            "consumedSource": st.fixed_dictionaries(
                {},
                optional={
                    "name": st.sampled_from([SOURCE, "other"]) | junk,
                    "uid": st.text(max_size=8) | junk,
                    "resourceVersion": st.text(max_size=8) | junk,
                },
            )
            | junk,
        },
    ),
    st.none(),
    junk,
)

# Each part of a spec comes in a shape the CRD schema accepts (with values only the
# controller can judge) and, less often, in any shape at all.

good_generate = st.fixed_dictionaries(
    {},
    optional={
        "length": st.integers(min_value=16, max_value=512),
        "alphabet": st.sampled_from(["base62", "hex", "base64url", "alphanumeric"]),
        "prefix": st.sampled_from(["", "sk_", "x" * 32]),
    },
)
odd_generate = st.fixed_dictionaries(
    {},
    optional={
        "length": st.sampled_from([0, 15, 513, 10**9, -1, "40", 40.5, None]) | junk,
        "alphabet": st.sampled_from(["emoji", ""]) | junk,
        "prefix": st.sampled_from(["x" * 33, "ключ", "a b"]) | junk,
    },
)
good_secret_ref = st.fixed_dictionaries(
    {"name": st.just(SOURCE), "key": st.sampled_from([SOURCE_KEY, SOURCE_KEY, "absent"])},
    optional={"deleteAfterSeal": st.booleans()},
)
odd_secret_ref = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from([SOURCE, "missing", "", "x" * 254]) | awkward_text | junk,
        "key": st.sampled_from([SOURCE_KEY, "bad key", ""]) | junk,
        "deleteAfterSeal": st.booleans() | junk,
    },
)


def sealed_sources(env: Env, name: str) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """(schema-shaped, odd) ``spec.source.sealed`` values for the ApiKey ``name``."""
    ciphertexts = st.sampled_from(
        [
            env.sealed[name],
            env.sealed[name],
            env.sealed["stripe-live" if name == "k" else "k"],  # sealed for another key
            env.sealed[name][:-8] + "AAAAAAA=",  # tampered
            "not base64!",
            "A" * 131_072,
        ]
    )
    recipient = env.keys.recipient.public().key_id
    good = st.fixed_dictionaries({"recipient": st.just(recipient), "ciphertext": ciphertexts})
    odd = st.fixed_dictionaries(
        {},
        optional={
            "recipient": st.sampled_from([recipient, "x25519:zz"]) | junk,
            "ciphertext": st.sampled_from(["", "A" * 131_073]) | ciphertexts | junk,
        },
    )
    return good, odd


def sources(env: Env, name: str) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    good_sealed, odd_sealed = sealed_sources(env, name)
    good = st.one_of(
        good_generate.map(lambda g: {"generate": g}),
        good_secret_ref.map(lambda r: {"secretRef": r}),
        good_sealed.map(lambda s: {"sealed": s}),
    )
    odd = st.one_of(
        odd_generate.map(lambda g: {"generate": g}),
        odd_secret_ref.map(lambda r: {"secretRef": r}),
        odd_sealed.map(lambda s: {"sealed": s}),
        st.fixed_dictionaries(
            {},
            optional={
                "generate": good_generate | junk,
                "secretRef": good_secret_ref | junk,
                "sealed": good_sealed | junk,
            },
        ),
        junk,
    )
    return good, odd


good_durations = st.sampled_from(["1h", "30m", "24h", "0s", "1s", "10000d", "P1D", "-1h", ""])
good_rotations = st.none() | st.fixed_dictionaries(
    {},
    optional={
        "schedule": st.sampled_from(
            ["0 * * * *", "*/5 * * * *", "0 0 30 2 *", "61 * * * *", "@hourly", ""]
        ),
        "interval": good_durations,
        "gracePeriod": good_durations,
        "retain": st.integers(min_value=-1, max_value=12) | st.just(10**9),
    },
)
odd_rotations = (
    st.fixed_dictionaries(
        {},
        optional={
            "schedule": junk,
            "interval": junk,
            "gracePeriod": junk,
            "retain": st.sampled_from(["3", 2.5]) | junk,
            "unknown": junk,
        },
    )
    | junk
)

good_kms = st.sampled_from(
    [
        {},
        {"provider": "local"},
        {"provider": "local", "keyId": "default"},
        {"keyId": "nope"},
        {"provider": "aws", "keyId": "default"},
        {"provider": "gcp"},
    ]
)
odd_kms = st.sampled_from([{"provider": "vault"}, {"keyId": ""}]) | junk


def specs(env: Env, name: str) -> st.SearchStrategy[Any]:
    good_source, odd_source = sources(env, name)
    good = st.fixed_dictionaries(
        {"source": good_source},
        optional={
            "kms": good_kms,
            "rotation": good_rotations,
            "delivery": st.fixed_dictionaries(
                {}, optional={"fileName": st.sampled_from(["key", "a.b"])}
            ),
        },
    )
    odd = st.fixed_dictionaries(
        {"source": good_source | odd_source},
        optional={
            "kms": good_kms | odd_kms,
            "rotation": good_rotations | odd_rotations,
            "delivery": st.fixed_dictionaries(
                {},
                optional={
                    "fileName": st.sampled_from(["../x", "a..b"]) | junk,
                    "format": st.sampled_from(["raw", "yaml"]) | junk,
                },
            )
            | junk,
            "unknownField": junk,
        },
    )
    return mostly(good, odd, junk)


SOURCE_SIZES = (0, 1, 16, 40, 65_535, MAX_PLAINTEXT_SIZE, MAX_PLAINTEXT_SIZE + 1, 1 << 20)


def source_value(size: int) -> bytes:
    """``size`` bytes starting with the canary (cut short below its length)."""
    body = CANARY.encode() + b"." * max(0, size - len(CANARY))
    return body[:size]


def blob_value(env: Env, name: str) -> st.SearchStrategy[str]:
    real = st.sampled_from([env.blobs[(name, v)] for v in range(1, 5)])
    garbage = st.binary(max_size=120).map(lambda b: base64.b64encode(b).decode())
    return st.one_of(real, real, garbage, st.sampled_from(["", "%%% not base64"]))


@dataclass
class Case:
    name: str
    apikey: dict[str, Any]
    blobs: dict[str, Any] | None
    source: dict[str, Any] | None
    source_size: int | None

    @property
    def deleting(self) -> bool:
        return bool(self.apikey["metadata"].get("deletionTimestamp"))


@st.composite
def cases(draw: st.DrawFn, env: Env) -> Case:
    name = draw(st.sampled_from(NAMES[:2]) | st.just(LONG_NAME))
    metadata: dict[str, Any] = {
        "name": name,
        "uid": f"uid-{len(name)}",
        "generation": draw(st.integers(min_value=1, max_value=5)),
        "finalizers": draw(st.sampled_from([[], [FINALIZER], [FINALIZER, "example.com/keep"]])),
    }
    annotation = draw(
        st.none() | st.sampled_from(["r1", "2026-11-28T11:59:00Z", "x" * 129, ""]) | awkward_text
    )
    if annotation is not None:
        metadata["annotations"] = {ROTATE_ANNOTATION: annotation}
    if draw(st.integers(min_value=0, max_value=19)) == 0:
        metadata["deletionTimestamp"] = "2026-11-28T11:00:00Z"
    body: dict[str, Any] = {
        "apiVersion": "securekeys.io/v1alpha1",
        "kind": "ApiKey",
        "metadata": metadata,
    }
    if draw(st.integers(min_value=0, max_value=19)):
        body["spec"] = draw(specs(env, name))
    status = draw(status_bodies)
    if isinstance(status, dict):
        if draw(st.integers(min_value=0, max_value=3)):
            # The digest of the spec as it is: the planner then keeps the Active version.
            with contextlib.suppress(InvalidSpec):
                status["sourceDigest"] = spec_source_digest(
                    ApiKey.parse(
                        {**body, "metadata": {**metadata, "namespace": NS, "uid": "u"}}
                    ).spec
                )
        if annotation is not None and draw(st.booleans()):
            status["lastRotationRequest"] = annotation
    if status is not None:  # the API server prunes a null status
        body["status"] = status

    blobs: dict[str, Any] | None = None
    if draw(st.booleans()):
        keys = st.sampled_from(["v1", "v2", "v3", "v4", "v5", "v0", "v01", "x", "v4294967296"])
        blobs = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": blob_secret_name(name)},
            "type": draw(st.sampled_from(["securekeys.io/sealed-versions", "Opaque"])),
            "data": draw(st.dictionaries(keys, blob_value(env, name), max_size=5)),
        }
        if draw(st.booleans()):  # as the controller labels its own (or a namesake's)
            owner = draw(st.sampled_from([metadata["uid"], "uid-of-a-deleted-namesake"]))
            blobs["metadata"]["labels"] = {"securekeys.io/apikey": name}
            blobs["metadata"]["ownerReferences"] = [
                {
                    "apiVersion": "securekeys.io/v1alpha1",
                    "kind": "ApiKey",
                    "name": name,
                    "uid": owner,
                }
            ]
        elif draw(st.booleans()):  # someone else's Secret under the same name
            blobs["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "helm"}
        versions = status.get("versions") if isinstance(status, dict) else None
        if isinstance(versions, list) and draw(st.booleans()):
            # Coherent with status: each recorded version 1-4 has its real blob, so the
            # planner goes past "blob missing" into re-sealing, rewrapping and expiry.
            for item in versions:
                number = item.get("version") if isinstance(item, dict) else None
                if isinstance(number, int) and (name, number) in env.blobs:
                    blobs["data"][f"v{number}"] = env.blobs[(name, number)]

    source = None
    size = None
    if draw(st.booleans()):
        sizes = st.sampled_from(SOURCE_SIZES)
        size = draw(sizes | sizes | st.integers(min_value=0, max_value=70_000))
        data = {SOURCE_KEY: base64.b64encode(source_value(size)).decode()}
        if draw(st.booleans()):
            data["other"] = base64.b64encode(b"unrelated").decode()
        source = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SOURCE}, "data": data}
    return Case(name, body, blobs, source, size)


# -- running a reconcile ---------------------------------------------------------------------


@dataclass
class Pass:
    outcome: Outcome | None
    retry: Retry | None
    logs: list[MutableMapping[str, Any]]
    calls: list[tuple[str, str, str | None, str, Any]]


def store(api: FakeApi, case: Case) -> None:
    api.put(APIKEYS, NS, case.apikey)
    if case.blobs is not None:
        api.put(SECRETS, NS, case.blobs)
    if case.source is not None:
        api.put(SECRETS, NS, case.source)


def run_once(rec: Reconciler, api: FakeApi, name: str) -> Pass:
    """One reconcile; any exception but ``Retry`` fails the test with its traceback."""
    first_call = len(api.calls)
    outcome = retry = None
    with structlog.testing.capture_logs() as logs:
        try:
            outcome = asyncio.run(rec.reconcile(NS, name))
        except Retry as exc:
            retry = exc
        except Exception as exc:  # the property: nothing else escapes
            frames = traceback.format_exception(exc)
            pytest.fail(
                f"reconcile raised {type(exc).__name__}: {exc}\n{''.join(frames)}",
                pytrace=False,
            )
    return Pass(outcome, retry, logs, api.calls[first_call:])


def writes(calls: Sequence[tuple[str, str, str | None, str, Any]]) -> list[tuple[str, str, str]]:
    return [(c[0], c[1], c[3]) for c in calls if c[0] != "get"]


def events_for(api: FakeApi, name: str) -> list[dict[str, Any]]:
    return [
        c[4]
        for c in api.calls
        if c[:2] == ("create", EVENTS.plural) and c[4]["involvedObject"]["name"] == name
    ]


def status_patches(calls: Sequence[tuple[str, str, str | None, str, Any]]) -> list[Any]:
    return [
        c[4]["status"]
        for c in calls
        if c[:2] == ("patch", APIKEYS.plural) and isinstance(c[4], dict) and "status" in c[4]
    ]


def _leaks(text: str) -> list[str]:
    return [marker for marker in SECRET_MARKERS if marker in text]


def check_no_leak(api: FakeApi, case: Case, done: Pass) -> None:
    outputs = {
        "status writes": json.dumps(status_patches(done.calls), ensure_ascii=False, default=str),
        "events": json.dumps(events_for(api, case.name), ensure_ascii=False, default=str),
        "logs": repr(done.logs),
        "Retry message": str(done.retry or ""),
    }
    for where, text in outputs.items():
        found = _leaks(text)
        assert not found, f"plaintext marker {found[0][:12]}... reached the {where}"


def check_no_traceback(done: Pass) -> None:
    for entry in done.logs:
        told = f"a log record carries a traceback: {entry.get('event')}"
        assert "exc_info" not in entry, told
        assert "exception" not in entry, told


def ready_condition(api: FakeApi, name: str) -> dict[str, Any]:
    stored = api.stored(APIKEYS, NS, name)
    status = stored.get("status")
    assert isinstance(status, dict), f"status is {type(status).__name__}, not an object"
    conditions = status.get("conditions")
    assert isinstance(conditions, list), "status.conditions is not a list"
    readies = [c for c in conditions if isinstance(c, dict) and c.get("type") == "Ready"]
    assert len(readies) == 1, f"{len(readies)} Ready conditions"
    return readies[0]


def check_well_formed(api: FakeApi, case: Case, done: Pass, status_was_valid: bool) -> None:
    check_no_traceback(done)
    check_no_leak(api, case, done)
    if case.deleting:
        stored = api.objects.get((APIKEYS.plural, NS, case.name))
        assert stored is None or FINALIZER not in stored["metadata"].get("finalizers", [])
        return
    if done.outcome is not None and done.outcome.wake_at is not None:
        assert done.outcome.wake_at > NOW, "a wake-up time that is already due: a busy loop"
    stored = api.stored(APIKEYS, NS, case.name)
    ready = ready_condition(api, case.name)
    assert ready.get("status") in ("True", "False"), f"Ready status {ready.get('status')!r}"
    reason = ready.get("reason")
    assert isinstance(reason, str), f"Ready reason {reason!r}"
    assert CAMEL_CASE.fullmatch(reason), f"Ready reason {reason!r}"
    message = ready.get("message")
    assert isinstance(message, str), "Ready has no message"
    assert message.strip(), "Ready has no message"
    generation = stored["metadata"]["generation"]
    assert ready.get("observedGeneration") == generation, "Ready is about another generation"
    stamp = ready.get("lastTransitionTime")
    assert isinstance(stamp, str), f"lastTransitionTime {stamp!r}"
    assert is_stamp(stamp), f"lastTransitionTime {stamp!r}"
    if done.retry is not None:
        assert ready["status"] == "False", f"Retry({done.retry}) left Ready=True"
    if ready["status"] == "False":
        warnings = [
            e
            for e in events_for(api, case.name)
            if e["type"] == "Warning" and e["reason"] == reason
        ]
        assert warnings, f"Ready=False {reason} without a Warning Event"
    else:
        status = stored["status"]
        active = [
            v
            for v in status.get("versions") or []
            if isinstance(v, dict) and v.get("state") == "Active"
        ]
        assert len(active) == 1, f"Ready=True with {len(active)} Active versions"
        assert status.get("currentVersion") == active[0]["version"]
        blob_secret = api.objects.get((SECRETS.plural, NS, blob_secret_name(case.name)))
        assert blob_secret is not None
        assert f"v{active[0]['version']}" in (blob_secret.get("data") or {})
    if status_was_valid:
        for patch in status_patches(done.calls):
            errors = schema_errors(patch, STATUS_SCHEMA)
            assert not errors, f"a status write the API server would reject: {errors[:3]}"


def reconcile_twice(env: Env, case: Case) -> None:
    api = FakeApi()
    store(api, case)
    status = case.apikey.get("status")
    status_was_valid = status is None or not schema_errors(status, STATUS_SCHEMA)
    rec = env.reconciler(api)
    first = run_once(rec, api, case.name)
    check_well_formed(api, case, first, status_was_valid)
    second = run_once(rec, api, case.name)
    check_well_formed(api, case, second, status_was_valid)
    if first.outcome is not None and not case.deleting and status_was_valid:
        # A status the schema would refuse may take one pass to be rewritten; from any
        # other state, an Outcome means nothing is left to do.
        assert not writes(second.calls), (
            f"not at a fixed point after {first.outcome}: the next pass wrote "
            f"{writes(second.calls)[:4]}"
        )


# -- the property ------------------------------------------------------------------------


@settings(
    max_examples=250,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_any_apikey_reconciles_to_a_well_formed_outcome(env: Env, data: st.DataObject) -> None:
    reconcile_twice(env, data.draw(cases(env), label="case"))


# -- the known case: a secretRef value over the envelope limit --------------------------------


def _secret_ref_case(size: int) -> Case:
    value = source_value(size)
    return Case(
        name="k",
        apikey={
            "apiVersion": "securekeys.io/v1alpha1",
            "kind": "ApiKey",
            "metadata": {"name": "k"},
            "spec": {"source": {"secretRef": {"name": SOURCE, "key": SOURCE_KEY}}},
        },
        blobs=None,
        source={
            "metadata": {"name": SOURCE},
            "data": {SOURCE_KEY: base64.b64encode(value).decode()},
        },
        source_size=size,
    )


@pytest.mark.parametrize("size", [MAX_PLAINTEXT_SIZE + 1, 1 << 20])
def test_an_oversized_source_value_fails_with_a_condition_and_one_event(
    env: Env, size: int
) -> None:
    case = _secret_ref_case(size)
    api = FakeApi()
    store(api, case)
    rec = env.reconciler(api)
    for _ in range(3):  # "on every retry": each pass ends the same, quietly
        done = run_once(rec, api, "k")
        check_well_formed(api, case, done, status_was_valid=True)
        ready = ready_condition(api, "k")
        assert ready["status"] == "False"
        assert ready["reason"] in OVERSIZED_REASONS, ready
        assert str(MAX_PLAINTEXT_SIZE) in ready["message"] or "64 KiB" in ready["message"]
    events = [e for e in events_for(api, "k") if e["type"] == "Warning"]
    assert [e["reason"] for e in events] == [ready["reason"]]
    assert not api.stored(APIKEYS, NS, "k")["status"].get("versions")
    assert blob_secret_name("k") not in {name for (_, _, name) in api.objects}


def test_a_source_value_of_exactly_64_kib_is_sealed(env: Env) -> None:
    case = _secret_ref_case(MAX_PLAINTEXT_SIZE)
    api = FakeApi()
    store(api, case)
    done = run_once(env.reconciler(api), api, "k")
    check_well_formed(api, case, done, status_was_valid=True)
    assert done.outcome is not None
    assert ready_condition(api, "k")["status"] == "True"
    blob = api.stored(SECRETS, NS, blob_secret_name("k"))["data"]["v1"]
    opened = envelope.open(base64.b64decode(blob), KeyBinding(NS, "k", 1), env.kms.default())
    assert bytes(opened) == source_value(MAX_PLAINTEXT_SIZE)


# -- what the property found, pinned as plain examples ----------------------------------------


def _record(version: int, state: str, **fields: str) -> dict[str, Any]:
    active = {"activatedAt": "2026-11-28T11:00:00Z"} if state == "Active" else {}
    return {
        "version": version,
        "state": state,
        "createdAt": "2026-11-28T11:00:00Z",
        "kmsProvider": "local",
        "kmsKeyId": "default",
        "kmsKeyVersion": "1",
        **active,
        **fields,
    }


def _found(
    env: Env,
    spec: dict[str, Any] | None,
    status: Any,
    *,
    blobs: dict[str, str] | None = None,
    rotate: str | None = None,
    source_size: int | None = None,
) -> Case:
    metadata: dict[str, Any] = {"name": "k", "generation": 1}
    if rotate is not None:
        metadata["annotations"] = {ROTATE_ANNOTATION: rotate}
    body: dict[str, Any] = {"apiVersion": "securekeys.io/v1alpha1", "kind": "ApiKey"}
    body["metadata"] = metadata
    if spec is not None:
        body["spec"] = spec
        if isinstance(status, dict) and status.get("sourceDigest") == "current":
            parsed = ApiKey.parse({**body, "metadata": {**metadata, "namespace": NS, "uid": "u"}})
            status["sourceDigest"] = spec_source_digest(parsed.spec)
    body["status"] = status
    blob_secret = None
    if blobs is not None:
        data = {
            key: env.blobs[("k", int(key[1:]))] if value == "real" else value
            for key, value in blobs.items()
        }
        blob_secret = {"metadata": {"name": blob_secret_name("k")}, "data": data}
    source = None
    if source_size is not None:
        value = base64.b64encode(source_value(source_size)).decode()
        source = {"metadata": {"name": SOURCE}, "data": {SOURCE_KEY: value}}
    return Case("k", body, blob_secret, source, source_size)


GENERATE: dict[str, Any] = {"source": {"generate": {}}}
SECRET_REF: dict[str, Any] = {"source": {"secretRef": {"name": SOURCE, "key": SOURCE_KEY}}}
FOUND: dict[str, Callable[[Env], Case]] = {
    # Minimal bodies hypothesis shrank to; each crashed a reconcile or left it malformed.
    "conditions-not-a-list": lambda env: _found(env, None, {"conditions": True}),
    "a-null-condition": lambda env: _found(env, GENERATE, {"conditions": [None]}),
    "two-ready-conditions": lambda env: _found(
        env, None, {"conditions": [{"type": "Ready"}, {"type": "Ready"}]}
    ),
    "status-not-an-object": lambda env: _found(env, None, []),
    "last-version-number-used": lambda env: _found(
        env, GENERATE, {"versions": [_record(MAX_VERSION, "Pending")]}
    ),
    "two-active-records-without-blob": lambda env: _found(
        env, GENERATE, {"versions": [_record(1, "Active"), _record(1, "Active")]}
    ),
    "one-version-number-twice": lambda env: _found(
        env,
        GENERATE,
        {"versions": [_record(1, "Pending"), _record(1, "Pending")]},
        blobs={"v1": "real"},
    ),
    "a-year-1-timestamp": lambda env: _found(
        env, GENERATE, {"versions": [_record(1, "Pending", createdAt="0001-01-01T00:00:00Z")]}
    ),
    "archived-in-year-9999": lambda env: _found(
        env,
        {**GENERATE, "rotation": {"retain": 1}},
        {
            "sourceDigest": "current",
            "versions": [
                _record(2, "Active"),
                _record(1, "Archived", archivedAt="9999-12-31T23:59:59Z"),
            ],
        },
        blobs={"v1": "real", "v2": "real"},
    ),
    "reseal-from-an-unknown-provider": lambda env: _found(
        env,
        SECRET_REF,
        {"sourceDigest": "current", "versions": [_record(1, "Active", kmsProvider="nope")]},
        blobs={"v1": "real"},
        rotate="r1",
        source_size=100,
    ),
    "reseal-from-a-blob-that-is-not-base64": lambda env: _found(
        env,
        SECRET_REF,
        {"sourceDigest": "current", "versions": [_record(1, "Active")]},
        blobs={"v1": "%%% not base64"},
        rotate="r1",
        source_size=100,
    ),
}


@pytest.mark.parametrize("found", sorted(FOUND))
def test_what_the_property_found_reconciles_to_a_well_formed_outcome(env: Env, found: str) -> None:
    reconcile_twice(env, FOUND[found](env))
