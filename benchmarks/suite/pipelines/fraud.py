"""fraud — TalkingData-style mobile ad clicks; classify whether a click leads to an app download.

Features (sql/fraud_click.sql): COUNT of the clicking IP's clicks over the last day, of its clicks
on the same app, and on the same app from the same OS (three aggregate queries over ``clicks``),
plus the click's own app, OS and hour. Model: gradient-boosted trees.

Data: ``clicks`` over 3 days (from 2017-11-06 16:00 UTC, midnight in China, like the original)
with a daily cycle (4x busier at midday than at night). IPs are heavy-tailed: 16 "big" IPs
(carrier gateways and click farms) send 80 % of the clicks, Zipf-like among themselves (the
busiest ~20 % of all clicks, the 16th ~1.7 %); 60,000 small IPs share the rest log-uniformly.
Each IP has a latent bot share: its bot clicks all hit one favourite app from one favourite OS and
almost never convert; its human clicks pick apps and OSes log-uniformly (app 1 most popular) and
convert with a probability rising steeply for rarer apps, lower behind big IPs, with a daily
cycle. About 6 % of clicks are attributed. Requests are new clicks drawn from the same model at
times with a full day of history behind them. Rows are in click-time order. 6M rows at scale 1:
a request from a big IP (4 in 5) matches ~3e4 to ~4e5 same-IP clicks of the last day (median
request ~9e4); x scale.
"""
from __future__ import annotations

import math
from pathlib import Path

import duckdb
from sklearn.ensemble import GradientBoostingClassifier

from ..spec import BenchPipeline

ROWS = 6_000_000
DAYS = 3
START = "2017-11-06 16:00:00"
HEAVY = 16                # big IPs
HEAVY_SHARE = 0.8         # of all clicks
TAIL = 60_000             # small IPs
APPS = 400
OSES = 300
REQUESTS = 3000
CYCLE = 0.6               # daily cycle: density ~ 1 / (1 + CYCLE cos(2 pi day))

# Uniform [0, 1) from a row number i and a stream k < 8, as in trips.py but hashed twice, and with
# each table and seed on its own range of row numbers so streams never overlap.
_TABLE = {"clicks": 0, "requests": 1, "ip": 2}


def _u(i: str, k: int, seed: int, table: str) -> str:
    base = seed * 2**36 + _TABLE[table] * 2**32
    return f"((hash(hash(({i} + {base}) * 8 + {k})) >> 11) * (1.0 / 9007199254740992))"


def _ip(u: str) -> str:
    """Click IP from a uniform: big IPs (ids 1..120000) by rank log-uniformly, else a small IP."""
    heavy = f"floor(pow({HEAVY + 1}, {u} / {HEAVY_SHARE}))::BIGINT - 1"
    tail = f"floor(pow({TAIL + 1}, ({u} - {HEAVY_SHARE}) / {1 - HEAVY_SHARE}))::BIGINT - 1"
    return (f"(CASE WHEN {u} < {HEAVY_SHARE} THEN 1 + (({heavy}) * 7919 + 5347) % 120000 "
            f"ELSE 120001 + (LEAST({tail}, {TAIL - 1}) * 40507) % {TAIL} END)::INTEGER")


def _skewed(u: str, n: int) -> str:
    """Ids 1..n-1, log-uniform: id 1 most frequent (the popular app / OS)."""
    return f"LEAST(floor(pow({n}, {u}))::INTEGER, {n - 1})"


def _ip_latents(seed: int) -> str:
    """Select list of an IP's latents (column ip): bot share, favourite app and OS, big or not."""
    return (f"ip <= 120000 AS big, "
            f"CASE WHEN ip <= 120000 THEN 0.95 * {_u('ip', 0, seed, 'ip')} "
            f"ELSE 0.5 * pow({_u('ip', 0, seed, 'ip')}, 3) END AS bot_share, "
            f"{_skewed(_u('ip', 1, seed, 'ip'), APPS)} AS fav_app, {_skewed(_u('ip', 2, seed, 'ip'), OSES)} AS fav_os")


def _conversion(bot: str, app: str, big: str, day: str) -> str:
    """Probability that a click converts: bots almost never; humans more on rare apps."""
    hour_effect = f"0.5 * cos(2 * pi() * ({day} - 0.55))"   # peak in the Chinese afternoon
    human = (f"-5.3 + 9.0 * pow(ln({app}) / ln({APPS}), 4) - 0.7 * {big}::INTEGER + {hour_effect}")
    return f"(CASE WHEN {bot} THEN 0.001 ELSE 1 / (1 + exp(-({human}))) END)"


def _when(x: str) -> str:
    """Warped time (days) of a position x in days: monotone, night clicks sparser."""
    return f"({x} + {CYCLE / (2 * math.pi)!r} * sin(2 * pi() * {x}))"


def _clicks_sql(source: str, seed: int, table: str, x: str) -> str:
    """The click model over rows of ``source`` (column i); x: the position in days."""
    u = lambda k: _u("i", k, seed, table)   # noqa: E731
    return f"""
        WITH r AS (SELECT i, {u(0)} AS u0, {u(1)} AS u1, {u(2)} AS u2, {u(3)} AS u3, {u(4)} AS u4,
                          {u(5)} AS u5, {u(6)} AS u6, {u(7)} AS u7 FROM {source}),
        c AS (SELECT *, {_ip('u0')} AS ip, {_when(x)} AS day FROM r),
        l AS (SELECT c.*, {_ip_latents(seed)} FROM c),
        b AS (SELECT *, u1 < bot_share AS bot FROM l),
        a AS (SELECT *, CASE WHEN bot THEN fav_app ELSE {_skewed('u2', APPS)} END AS app,
                        CASE WHEN bot THEN fav_os ELSE {_skewed('u3', OSES)} END AS os FROM b)
        SELECT *, (u4 < {_conversion('bot', 'app', 'big', 'day')})::INTEGER AS converted,
               TIMESTAMP '{START}' + to_microseconds((day * 86400e6)::BIGINT) AS click_time FROM a"""


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    n = max(int(ROWS * scale), 10_000)
    body = _clicks_sql(f"range({n}) t(i)", seed, "clicks", f"{DAYS} * (i / {n}.0)")
    con.execute(f"""CREATE OR REPLACE TABLE clicks AS
        SELECT ip, app,
               (CASE WHEN bot OR u5 < 0.94 THEN 1 WHEN u5 < 0.985 THEN 2 WHEN u5 < 0.995 THEN 0 ELSE 3032 END
                )::INTEGER AS device,
               os, (100 + floor(pow(400, u6)))::INTEGER AS channel, click_time,
               CASE WHEN converted = 1 THEN click_time + to_microseconds(((30 + 7200 * pow(u7, 3)) * 1e6)::BIGINT) END
                   AS attributed_time,
               converted AS is_attributed
        FROM ({body}) ORDER BY i""")
    # requests: new clicks at times from day 1 on (a full day of history behind each), same model
    body = _clicks_sql(f"range({REQUESTS}) t(i)", seed, "requests", f"(1 + {DAYS - 1} * u5)")
    con.execute(f"""CREATE OR REPLACE TABLE fraud_click_requests AS
        SELECT ip, app, os, click_time, converted AS label FROM ({body}) ORDER BY i""")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest TalkingData AdTracking ``train.csv`` (or ``train_sample.csv``): header
    ``ip,app,device,os,channel,click_time,attributed_time,is_attributed``, times as
    ``2017-11-06 14:32:21``, attributed_time empty unless the click converted. ``clicks`` gets every
    click but the file's last 3,000 by click time (the last tenth of a file under 30,000 clicks);
    those are the requests, labelled by their own ``is_attributed``."""
    con.execute("""CREATE OR REPLACE TABLE __clicks_raw AS
        SELECT ip, app, device, os, channel, click_time, attributed_time, is_attributed
        FROM read_csv(?, header = true, delim = ',', nullstr = '',
                      columns = {'ip': 'INTEGER', 'app': 'INTEGER', 'device': 'INTEGER', 'os': 'INTEGER',
                                 'channel': 'INTEGER', 'click_time': 'TIMESTAMP', 'attributed_time': 'TIMESTAMP',
                                 'is_attributed': 'INTEGER'})
        ORDER BY click_time, ip, app, device, os, channel, is_attributed""", [str(Path(path))])
    n = con.execute("SELECT count(*) FROM __clicks_raw").fetchall()[0][0]
    cut = n - min(REQUESTS, max(n // 10, 1))
    con.execute(f"CREATE OR REPLACE TABLE clicks AS SELECT * FROM __clicks_raw LIMIT {cut}")
    con.execute(f"""CREATE OR REPLACE TABLE fraud_click_requests AS
        SELECT ip, app, os, click_time, is_attributed AS label FROM __clicks_raw OFFSET {cut}""")
    con.execute("DROP TABLE __clicks_raw")


PIPELINE = BenchPipeline(
    name="fraud_click", task="classification", table="clicks", by=("ip",), order=("ip", "click_time"),
    generate=generate, load=load, file_format="TalkingData AdTracking train.csv",
    make_model=lambda: GradientBoostingClassifier(n_estimators=100, max_depth=3, learning_rate=0.05, random_state=0),
    rows_per_request="same-IP clicks of the last day: median ~9e4, mean ~1.4e5 at scale 1 (big IPs ~3e4 to "
                     "~4e5; the fifth of requests from small IPs match a few to ~1e3), x scale",
    description=__doc__.splitlines()[0])
