"""The one backoff policy, from a table: every retry in the engine asks it how long to wait."""

from __future__ import annotations

import pytest

from engine.backoff import CONTACT, PROBE, STORE, Backoff, retry_after

CASES: list[tuple[Backoff, int, float, float | None, float]] = [
    # policy, failed attempt, rand, Retry-After, seconds
    (Backoff(1.0, 30.0), 1, 1.0, None, 1.0),
    (Backoff(1.0, 30.0), 1, 0.0, None, 0.5),  # jitter takes at most half
    (Backoff(1.0, 30.0), 3, 1.0, None, 4.0),
    (Backoff(1.0, 30.0), 3, 0.5, None, 3.0),
    (Backoff(1.0, 30.0), 6, 1.0, None, 30.0),  # capped
    (Backoff(1.0, 30.0), 10_000, 1.0, None, 30.0),  # no overflow however long it goes on
    (Backoff(1.0, 30.0), 0, 1.0, None, 1.0),  # attempt 0 reads as the first
    (Backoff(1.0, 30.0), 2, 7.0, None, 2.0),  # rand outside [0, 1) is clamped
    (Backoff(1.0, 30.0), 2, 1.0, 7.0, 7.0),  # the provider's Retry-After wins
    (Backoff(1.0, 30.0), 2, 1.0, 0.0, 2.0),  # ...when it says something
    (Backoff(1.0, 30.0), 2, 1.0, 9999.0, 300.0),  # ...within reason
    (Backoff(1.0, 30.0), 2, 1.0, 0.01, 1.0),  # never shorter than the base: no storm
    (PROBE, 1, 1.0, 0.001, 1.0),
    (CONTACT, 3, 0.0, 0.5, 1.0),
    (PROBE, 1, 1.0, None, 1.0),
    (PROBE, 5, 1.0, None, 16.0),
    (PROBE, 6, 1.0, None, 30.0),
    (PROBE, 50, 0.0, None, 15.0),
    (PROBE, 1, 1.0, 120.0, 30.0),  # a paused number is probed at least every 30 s
    (CONTACT, 1, 0.0, None, 1.0),  # 4^n seconds, as WhatsApp asks for its pair rate
    (CONTACT, 2, 0.0, None, 4.0),
    (CONTACT, 3, 0.0, None, 16.0),
    (CONTACT, 5, 0.0, None, 256.0),
    (CONTACT, 6, 0.0, None, 300.0),
    (STORE, 1, 0.0, None, 0.05),
    (STORE, 4, 0.0, None, 0.4),
    (STORE, 20, 0.0, None, 5.0),
]


@pytest.mark.parametrize(("policy", "attempt", "rand", "retry_after", "seconds"), CASES)
def test_backoff(
    policy: Backoff, attempt: int, rand: float, retry_after: float | None, seconds: float
) -> None:
    assert policy.delay(attempt, rand, retry_after) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("2", 2.0),
        ("0.5", 0.5),
        (None, None),
        ("", None),
        ("-1", None),
        ("nan", None),
        ("86400", None),
        ("Wed, 21 Oct 2026 07:28:00 GMT", None),
    ],
)
def test_a_retry_after_header_is_read_once_for_every_client(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after(header) == seconds
