"""What a feature query costs, learned online, where recent requests finished, and what whole
requests cost sampled against computed exactly at once.

Both are shared by every request of a pipeline (and by threads), so each update takes a lock.
"""
from __future__ import annotations

import statistics
import threading
from collections import deque
from dataclasses import dataclass, field


@dataclass
class CostLog:
    """What one request observed: (query, rows, ms) per sampling run and exact run, and
    (query, final fraction, matching rows, forced exact) per query."""

    sampling: list = field(default_factory=list)
    exact: list = field(default_factory=list)
    finished: list = field(default_factory=list)
    matching: list = field(default_factory=list)   # (query, matching rows) known for exact runs
    started: list = field(default_factory=list)    # (query, started exact because exact was predicted cheaper)


@dataclass
class LinearCost:
    """time_ms = overhead + slope * rows, fitted by least squares over all observations."""

    prior_overhead: float
    prior_slope: float
    n: int = 0
    sx: float = 0.0
    sy: float = 0.0
    sxx: float = 0.0
    sxy: float = 0.0

    def add(self, rows: float, ms: float) -> None:
        self.n += 1
        self.sx += rows
        self.sy += ms
        self.sxx += rows * rows
        self.sxy += rows * ms

    def fit(self) -> tuple[float, float]:
        """(overhead ms, ms per row); the prior until two distinct sizes were seen."""
        if self.n == 0:
            return self.prior_overhead, self.prior_slope
        var = self.sxx - self.sx * self.sx / self.n
        if self.n < 2 or var <= 1e-9 * max(self.sxx, 1.0):
            mean_x, mean_y = self.sx / self.n, self.sy / self.n
            slope = self.prior_slope
            return max(mean_y - slope * mean_x, 0.0), slope
        slope = max((self.sxy - self.sx * self.sy / self.n) / var, 0.0)
        return max((self.sy - slope * self.sx) / self.n, 0.0), slope

    def predict(self, rows: float) -> float:
        overhead, slope = self.fit()
        return overhead + slope * rows

    def copy(self) -> "LinearCost":
        # the constructor, not copy.copy: every request snapshots these (9 us each through __reduce_ex__)
        return LinearCost(self.prior_overhead, self.prior_slope, self.n, self.sx, self.sy, self.sxx, self.sxy)


@dataclass
class OnlineCost(LinearCost):
    """A statement's cost learned while serving: all observations but the first, once there is a
    second. A pipeline's first statement of a kind pays one-time costs (the copy check's worker
    thread started, caches filled: 6.8 ms against 2.5 for the next read of 2,000 rows on the
    vibration segments), and a fit without decay would carry them for good."""

    alone: bool = False   # the sums hold only the first observation, which the next one replaces

    def add(self, rows: float, ms: float) -> None:
        if self.alone:
            self.n, self.sx, self.sy, self.sxx, self.sxy, self.alone = 0, 0.0, 0.0, 0.0, 0.0, False
        elif self.n == 0:
            self.alone = True
        super().add(rows, ms)

    def copy(self) -> "OnlineCost":
        return OnlineCost(self.prior_overhead, self.prior_slope, self.n, self.sx, self.sy, self.sxx, self.sxy,
                          self.alone)


@dataclass
class QueryCosts:
    """Sampling cost against rows sampled, exact cost against matching rows, recent final fractions."""

    sampling: OnlineCost = field(default_factory=lambda: OnlineCost(0.5, 1e-5))
    exact: OnlineCost = field(default_factory=lambda: OnlineCost(0.5, 2e-5))
    finished: deque = field(default_factory=lambda: deque(maxlen=64))
    matching: deque = field(default_factory=lambda: deque(maxlen=64))
    forced: deque = field(default_factory=lambda: deque(maxlen=8))   # finished exact because sampling could not
    # what every request's start reads, kept up to date by ``CostBook.merge`` instead of being
    # recomputed per request (two medians of 64 values per query were a third of an exact request's overhead)
    warm: float | None = None
    typical: float | None = None
    impossible: bool = False
    exact_on_cost: int = 0   # requests in a row that started this query exact on predicted cost

    def copy(self) -> "QueryCosts":
        return QueryCosts(self.sampling.copy(), self.exact.copy(), deque(self.finished, 64), deque(self.matching, 64),
                          deque(self.forced, 8), self.warm, self.typical, self.impossible, self.exact_on_cost)

    def summarize(self, matching_changed: bool) -> None:
        self.warm = statistics.median(self.finished) if len(self.finished) >= 3 else None
        if matching_changed:
            self.typical = statistics.median(self.matching) if self.matching else None
        recent = list(self.forced)[-3:]
        self.impossible = len(recent) == 3 and all(recent)



ARM_DECAY = 0.985  # each request served weighs older latencies down: half after 46 requests, about the
                   # last 67 in all. Over 16, one sampled request of many rounds (15 ms among 3 ms ones,
                   # on the vibration segments) lifted the mean past exact's (58 % exact at once; over 64: 4 %)
ARM_BONUS = 1.0    # spreads over sqrt(weight) a way's mean is lowered by when the ways are compared
ARM_MIN = 5        # sampled requests seen before exact-at-once is tried against them
EXPLORE = 32       # the losing way is tried again once in this many requests,
FAR = 2.0          # or once in FAR_EXPLORE while its mean is over FAR times the winner's: each try
FAR_EXPLORE = 128  # then costs a request several times its latency (trips: p99 2.7 to 8.6 ms at 32)
ARM_WARMUP = 10    # a pipeline's first requests teach costs but not the ways (see Arms.add)


@dataclass
class Way:
    """One way of serving's recent latencies, as sums discounted by ARM_DECAY per request served."""

    n: int = 0           # latencies recorded in all
    weight: float = 0.0
    total: float = 0.0
    squares: float = 0.0

    def decay(self) -> None:
        if self.weight < 1e-6:   # only ratios matter; a way left untried for ~900 requests must not
            return               # underflow to 0 / 0 (requests forced exact never try sampling)
        self.weight *= ARM_DECAY
        self.total *= ARM_DECAY
        self.squares *= ARM_DECAY

    def add(self, ms: float) -> None:
        self.n += 1
        self.weight += 1.0
        self.total += ms
        self.squares += ms * ms

    def mean(self) -> float:
        return self.total / self.weight

    def copy(self) -> "Way":
        return Way(self.n, self.weight, self.total, self.squares)

    def hopeful(self) -> float:
        """The mean less a bonus of ARM_BONUS spreads over the square root of the discounted weight:
        what the way may well cost. About 1.4 standard errors while the latencies are fresh
        (the weights' effective count is twice their sum), more as they age (discounted UCB)."""
        mean = self.mean()
        spread = max(self.squares / self.weight - mean * mean, 0.0) ** 0.5
        return mean - ARM_BONUS * spread / self.weight ** 0.5


@dataclass
class Arms:
    """End-to-end latencies of recent requests served by sampling and exactly at once. Per-query
    costs predict one statement; only whole requests show what the extra rounds, the falls back
    to exact and the controller itself cost, so they decide whether sampling pays at all.

    The ways are compared by mean, not median. Sampled latencies are two humps: requests that
    stop after one cheap round, and requests that take more rounds or end exact. On turbofan at
    8.4e4 rows they were about 4 ms and 13-20 ms. Once the cheap ones were a little over half,
    the median said sampling beat exact's 5 ms, and 27 % of a run's requests were sampled. Its
    median latency rose 30 %.

    A way's mean is the hopeful one, lowered by a bonus that grows with its spread and with the
    age of its latencies (a lower confidence bound, as in discounted UCB bandits), over latencies
    discounted by age. Plain means of each way's last 64
    latencies let a cluster of hard requests early on lock sampling out: on battery at scale 1
    sampling's mean stood at 13.5 ms after 16 requests, exact's at 11; the losing way, tried once
    in 32 requests, kept those 16 for over a hundred requests while exact ran at 9.2 ms and
    sampling's later requests averaged 7.3 (88 % of the run exact at once). The loser's few, old,
    spread latencies now count for less than its fresh ones and leave a wide bound."""

    sampled: Way = field(default_factory=Way)
    exact: Way = field(default_factory=Way)
    since_loser: int = 0       # requests served since the losing way was last tried
    served: int = 0            # requests recorded in all

    def copy(self) -> "Arms":
        return Arms(self.sampled.copy(), self.exact.copy(), self.since_loser, self.served)

    @property
    def means(self) -> tuple[float, float] | None:
        """(sampled, exact) once both ways have enough requests."""
        return (self.sampled.mean(), self.exact.mean()) if self._enough() else None

    @property
    def hopeful(self) -> tuple[float, float] | None:
        """The same, less each way's bonus: these choose."""
        return (self.sampled.hopeful(), self.exact.hopeful()) if self._enough() else None

    def _enough(self) -> bool:
        return self.sampled.n >= ARM_MIN and self.exact.n >= 3

    def exact_pays(self) -> tuple[bool, str]:
        """Whether to serve the next request exactly at once, and why (empty: no evidence yet)."""
        if self.sampled.n < ARM_MIN:
            return False, ""
        if not self._enough():
            return True, "exact at once is being tried against sampling"
        (s, e), (hs, he) = self.means, self.hopeful
        explore = self.since_loser >= (EXPLORE if max(s, e) < FAR * min(s, e) else FAR_EXPLORE)
        return self._exact_wins() != explore, (
            f"recent requests took a mean {e:.2f} ms exact at once against {s:.2f} ms sampled "
            f"(at best {he:.2f} against {hs:.2f})" + ("; the other way is tried again" if explore else ""))

    def _exact_wins(self) -> bool | None:
        """Whether exact at once is the winner: the lower hopeful mean (None: not enough requests)."""
        hopeful = self.hopeful
        return None if hopeful is None else hopeful[1] < hopeful[0]

    def add(self, exact: bool, ms: float) -> None:
        self.served += 1
        if self.served <= ARM_WARMUP:   # a pipeline's first requests pay one-time costs, not their way's:
            return   # the model's first run (22 ms on the vibration segments' MLP), cold slices, costs not
                     # yet learned. Counted, they kept battery's stratified copy exact at once for 93 % of
                     # a run (the sampling way's few early means stayed high while it was rarely retried):
                     # median 8.61 ms against Biathlon's 5.69; without the first ten, 4.37 against 4.69
        hopeful, was = self.hopeful, self._exact_wins()
        if was is not None and exact != was:   # the losing way was tried: while it beats what the
            self.since_loser = FAR_EXPLORE if ms < hopeful[0 if exact else 1] else 0   # winner may cost, again
        else:
            self.since_loser += 1
        self.sampled.decay()
        self.exact.decay()
        (self.exact if exact else self.sampled).add(ms)
        if was is not None and self._exact_wins() != was:
            self.since_loser = 0   # a new winner is served before the other way is tried again


class CostBook:
    """Per-query costs and warm-start memory of one pipeline.

    A request plans from a ``snapshot`` taken when it starts and hands what it learned back with
    ``merge`` when it ends: its choices never depend on timings measured while it ran, so the same
    request, seed and pipeline state give the same result."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queries: dict[str, QueryCosts] = {}
        self.arms = Arms()

    def snapshot(self) -> "CostBook":
        copy = CostBook()
        with self._lock:
            copy._queries = {name: q.copy() for name, q in self._queries.items()}
            copy.arms = self.arms.copy()
        return copy

    def record_request(self, exact_at_once: bool, ms: float) -> None:
        """A request served alone ended: how it was served and its latency."""
        with self._lock:
            self.arms.add(exact_at_once, ms)

    def merge(self, log: "CostLog") -> None:
        """Add one request's observations."""
        with self._lock:
            for query, rows, ms in log.sampling:
                self._get(query).sampling.add(rows, ms)
            for query, matching, ms in log.exact:
                self._get(query).exact.add(matching, ms)
            for query, fraction, matching, forced in log.finished:
                q = self._get(query)
                q.finished.append(fraction)
                q.forced.append(forced)
                if matching is not None:
                    q.matching.append(matching)
            for query, on_cost in log.started:
                q = self._get(query)
                q.exact_on_cost = q.exact_on_cost + 1 if on_cost else 0
            with_matching = {query for query, _, matching, _ in log.finished if matching is not None}
            for query in {query for query, *_ in log.finished}:
                self._queries[query].summarize(query in with_matching)

    def _get(self, query: str) -> QueryCosts:
        q = self._queries.get(query)
        if q is None:   # not setdefault: building the default on every call cost ~20 us a request
            q = self._queries[query] = QueryCosts()
        return q

    def sampling_ms(self, query: str, rows: float) -> float:
        with self._lock:
            return self._get(query).sampling.predict(rows)

    def sampling_fit(self, query: str) -> tuple[float, float]:
        """(overhead ms, ms per sampled row) of the query's sampling cost."""
        with self._lock:
            return self._get(query).sampling.fit()

    def exact_ms(self, query: str, matching: float) -> float:
        """Predicted cost of the exact query. Until one was timed, it is the sampling model's
        overhead plus reading every matching row at no less than the sampling cost per row."""
        with self._lock:
            q = self._get(query)
            if q.exact.n:
                return q.exact.predict(matching)
            overhead, slope = q.sampling.fit()
            return overhead + max(slope, q.exact.prior_slope) * matching

    def warm_fraction(self, query: str) -> float | None:
        """The median fraction recent requests finished at, or None without history."""
        with self._lock:
            return self._get(query).warm

    def sampling_due(self, query: str) -> bool:
        """Whether this query, started exact on predicted cost by the last ``EXPLORE`` requests,
        should be sampled once more. Exact starts teach the sampling cost nothing, so one costly
        early read (a cold first statement: 5.7 ms against 3.0 for the next on the vibration
        segments) otherwise kept the query exact for good."""
        with self._lock:
            return self._get(query).exact_on_cost >= EXPLORE

    def sampling_impossible(self, query: str) -> bool:
        """The last few requests all had to compute this query exactly (stale copy, rows in too
        few blocks): start it exact."""
        with self._lock:
            return self._get(query).impossible

    def typical_matching(self, query: str) -> float | None:
        """The median of the matching rows recent requests saw, or None without history."""
        with self._lock:
            return self._get(query).typical
