"""``gateway.access.reviews.RecipientsSeen``: a review's recipient key is used once per
window, so a review copied from an audit log and posted again is refused."""

from __future__ import annotations

from secure_keys.gateway.access.reviews import RecipientsSeen


def test_a_recipient_key_is_accepted_once_then_again_only_after_the_window() -> None:
    now = [0.0]
    seen = RecipientsSeen(window=240.0, clock=lambda: now[0])
    assert seen.first(b"a" * 32)
    assert not seen.first(b"a" * 32)
    assert seen.first(b"b" * 32)
    now[0] = 241.0
    assert seen.first(b"a" * 32)


def test_memory_is_bounded_and_the_oldest_are_forgotten_first() -> None:
    seen = RecipientsSeen(max_remembered=3, clock=lambda: 0.0)
    for key in (b"1", b"2", b"3", b"4"):
        assert seen.first(key)
    assert seen.first(b"1")
    assert not seen.first(b"4")
