"""Choosing between sampling and exact at once from whole-request latencies."""
from __future__ import annotations

import pytest

from approxql.controller.costs import ARM_MIN, EXPLORE, Arms, CostBook, CostLog

pytestmark = pytest.mark.timing_choices   # constructed latencies: the choice itself is under test


def serve(arms: Arms, sampled_ms: float, exact_ms: float, n: int) -> list[bool]:
    """Serve n requests as the arms choose; return the choices (True = exact at once)."""
    chosen = []
    for _ in range(n):
        exact, _ = arms.exact_pays()
        chosen.append(exact)
        arms.add(exact, exact_ms if exact else sampled_ms)
    return chosen


def test_sampling_is_kept_while_it_is_cheaper():
    arms = Arms()
    chosen = serve(arms, sampled_ms=2.0, exact_ms=10.0, n=200)
    assert chosen[:ARM_MIN] == [False] * ARM_MIN            # sampling first
    assert chosen[ARM_MIN:ARM_MIN + 3] == [True] * 3        # then exact is measured
    later = chosen[ARM_MIN + 3:]
    assert sum(later) in (len(later) // (EXPLORE + 1), len(later) // (EXPLORE + 1) + 1)   # exact retried rarely
    assert "exact at once against" in arms.exact_pays()[1]


def test_exact_wins_when_sampling_costs_more():
    arms = Arms()
    chosen = serve(arms, sampled_ms=12.0, exact_ms=10.0, n=200)
    later = chosen[ARM_MIN + 3:]
    retried = len(later) - sum(later)
    assert retried in (len(later) // (EXPLORE + 1), len(later) // (EXPLORE + 1) + 1)   # sampling retried, rarely


def test_two_humps_of_sampled_latencies_are_weighed_by_their_mean():
    """60 % of sampled requests stop cheaply (4 ms), 40 % take more rounds (15 ms): their median
    beats exact's 5.2 ms, their mean (8.4 ms) does not."""
    arms = Arms()
    chosen, sampled = [], 0
    for _ in range(300):
        exact, _ = arms.exact_pays()
        chosen.append(exact)
        if not exact:
            sampled += 1
        arms.add(exact, 5.2 if exact else (4.0 if sampled % 5 < 3 else 15.0))
    later = chosen[100:]
    assert sum(later) >= 0.9 * len(later), sum(later)


def test_the_choice_follows_a_change_in_costs():
    arms = Arms()
    serve(arms, sampled_ms=12.0, exact_ms=10.0, n=100)
    assert arms.exact_pays()[0]
    chosen = serve(arms, sampled_ms=3.0, exact_ms=10.0, n=60)   # e.g. the data grew
    switched = chosen.index(False)                              # the first retry of sampling
    assert switched <= EXPLORE + 1
    assert not any(chosen[switched + 9:])                       # it wins within a few tries, and stays


def test_snapshot_copies_the_arms():
    book = CostBook()
    for _ in range(ARM_MIN):
        book.record_request(False, 5.0)
    snap = book.snapshot()
    book.record_request(True, 1.0)
    assert snap.arms.served == ARM_MIN and book.arms.served == ARM_MIN + 1
    assert list(snap.arms.exact) == [] and list(book.arms.exact) == [1.0]


def test_what_a_start_reads_follows_every_merge():
    book = CostBook()
    assert book.warm_fraction("q") is None and book.typical_matching("q") is None
    for fraction, matching in ((0.1, 1000.0), (0.3, None), (0.2, 3000.0)):
        book.merge(CostLog(finished=[("q", fraction, matching, False)]))
    assert book.warm_fraction("q") == 0.2 and book.typical_matching("q") == 2000.0
    snap = book.snapshot()
    for _ in range(3):
        book.merge(CostLog(finished=[("q", 1.0, None, True)]))   # three requests in a row forced exact
    assert book.sampling_impossible("q") and book.warm_fraction("q") == pytest.approx(0.65)
    assert not snap.sampling_impossible("q") and snap.warm_fraction("q") == 0.2   # the snapshot kept its state
    book.merge(CostLog(finished=[("q", 0.1, 500.0, False)]))
    assert not book.sampling_impossible("q") and book.typical_matching("q") == 1000.0
