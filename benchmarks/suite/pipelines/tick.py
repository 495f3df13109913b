"""tick — currency ticks; regress a pair's average bid over the next hour.

Features (sql/tick_price.sql): AVG(bid) of the pair's ticks in the current hour so far (from the raw
``ticks``), plus its six previous hourly averages looked up in the hourly table ``tick_hours``.
Model: linear regression.

Data: one trading day (2019-01-09, UTC) of top-of-book quotes for six USD pairs at their January
2019 levels (JPY pairs are left out so that one delta, in price units, fits every pair). Each pair's
mid price is a random walk of hourly log-increments with a little momentum (MA(1)), whose
volatility follows the trading sessions (Tokyo, London, New York); inside an hour it is a Brownian
bridge between the hour's endpoints (three Karhunen-Loeve terms) plus quote noise. Bid and ask
straddle it with a pair-specific, jittering spread and are rounded to 5 decimals like TrueFX
quotes. Tick counts are skewed across pairs (EUR/USD 34 % of all ticks, NZD/USD 9 %) and follow the
sessions (the London/New York overlap ~4x the late-evening lull). ``ticks`` is in time order;
``tick_hours`` is its hourly GROUP BY. Requests come at a uniform point of hours 6-23 (so all six
previous hours exist), on pairs as busy as their ticks and in hours as busy as the sessions, in
random order like trips' (on one day, a train/serve split by time would ask a linear model to
extrapolate the morning's drift into the evening); the label is the latent mean bid of the next
hour plus a 0.1-pip noise. 1.7e7 ticks at scale 1.
"""
from __future__ import annotations

import math
from pathlib import Path

import duckdb
from sklearn.linear_model import LinearRegression

from ..spec import BenchPipeline

START = "2019-01-09 00:00:00"
HOURS = 24                   # hours of ticks; the latent walk runs one hour further (the last label)
LAGS = 6                     # hourly lookups: requests start at hour LAGS
TICKS_PER_HOUR = 720_000     # all pairs together, in an average hour, at scale 1
MIN_TICKS_PER_HOUR = 20_480  # so that tiny scales still have ticks before every request
BLOCK = 1024
REQUESTS = 3000
# pair, mid level, share of ticks, mean spread, hourly volatility of log-price
PAIRS = (
    ("EUR/USD", 1.1450, 0.34, 0.00003, 0.0009),
    ("GBP/USD", 1.2720, 0.20, 0.00008, 0.0012),
    ("AUD/USD", 0.7120, 0.14, 0.00005, 0.0011),
    ("USD/CAD", 1.3420, 0.12, 0.00008, 0.0009),
    ("USD/CHF", 0.9850, 0.11, 0.00008, 0.0008),
    ("NZD/USD", 0.6780, 0.09, 0.00012, 0.0012),
)

# uniform [0, 1) from a row number and a stream k < 32 (hash(i * 32 + k): DuckDB's two-argument hash
# is correlated across its second argument)
U = "((hash(({i}) * 32 + {k} + {seed}) >> 11) * (1.0 / 9007199254740992))"


def _u(i: str, k: int, seed: int) -> str:
    return U.format(i=i, k=k, seed=seed * 1_000_003)


def _normal(a: str, b: str, trig: str = "cos") -> str:
    """A standard normal from two uniforms (Box-Muller; cos and sin give two independent ones)."""
    return f"(sqrt(-2 * ln(1 - {a})) * {trig}(2 * pi() * {b}))"


def _ladder(u: str, weights) -> str:
    """Index k with probability weights[k] / sum(weights), by a CASE ladder over cumulative weights."""
    total, cum, ladder = sum(weights), 0.0, []
    for k, w in enumerate(weights[:-1]):
        cum += w / total
        ladder.append(f"WHEN {u} < {cum!r} THEN {k}")
    return f"CASE {' '.join(ladder)} ELSE {len(weights) - 1} END"


def _session() -> list[float]:
    """Tick intensity by UTC hour: a floor plus Tokyo, London and New York bumps, mean 1."""
    raw = [0.35 + 0.45 * math.exp(-((h - 2) / 2.5) ** 2) + 0.9 * math.exp(-((h - 9) / 2.5) ** 2)
           + 1.1 * math.exp(-((h - 14.5) / 2.5) ** 2) for h in range(24)]
    return [r * 24 / sum(raw) for r in raw]


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    session = _session()
    pairs = ", ".join(f"({k}, '{p[0]}', {p[1]!r}, {p[3]!r}, {p[4]!r})" for k, p in enumerate(PAIRS))
    hours = ", ".join(f"({h}, {session[h % 24]!r})" for h in range(HOURS + 1))
    # one row per pair and hour (one more hour than the ticks: the last requests' labels): the
    # latent walk, its bridge coefficients and the hour's mean bid
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __tick_latent AS
        WITH p AS (SELECT * FROM (VALUES {pairs}) v(pid, pair, level, spread, vol)),
        g AS (SELECT p.*, s.h, s.s, p.pid * 64 + s.h AS i FROM p, (VALUES {hours}) s(h, s)),
        u AS (SELECT *, {_u('i', 0, seed)} AS u0, {_u('i', 1, seed)} AS u1, {_u('i', 2, seed)} AS u2,
                        {_u('i', 3, seed)} AS u3 FROM g),
        n AS (SELECT *, {_normal('u0', 'u1')} AS e, {_normal('u0', 'u1', 'sin')} AS z1,
                        {_normal('u2', 'u3')} AS z2, {_normal('u2', 'u3', 'sin')} AS z3,
                        vol * sqrt(s) AS amp FROM u),
        w AS (SELECT *, amp * (e + 0.3 * coalesce(lag(e) OVER (PARTITION BY pid ORDER BY h), 0)) AS inc FROM n),
        lv AS (SELECT *, level * exp(coalesce(sum(inc) OVER (PARTITION BY pid ORDER BY h
                          ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)) AS l0 FROM w)
        SELECT pid, pair, h, spread, amp, z1, z2, z3, l0, l0 * exp(inc) AS l1,
               -- the hour's mean bid: the bridge's mean (only odd sine terms average to non-zero)
               (l0 + l0 * exp(inc)) / 2 + l0 * amp * sqrt(2) * (z1 * 2 / pow(pi(), 2) + z3 * 2 / (9 * pow(pi(), 2)))
                   - spread / 2 AS hour_bid
        FROM lv""")
    # ticks per hour, in whole blocks of BLOCK rows, so that a tick's row number finds its hour by
    # an equality join (which keeps range()'s order: the table comes out in time order, unsorted)
    con.execute(f"""CREATE OR REPLACE TEMP TABLE __tick_blocks AS
        WITH c AS (SELECT h, greatest(round({TICKS_PER_HOUR * scale / BLOCK!r} * s * (0.9 + 0.2 * {_u('h', 5, seed)})),
                                      {MIN_TICKS_PER_HOUR // BLOCK})::BIGINT * {BLOCK} AS n
                   FROM (VALUES {hours}) s(h, s) WHERE h < {HOURS}),
        o AS (SELECT *, coalesce(sum(n) OVER (ORDER BY h ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS off
              FROM c)
        SELECT o.h, o.n, o.off, o.off // {BLOCK} + r.b AS block FROM o, range(o.n // {BLOCK}) r(b)""")
    total = con.execute("SELECT max(off + n) FROM __tick_blocks").fetchall()[0][0]
    con.execute(f"""CREATE OR REPLACE TABLE ticks AS
        WITH r AS (SELECT i, {_u('i', 8, seed)} AS u8, {_u('i', 9, seed)} AS u9 FROM range({total}) g(i)),
        t AS (SELECT i, b.h, (i - b.off + u8) / b.n AS x, ({_ladder('u9', [p[2] for p in PAIRS])}) AS pid
              FROM r JOIN __tick_blocks b ON b.block = i // {BLOCK}),
        b AS (SELECT t.*, sin(pi() * t.x) AS s1, cos(pi() * t.x) AS c1 FROM t),
        m AS (SELECT l.pair, b.h, b.x,
                     -- sin(2 pi x) = 2 s1 c1, sin(3 pi x) = s1 (3 - 4 s1^2)
                     l.l0 + (l.l1 - l.l0) * b.x
                        + l.l0 * l.amp * sqrt(2) / pi() * b.s1 * (l.z1 + l.z2 * b.c1 + l.z3 * (3 - 4 * b.s1 * b.s1) / 3)
                        + 0.00004 * ({_u('b.i', 10, seed)} - 0.5) AS mid,
                     l.spread * (0.7 + 0.6 * {_u('b.i', 11, seed)}) AS sp
              FROM b JOIN __tick_latent l ON l.pid = b.pid AND l.h = b.h)
        SELECT pair, TIMESTAMP '{START}' + to_microseconds(((h + x) * 3600e6)::BIGINT) AS ts,
               -- to 5 decimals (a cast to BIGINT rounds to nearest, and costs less than round())
               ((mid - sp / 2) * 1e5)::BIGINT / 1e5 AS bid, ((mid + sp / 2) * 1e5)::BIGINT / 1e5 AS ask
        FROM m""")
    _hours(con)
    # requests: pairs as busy as their ticks, hours as busy as the sessions (from hour LAGS on)
    req_hour = f"{LAGS} + ({_ladder('u1', session[LAGS:HOURS])})"
    con.execute(f"""CREATE OR REPLACE TABLE tick_price_requests AS
        WITH r AS (SELECT i, {_u('i', 16, seed)} AS u0, {_u('i', 17, seed)} AS u1, {_u('i', 18, seed)} AS u2,
                          {_u('i', 19, seed)} AS u3, {_u('i', 20, seed)} AS u4 FROM range({REQUESTS}) t(i)),
        z AS (SELECT i, ({_ladder('u0', [p[2] for p in PAIRS])}) AS pid, {req_hour} AS h,
                     0.02 + 0.98 * u2 AS f, {_normal('u3', 'u4')} AS eps FROM r)
        SELECT l.pair, TIMESTAMP '{START}' + to_microseconds(((z.h + z.f) * 3600e6)::BIGINT) AS ts,
               l.hour_bid + 0.00001 * z.eps AS label
        FROM z JOIN __tick_latent l ON l.pid = z.pid AND l.h = z.h + 1
        ORDER BY z.i""")
    con.execute("DROP TABLE __tick_latent")
    con.execute("DROP TABLE __tick_blocks")


def _hours(con: duckdb.DuckDBPyConnection) -> None:
    """``tick_hours``: the hourly feature table, one row per pair and hour."""
    con.execute("""CREATE OR REPLACE TABLE tick_hours AS
        SELECT pair, date_trunc('hour', ts) AS hour, AVG(bid) AS avg_bid, AVG(ask) AS avg_ask, COUNT(*) AS ticks
        FROM ticks GROUP BY ALL ORDER BY pair, hour""")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest TrueFX tick files (the free monthly downloads, e.g. ``EURUSD-2019-01.csv``: no header,
    ``EUR/USD,20190102 00:00:00.123,1.14612,1.14618`` = pair, UTC time to the millisecond, bid, ask)
    into ``ticks`` and ``tick_hours``. ``path`` is one file, a folder of them or a glob. Requests:
    up to 3,000 pair-hours that have ticks in all six previous hours and in the next one, at a
    point of the hour after its first tick, in time order; the label is the next hour's real
    average bid."""
    path = Path(path)
    pattern = str(path / "*.csv") if path.is_dir() else str(path)
    con.execute("""CREATE OR REPLACE TABLE ticks AS
        SELECT pair, strptime(ts, '%Y%m%d %H:%M:%S.%g') AS ts, bid, ask
        FROM read_csv(?, header = false, delim = ',',
                      columns = {'pair': 'VARCHAR', 'ts': 'VARCHAR', 'bid': 'DOUBLE', 'ask': 'DOUBLE'})
        WHERE bid > 0 AND ask > 0 ORDER BY ts, pair""", [pattern])
    _hours(con)
    con.execute(f"""CREATE OR REPLACE TABLE tick_price_requests AS
        WITH first AS (SELECT pair, date_trunc('hour', ts) AS hour, min(ts) AS first_ts FROM ticks GROUP BY ALL),
        lagged AS (SELECT *, count(*) OVER (PARTITION BY pair ORDER BY hour RANGE BETWEEN INTERVAL {LAGS} HOUR
                                                PRECEDING AND INTERVAL 1 HOUR PRECEDING) AS lags FROM tick_hours),
        ok AS (SELECT h.pair, h.hour, f.first_ts, nxt.avg_bid AS label
               FROM lagged h JOIN first f USING (pair, hour)
               JOIN tick_hours nxt ON nxt.pair = h.pair AND nxt.hour = h.hour + INTERVAL 1 HOUR
               WHERE h.lags = {LAGS}),
        pick AS (SELECT *, hash(pair, hour) AS k FROM ok ORDER BY k LIMIT {REQUESTS})
        SELECT pair,
               first_ts + to_microseconds(1 + ((hash(k) >> 11) * (1.0 / 9007199254740992)
                   * (epoch_us(hour + INTERVAL 1 HOUR) - epoch_us(first_ts) - 1))::BIGINT) AS ts,
               label
        FROM pick ORDER BY ts, pair""")


PIPELINE = BenchPipeline(
    name="tick_price", task="regression", table="ticks", by=("pair", "date_trunc('hour', ts)"), order=("pair", "ts"),
    generate=generate, load=load, file_format="TrueFX tick CSV (pair,yyyyMMdd HH:mm:ss.SSS,bid,ask; no header)",
    make_model=lambda: LinearRegression(),
    rows_per_request="ticks of one pair in the current hour so far: mean ~1e5 at scale 1 "
                     "(~1.5e3 to ~4.5e5 by pair, session and minute), x scale",
    description=__doc__.splitlines()[0])
