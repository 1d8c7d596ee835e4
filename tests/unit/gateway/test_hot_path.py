"""The admission hot path's shortcuts answer exactly what the plain path answered.

``review.compact_json`` writes with orjson but must give the standard library's bytes,
including for what orjson refuses or writes differently; ``review.read_json`` reads with
orjson but must read what the standard library reads; a ``ReviewTemplate`` filled with
a uid must be the encoding of the answer with that uid; the server keeps the labelled
metric children it looked up, and must still count every request under its own labels.
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from secure_keys.gateway import metrics
from secure_keys.gateway.server import build_app
from secure_keys.gateway.webhook.caches import GatewayCaches
from secure_keys.gateway.webhook.injection import GatewaySettings
from secure_keys.gateway.webhook.patch import PatchOp
from secure_keys.gateway.webhook.review import (
    AdmissionResponse,
    compact_json,
    encode,
    read_json,
    template,
)
from secure_keys.kube.informer import LISTED
from tests.unit.gateway.helpers import body, pod, review


def _stdlib(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, True, None, "x"], "b": {"c": -3}},
        [2**64, -(2**63) - 1],  # past 64 bits: orjson refuses them
        ["\ud800 lone surrogate"],  # orjson refuses it
        ["caf\u00e9", "\u2603", "\U0001f511"],  # orjson writes UTF-8, json.dumps escapes
        {'quote"and\\slash/': "\n\t\x00\x1f\x7f"},
        (1, ("tuple", "inside")),
    ],
    ids=["plain", "big-int", "surrogate", "non-ascii", "escapes", "tuples"],
)
def test_compact_json_gives_the_standard_librarys_bytes(value: Any) -> None:
    assert compact_json(value) == _stdlib(value)


def test_encoded_review_is_byte_identical_to_the_standard_encoding() -> None:
    patch: tuple[PatchOp, ...] = (
        {"op": "add", "path": "/metadata/annotations/x", "value": "d\u00e9j\u00e0 vu"},
        {"op": "add", "path": "/spec/x", "value": {"runAsUser": 2**70}},
    )
    response = AdmissionResponse("uid-1", allowed=True, patch=patch, warnings=("w\u00e9",))
    encoded = encode(response, "admission.k8s.io/v1beta1")
    expected_patch = base64.b64encode(_stdlib(list(patch))).decode("ascii")
    expected = {
        "apiVersion": "admission.k8s.io/v1beta1",
        "kind": "AdmissionReview",
        "response": {
            "uid": "uid-1",
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": expected_patch,
            "warnings": ["w\u00e9"],
        },
    }
    assert encoded == _stdlib(expected)


_ANSWERS = [
    AdmissionResponse("", allowed=True),
    AdmissionResponse(
        "",
        allowed=True,
        patch=({"op": "add", "path": "/metadata/annotations/x", "value": "d\u00e9j\u00e0"},),
        warnings=("w\u00e9",),
    ),
    AdmissionResponse(
        "",
        allowed=False,
        code=403,
        reason="KeyNotGranted",
        message='a message quoting "response":{"uid":"" and \u2603',
    ),
]


@pytest.mark.parametrize("api_version", ["admission.k8s.io/v1", "admission.k8s.io/v1beta1"])
@pytest.mark.parametrize("response", _ANSWERS, ids=["allowed", "patch", "denied"])
@pytest.mark.parametrize(
    "uid",
    ["0f6c1f4e-1111-2222-3333-444455556666", 'q"uote\\', "caf\u00e9\u2028", "x" * 128],
    ids=["uuid", "escapes", "non-ascii", "long"],
)
def test_a_filled_template_is_the_encoding_of_the_answer_with_that_uid(
    api_version: str, response: AdmissionResponse, uid: str
) -> None:
    filled = template(response, api_version).fill(uid)
    with_uid = AdmissionResponse(
        uid,
        response.allowed,
        response.patch,
        response.code,
        response.reason,
        response.message,
        response.warnings,
    )
    assert filled == encode(with_uid, api_version)
    assert json.loads(filled)["response"]["uid"] == uid


def _same(a: Any, b: Any) -> bool:
    # repr tells 1 from 1.0 and True from 1 (== does not); NaN only equals itself there.
    return repr(a) == repr(b)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": 18446744073709551616}',  # past 64 bits: orjson would give a float
        b'{"a": -9223372036854775809}',
        b'{"a": 9999999999999999999}',  # 19 digits, past the signed range
        b'{"a": 1e400}',
        b'{"a": NaN, "b": -Infinity}',
        b'{"a": "\\ud800"}',
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'{"a": 1, "a": 2}',
        b'{"a": 1.0, "b": -0.0, "c": 1E2, "d": true}',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_read_json_reads_what_the_standard_library_reads(raw: bytes) -> None:
    try:
        expected: Any = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            read_json(raw)
        return
    assert _same(read_json(raw), expected)


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_JSON)
def test_read_json_agrees_with_the_standard_library_on_any_document(value: Any) -> None:
    for raw in (json.dumps(value).encode(), json.dumps(value, ensure_ascii=False).encode()):
        assert _same(read_json(raw), json.loads(raw))


def _sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_request_is_counted_under_its_own_labels() -> None:
    caches = GatewayCaches()
    for cache in caches.all:
        cache.apply(LISTED)
    app = build_app(caches, GatewaySettings())
    skipped = {"outcome": "skipped", "reason": "not-opted-in"}
    ignored = {"outcome": "ignored", "reason": "not-pod-create"}
    bad = {"outcome": "bad-request", "reason": ""}
    total = "securekeys_gateway_admissions_total"
    timed = "securekeys_gateway_admission_seconds_count"
    before = {
        "skipped": _sample(total, skipped),
        "ignored": _sample(total, ignored),
        "bad": _sample(total, bad),
        "skipped_timed": _sample(timed, {"outcome": "skipped"}),
        "ignored_timed": _sample(timed, {"outcome": "ignored"}),
    }

    async def run() -> None:
        async with TestClient(TestServer(app)) as client:
            plain = body(review(pod(labels={}, annotations={})))
            for data in (plain, plain, body(review(pod(), operation="DELETE")), b"{", plain):
                response = await client.post("/mutate", data=data)
                await response.read()

    asyncio.run(run())
    assert _sample(total, skipped) - before["skipped"] == 3
    assert _sample(total, ignored) - before["ignored"] == 1
    assert _sample(total, bad) - before["bad"] == 1
    assert _sample(timed, {"outcome": "skipped"}) - before["skipped_timed"] == 3
    assert _sample(timed, {"outcome": "ignored"}) - before["ignored_timed"] == 1


def test_reused_and_computed_answers_are_counted() -> None:
    caches = GatewayCaches()
    for cache in caches.all:
        cache.apply(LISTED)
    app = build_app(caches, GatewaySettings())
    name = "securekeys_gateway_admission_answers_total"
    before = {s: _sample(name, {"source": s}) for s in ("reused", "computed")}

    async def run() -> list[dict[str, Any]]:
        answers = []
        async with TestClient(TestServer(app)) as client:
            for uid in ("uid-1", "uid-2", "uid-3"):
                plain = body(review(pod(labels={}, annotations={}), uid=uid))
                response = await client.post("/mutate", data=plain)
                answers.append(json.loads(await response.read())["response"])
        return answers

    answers = asyncio.run(run())
    assert [a["uid"] for a in answers] == ["uid-1", "uid-2", "uid-3"]
    assert _sample(name, {"source": "computed"}) - before["computed"] == 1
    assert _sample(name, {"source": "reused"}) - before["reused"] == 2
