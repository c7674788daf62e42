"""Reading restic's retry lines (the exact texts of restic 0.14 and 0.18) into chains of
retries of one operation, and when such a chain means the repository is not answering."""

from __future__ import annotations

import pytest

from wingsbak.storage.restic_retries import RetryChains, go_duration

SAVE = "Save(<data/5b1a1e0c64>)"
LOAD = "Load(<config/0000000000>, 0, 0)"


def retry(op: str, delay: str = "500ms", error: str = "connection refused") -> str:
    return f"{op} returned error, retrying after {delay}: {error}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("552.330144ms", 0.552330144),
        ("1.5s", 1.5),
        ("1m3.5s", 63.5),
        ("2h0m0s", 7200.0),
        ("750µs", 0.00075),
        ("12us", 0.000012),
        ("soon", None),
        ("1.5", None),
        ("", None),
    ],
)
def test_go_durations(text: str, seconds: float | None) -> None:
    got = go_duration(text)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


def test_an_operation_failing_for_the_timeout_is_given_up_with_its_last_error() -> None:
    chains = RetryChains(timeout=10)
    t = 0.0
    assert chains.feed(retry(LOAD, "1s", "dial tcp: connection refused"), t)
    while t < 10:
        assert not chains.given_up(t)
        t += 1.0
        chains.feed(retry(LOAD, "1s", f"refused at {t:g}"), t)
    assert chains.given_up(t)
    assert chains.last_error == "refused at 10"


def test_a_retry_that_worked_ends_its_chain() -> None:
    # restic 0.15 and later say so.
    chains = RetryChains(timeout=10)
    chains.feed(retry(SAVE, "1s"), 0.0)
    assert not chains.feed(f"{SAVE} operation successful after 1 retries", 1.5)
    assert not chains.active and not chains.given_up(60.0)
    # ... or that restic stopped retrying it.
    chains.feed(retry(SAVE, "1s"), 61.0)
    chains.feed(f"{SAVE} failed: permanent error", 62.0)
    assert not chains.active


def test_a_retry_that_is_overdue_is_taken_to_have_worked() -> None:
    # restic 0.14 prints nothing when a retry works: one failure, then silence, is never
    # given up, however long the command then runs.
    chains = RetryChains(timeout=4)  # grace: 1 s
    chains.feed(retry(SAVE, "500ms"), 0.0)
    assert not chains.given_up(1.0) and chains.active
    assert not chains.given_up(1.6) and not chains.active
    assert not chains.given_up(100.0)


def test_each_operation_is_its_own_chain() -> None:
    chains = RetryChains(timeout=10)
    chains.feed(retry(SAVE, "1s"), 0.0)
    chains.feed(f"{SAVE} operation successful after 1 retries", 1.0)
    other = "Save(<data/77aa03>)"
    for t in range(1, 10):
        chains.feed(retry(other, "1s"), float(t))
        assert not chains.given_up(float(t))
    chains.feed(retry(other, "1s"), 11.0)
    assert chains.given_up(11.0)


def test_other_lines_are_not_retries() -> None:
    chains = RetryChains(timeout=10)
    for line in (
        "Fatal: unable to open config file: Stat: connection refused",
        "Is there a repository at the following location?",
        "error: lstat /srv/x: permission denied",
    ):
        assert not chains.feed(line, 0.0)
    assert not chains.active
