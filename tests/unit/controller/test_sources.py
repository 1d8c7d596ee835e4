"""Where plaintext comes from (secure_keys.controller.sources): the generator and Secret
values."""

from __future__ import annotations

import base64
import collections
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from secure_keys.controller import sources
from secure_keys.controller.models import GenerateSource
from secure_keys.controller.sources import (
    ALPHABETS,
    SourceUnavailable,
    decode_secret_value,
    generate,
)
from tests.conftest import CANARY

ALPHABET_NAMES = sorted(ALPHABETS)


def spec(length: int = 40, alphabet: str = "base62", prefix: str = "") -> GenerateSource:
    return GenerateSource.model_validate({"length": length, "alphabet": alphabet, "prefix": prefix})


def test_alphabets() -> None:
    assert {name: len(chars) for name, chars in ALPHABETS.items()} == {
        "base62": 62,
        "hex": 16,
        "base64url": 64,
        "alphanumeric": 36,
    }
    for chars in ALPHABETS.values():
        assert len(set(chars)) == len(chars)
        assert chars.isascii()
    assert set(ALPHABETS["alphanumeric"]) == set(b"abcdefghijklmnopqrstuvwxyz0123456789")
    assert set(ALPHABETS["base64url"]) - set(ALPHABETS["base62"]) == set(b"-_")


@given(
    st.integers(16, 512),
    st.sampled_from(ALPHABET_NAMES),
    st.from_regex(r"[A-Za-z0-9_.-]{0,32}", fullmatch=True),
)
def test_generate_shape(length: int, alphabet: str, prefix: str) -> None:
    value = generate(spec(length, alphabet, prefix))
    assert isinstance(value, bytearray)
    assert len(value) == len(prefix) + length
    assert value.startswith(prefix.encode())
    assert set(value[len(prefix) :]) <= set(ALPHABETS[alphabet])


def test_generate_differs_each_time() -> None:
    values = {bytes(generate(spec(16, "hex"))) for _ in range(50)}
    assert len(values) == 50


class PoolSpy:
    """Stands in for memory.random_secret: serves chosen bytes, keeps every pool handed out."""

    def __init__(self, feed: bytes) -> None:
        self.feed = feed
        self.pools: list[bytearray] = []

    def __call__(self, size: int) -> bytearray:
        chunk, self.feed = self.feed[:size], self.feed[size:]
        pool = bytearray(chunk.ljust(size, b"\x00"))
        self.pools.append(pool)
        return pool


def test_generate_draws_from_random_secret_and_zeroes_every_pool(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = PoolSpy(bytes(range(1, 200)))
    monkeypatch.setattr(sources, "random_secret", spy)
    value = generate(spec(16, "hex", "p_"))
    assert value == b"p_" + bytes(ALPHABETS["hex"][b % 16] for b in range(1, 17))
    assert len(spy.pools) == 1
    assert len(spy.pools[0]) == 32  # twice the length, for rejections
    assert spy.pools[0] == bytearray(32)


def test_generate_rejects_biased_bytes_and_refills(monkeypatch: pytest.MonkeyPatch) -> None:
    # base62: 256 % 62 == 8, so bytes 248..255 would favour the first 8 characters.
    limit = 256 - 256 % 62
    feed = bytes([255, 248, 0, 249, 61, 62, 247] + [250] * 25) + bytes([1] * 32)
    spy = PoolSpy(feed)
    monkeypatch.setattr(sources, "random_secret", spy)
    value = generate(spec(16, "base62"))
    alphabet = ALPHABETS["base62"]
    kept = [b for b in feed if b < limit][:16]
    assert value == bytes(alphabet[b % 62] for b in kept)
    assert len(spy.pools) == 2  # the first pool held only 4 usable bytes
    assert all(pool == bytearray(len(pool)) for pool in spy.pools)


def test_generate_zeroes_the_pool_on_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = PoolSpy(bytes(range(64)))
    monkeypatch.setattr(sources, "random_secret", spy)

    class Boom(Exception):
        pass

    class Exploding(bytes):
        def __getitem__(self, index: object) -> int:  # type: ignore[override]
            raise Boom

    monkeypatch.setitem(sources.ALPHABETS, "hex", Exploding(ALPHABETS["hex"]))
    with pytest.raises(Boom):
        generate(spec(16, "hex"))
    assert spy.pools
    assert spy.pools[0] == bytearray(len(spy.pools[0]))


DRAWS = 160_000


def chi_square(counts: collections.Counter[int], symbols: bytes) -> float:
    expected = DRAWS / len(symbols)
    return sum((counts[s] - expected) ** 2 / expected for s in symbols)


def bound(symbols: bytes) -> float:
    """Eight standard deviations over the mean: a false alarm about once in 10^6 runs."""
    dof = len(symbols) - 1
    return dof + 8 * math.sqrt(2 * dof)


@pytest.mark.parametrize("alphabet", ALPHABET_NAMES)
def test_generate_is_uniform(alphabet: str) -> None:
    """A loose chi-square bound over 160k characters.

    A plain ``byte % size`` without rejection puts 1.25x weight on the first ``256 % size``
    characters of base62 and alphanumeric: see the test below.
    """
    symbols = ALPHABETS[alphabet]
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(DRAWS // 500):
        counts.update(generate(spec(500, alphabet)))
    assert sum(counts.values()) == DRAWS
    assert set(counts) == set(symbols)
    assert chi_square(counts, symbols) < bound(symbols)


@pytest.mark.parametrize("alphabet", ["base62", "alphanumeric"])
def test_the_uniformity_bound_catches_modulo_bias(alphabet: str) -> None:
    # The statistic's expected value for a rejection-free generator is far over the bound.
    symbols = ALPHABETS[alphabet]
    counts: collections.Counter[int] = collections.Counter()
    for byte in range(256):
        counts[symbols[byte % len(symbols)]] += DRAWS // 256
    assert chi_square(counts, symbols) > 2.5 * bound(symbols)


# -- Secret values ----------------------------------------------------------------------------


def test_decode_secret_value() -> None:
    value = decode_secret_value(base64.b64encode(b"hunter2").decode(), secret="s", key="k")
    assert value == bytearray(b"hunter2")
    assert isinstance(value, bytearray)


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("", "Secret upstream key api-key is empty"),
        ("not base64!", "Secret upstream key api-key is not valid base64"),
        ("aGVsbG8", "is not valid base64"),  # missing padding
        ("aGVs\nbG8=", "is not valid base64"),  # validate=True: no stray characters
        ("aGVsbG8=é", "is not valid base64"),  # non-ASCII
    ],
)
def test_decode_secret_value_errors(encoded: str, message: str) -> None:
    with pytest.raises(SourceUnavailable, match=message):
        decode_secret_value(encoded, secret="upstream", key="api-key")


def test_decode_secret_value_errors_never_echo_the_value() -> None:
    encoded = base64.b64encode(CANARY.encode()).decode()
    for bad in (CANARY, encoded + "!", encoded[:-1], "*" + encoded):
        with pytest.raises(SourceUnavailable) as info:
            decode_secret_value(bad, secret="s", key="k")
        message = str(info.value)
        assert CANARY not in message
        assert encoded[:16] not in message
        assert info.value.__cause__ is None
        assert info.value.__suppress_context__
