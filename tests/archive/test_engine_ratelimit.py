"""The write limit, on a simulated clock: over every 10 s window the average rate stays
within 10 % of the limit. No test here reads the wall clock."""

from __future__ import annotations

import bisect
import hashlib
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wingsbak.archive.checksum import MeteredWriter
from wingsbak.archive.ratelimit import MIB, Cancelled, TokenBucket

WINDOW = 10.0


class SimClock:
    """Simulated time: ``sleep`` advances it instantly."""

    def __init__(self) -> None:
        self.now = 5000.0
        self.slept = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
        self.slept += seconds


class TimedSink:
    """Records the simulated time at which each write reaches the sink."""

    def __init__(self, clock: SimClock) -> None:
        self.clock = clock
        self.times: list[float] = []
        self.sizes: list[int] = []
        self.hasher = hashlib.sha1()

    def write(self, data: bytes | memoryview, /) -> int:
        self.times.append(self.clock())
        self.sizes.append(len(data))
        self.hasher.update(data)
        return len(data)


def window_rates(times: list[float], sizes: list[int], step: float = 0.05) -> list[float]:
    """Average rate over every window (a, a + 10] that lies within the run."""
    prefix = [0]
    for n in sizes:
        prefix.append(prefix[-1] + n)
    rates = []
    a = times[0]
    while a + WINDOW <= times[-1]:
        lo = bisect.bisect_right(times, a)
        hi = bisect.bisect_right(times, a + WINDOW)
        rates.append((prefix[hi] - prefix[lo]) / WINDOW)
        a += step
    return rates


def simulate(
    rate: float, chunks: list[int], gaps: list[float], clock: SimClock
) -> tuple[TimedSink, MeteredWriter]:
    sink = TimedSink(clock)
    bucket = TokenBucket(rate, clock=clock, sleep=clock.sleep)
    writer = MeteredWriter(sink, "sha1", bucket)
    zeros = memoryview(bytes(max(chunks)))
    for i, n in enumerate(chunks):
        clock.now += gaps[i % len(gaps)]  # the producer's own time (compression, reading)
        writer.write(zeros[:n])
    return sink, writer


@st.composite
def workloads(draw: st.DrawFn, idle: bool) -> tuple[float, list[int], list[float]]:
    # The bucket is scale-free: what matters is the write size against the rate, and the
    # archiver's writes are at most 1 MiB, so low rates cover every ratio at a low cost.
    rate = draw(st.sampled_from([0.25, 0.5, 1, 2])) * MIB
    small = max(512, int(rate // 200))
    large = int(min(MIB, rate))
    total = 35 * rate  # enough for several 10 s windows
    pattern = draw(st.lists(st.integers(small, large), min_size=1, max_size=40))
    chunks: list[int] = []
    while sum(chunks) < total:  # the drawn sizes, repeated
        chunks.extend(pattern)
    if idle:
        gaps = draw(
            st.lists(
                st.one_of(st.just(0.0), st.floats(0, 0.2), st.floats(0.5, 4.0)),
                min_size=1,
                max_size=20,
            )
        )
    else:
        gaps = [0.0]
    return rate, chunks, gaps


@settings(max_examples=30, deadline=None)
@given(workloads(idle=False))
def test_fast_producer_is_held_to_the_limit(work: tuple[float, list[int], list[float]]) -> None:
    rate, chunks, gaps = work
    clock = SimClock()
    sink, writer = simulate(rate, chunks, gaps, clock)
    rates = window_rates(sink.times, sink.sizes)
    assert rates, "the run is shorter than one window"
    for r in rates:
        assert abs(r - rate) <= 0.10 * rate, (r / rate, rate)
    # Everything passed through, hashed and counted.
    assert writer.size == sum(chunks) == sum(sink.sizes)
    assert writer.hexdigest() == sink.hasher.hexdigest()


@settings(max_examples=30, deadline=None)
@given(workloads(idle=True))
def test_bursty_producer_never_exceeds_the_limit(
    work: tuple[float, list[int], list[float]],
) -> None:
    rate, chunks, gaps = work
    clock = SimClock()
    sink, _ = simulate(rate, chunks, gaps, clock)
    for r in window_rates(sink.times, sink.sizes):
        assert r <= 1.10 * rate, (r / rate, rate)


def test_a_slow_producer_is_not_delayed() -> None:
    clock = SimClock()
    simulate(10 * MIB, [MIB] * 20, [0.2], clock)  # 5 MiB/s offered, 10 MiB/s allowed
    assert clock.slept == 0.0


def test_unlimited_when_rate_not_positive() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_cancel_ends_the_wait() -> None:
    clock = SimClock()
    cancel = threading.Event()

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        cancel.set()  # cancelled while waiting

    bucket = TokenBucket(MIB, cancel, clock=clock, sleep=sleep)
    bucket.consume(MIB // 8)  # within the burst: no wait
    with pytest.raises(Cancelled):
        bucket.consume(MIB)


def test_default_sleep_waits_on_the_cancel_event() -> None:
    """With the real clock, a set event makes the wait return at once and raise."""
    cancel = threading.Event()
    cancel.set()
    bucket = TokenBucket(1.0, cancel)  # one byte a second: a real wait would be ~1e6 s
    with pytest.raises(Cancelled):
        bucket.consume(MIB)
