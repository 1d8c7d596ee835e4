"""The fresh-answer path's shortcuts change no answer and keep nothing they should not.

``injection.parse`` keeps the configs it parsed (per ``securekeys.io/`` annotations and
the two settings it reads), ``injection.quantity`` the quantities, and ``parse`` takes
the default volume size without checking it. Here: the defaults are valid, the cache
key holds everything ``parse`` reads, refusals and long texts are never kept, and two
answers never share a dict or a list (a caller editing one answer's patch must not
change another's, nor a later one).
"""

from __future__ import annotations

from typing import Any

import pytest

from secure_keys.gateway.webhook import injection
from secure_keys.gateway.webhook.injection import (
    DEFAULT_VOLUME_SIZE,
    MAX_VOLUME_SIZE,
    GatewaySettings,
    InvalidAnnotations,
    Resources,
    parse,
    quantity,
)
from secure_keys.gateway.webhook.mutate import admit
from secure_keys.gateway.webhook.review import decode
from secure_keys.kube import annotations as ann
from tests.unit.gateway.helpers import body, bound_table, pod, review

SETTINGS = GatewaySettings()


def test_the_default_volume_size_is_a_valid_size() -> None:
    # parse() takes the default without checking it (the fast path).
    size = quantity(DEFAULT_VOLUME_SIZE)
    assert size is not None
    assert 0 < size <= MAX_VOLUME_SIZE
    assert size == int(size)


def test_every_annotation_parse_reads_is_in_the_cache_key() -> None:
    # The cache is keyed by the securekeys.io/ annotations only.
    assert all(key.startswith(ann.PREFIX) for key in ann.POD_ANNOTATIONS)


def test_other_annotations_do_not_change_the_config() -> None:
    ours = {ann.KEYS: "a,b", ann.MODE: "classic"}
    alone = parse(ours, SETTINGS)
    assert parse({**ours, "other/x": "1", "securekeys.iox": "y"}, SETTINGS) == alone


@pytest.mark.parametrize(
    "settings",
    [
        GatewaySettings(default_mode="init-only"),
        GatewaySettings(resources=Resources("1", "1Gi", "2", "2Gi")),
    ],
)
def test_the_settings_parse_reads_are_in_the_cache_key(settings: GatewaySettings) -> None:
    annotations = {ann.KEYS: "a"}
    default = parse(annotations, SETTINGS)
    other = parse(annotations, settings)
    assert (other.mode, other.resources) == (settings.default_mode, settings.resources)
    assert (default.mode, default.resources) == (SETTINGS.default_mode, SETTINGS.resources)


def test_a_refusal_is_never_kept_and_words_its_own_message() -> None:
    before = injection._cached_parse.cache_info().currsize
    for name in ("Bad-1", "Bad-2", "Bad-1"):
        with pytest.raises(InvalidAnnotations) as raised:
            parse({ann.KEYS: name}, SETTINGS)
        assert repr(name) in str(raised.value)
    assert injection._cached_parse.cache_info().currsize == before


def test_long_annotation_text_is_never_kept() -> None:
    injection._cached_parse.cache_clear()
    injection._cached_quantity.cache_clear()
    long_keys = ",".join(f"key-{i:04d}-{'x' * 20}" for i in range(60))  # 1,799 characters
    config = parse({ann.KEYS: long_keys}, SETTINGS)
    assert len(config.keys) == 60
    assert injection._cached_parse.cache_info().currsize == 0
    long_size = "0" * 100 + "1Mi"
    assert quantity(long_size) == quantity("1Mi")
    assert injection._cached_quantity.cache_info().currsize == 1  # "1Mi" alone


def _containers_and_lists(node: Any, found: list[Any]) -> list[Any]:
    if isinstance(node, dict):
        found.append(node)
        for value in node.values():
            _containers_and_lists(value, found)
    elif isinstance(node, list):
        found.append(node)
        for value in node:
            _containers_and_lists(value, found)
    return found


def _answer(obj: dict[str, Any]) -> Any:
    return admit(decode(body(review(obj))), bound_table(), SETTINGS, synced=True)


@pytest.mark.parametrize("mode", ["native", "classic", "init-only"])
def test_two_answers_share_no_dict_or_list(mode: str) -> None:
    annotations = {ann.KEYS: "stripe-live,billing", ann.MODE: mode}
    first = _answer(pod(annotations=annotations))
    second = _answer(pod(annotations=annotations, name="other"))
    assert first.outcome == second.outcome == "injected"
    mutable = _containers_and_lists(list(first.response.patch), [])
    others = {id(node) for node in _containers_and_lists(list(second.response.patch), [])}
    assert not [node for node in mutable if id(node) in others]
    # And editing the first changes nothing the next answer is built from.
    for op in first.response.patch:
        if isinstance(op["value"], dict):
            op["value"]["scribbled"] = True
        elif isinstance(op["value"], list):
            op["value"].append("scribbled")
    third = _answer(pod(annotations=annotations, name="third"))
    assert third.response.patch == second.response.patch
