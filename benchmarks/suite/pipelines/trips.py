"""trips — NYC-style taxi trips; regress the fare of a new trip.

Features (sql/trips_fare.sql): COUNT and AVG(fare) of pickups in the trip's pickup zone over the
last hour, COUNT of drop-offs in its drop-off zone over the last 30 minutes, plus the trip's own
distance and passengers. Model: gradient-boosted trees.

Data: ``trips`` over 2 days in 16 zones with zone sizes skewed like Manhattan's (zone z gets
weight 1/(z+1)), a daily demand cycle, fares of 3 + 2.5 * miles with a zone- and hour-dependent
surcharge and lognormal noise. Rows are in pickup-time order. 4M rows at scale 1: the busiest
zone's pickup hour holds ~8e4 rows, the median zone ~2e4; scale 10 reaches ~1e6.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
from sklearn.ensemble import GradientBoostingRegressor

from ..spec import BenchPipeline

ROWS = 4_000_000
ZONES = 16
HOURS = 48
REQUESTS = 3000

# uniform [0, 1) from a row number and a stream k < 8 (hash(i * 8 + k): DuckDB's two-argument hash
# is correlated across its second argument); requests number their rows from 2^40, apart from history
U = "((hash({i} * 8 + {k} + {seed}) >> 11) * (1.0 / 9007199254740992))"


def _u(i: str, k: int, seed: int) -> str:
    return U.format(i=i, k=k, seed=seed * 1_000_003)


def generate(con: duckdb.DuckDBPyConnection, scale: float, seed: int) -> None:
    n = max(int(ROWS * scale), 10_000)
    # zone from a skewed draw: inverse of the cumulative 1/(z+1) weights, by a CASE ladder
    cum, ladder = 0.0, []
    total = sum(1.0 / (z + 1) for z in range(ZONES))
    for z in range(ZONES - 1):
        cum += 1.0 / (z + 1) / total
        ladder.append(f"WHEN u0 < {cum!r} THEN {z}")
    zone = f"CASE {' '.join(ladder)} ELSE {ZONES - 1} END"
    con.execute(f"""CREATE OR REPLACE TABLE trips AS
        WITH r AS (SELECT i, {_u('i', 0, seed)} AS u0, {_u('i', 1, seed)} AS u1, {_u('i', 2, seed)} AS u2,
                          {_u('i', 3, seed)} AS u3, {_u('i', 4, seed)} AS u4, {_u('i', 5, seed)} AS u5
                   FROM range({n}) t(i)),
        z AS (SELECT *, ({zone})::INTEGER AS pickup_zone,
                     -- pickup time: row order is time order, with a daily cycle in density
                     {HOURS} * (i / {n}.0) AS h FROM r)
        SELECT pickup_zone,
               ((pickup_zone + 1 + floor(u1 * {ZONES - 1})::INTEGER) % {ZONES})::INTEGER AS dropoff_zone,
               TIMESTAMP '2024-03-04' + to_microseconds((h * 3600e6)::BIGINT) AS pickup_time,
               TIMESTAMP '2024-03-04' + to_microseconds(((h + 0.1 + 0.5 * u2) * 3600e6)::BIGINT) AS dropoff_time,
               round(0.3 + 12 * u2 * u2, 2) AS distance,
               (1 + floor(u3 * 4))::INTEGER AS passengers,
               round(3 + 2.5 * (0.3 + 12 * u2 * u2) + 0.4 * (pickup_zone % 5)
                     + 2 * (1 + sin(2 * pi() * (h % 24) / 24)) + exp(0.4 * (u4 - 0.5) * 2) - 1, 2) AS fare
        FROM z ORDER BY i""")
    # requests: trips after the history (hour 48 onwards is not in the table: the features look back)
    con.execute(f"""CREATE OR REPLACE TABLE trips_fare_requests AS
        WITH r AS (SELECT i, {_u('(i + 1099511627776)', 0, seed)} AS u0, {_u('(i + 1099511627776)', 1, seed)} AS u1, {_u('(i + 1099511627776)', 2, seed)} AS u2,
                          {_u('(i + 1099511627776)', 3, seed)} AS u3, {_u('(i + 1099511627776)', 4, seed)} AS u4, {_u('(i + 1099511627776)', 5, seed)} AS u5
                   FROM range({REQUESTS}) t(i)),
        z AS (SELECT *, ({zone})::INTEGER AS pickup_zone, 2 + ({HOURS} - 4) * u5 AS h FROM r)
        SELECT pickup_zone, ((pickup_zone + 1 + floor(u1 * {ZONES - 1})::INTEGER) % {ZONES})::INTEGER AS dropoff_zone,
               TIMESTAMP '2024-03-04' + to_microseconds((h * 3600e6)::BIGINT) AS pickup_time,
               round(0.3 + 12 * u2 * u2, 2) AS distance, (1 + floor(u3 * 4))::INTEGER AS passengers,
               round(3 + 2.5 * (0.3 + 12 * u2 * u2) + 0.4 * (pickup_zone % 5)
                     + 2 * (1 + sin(2 * pi() * (h % 24) / 24)) + exp(0.4 * (u4 - 0.5) * 2) - 1, 2) AS label
        FROM z ORDER BY i""")


def load(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """Ingest NYC TLC yellow-taxi trip records (the public Parquet or CSV files: tpep_pickup_datetime,
    tpep_dropoff_datetime, passenger_count, trip_distance, PULocationID, DOLocationID, fare_amount)
    into ``trips``; the requests are the file's last 3,000 trips (their own fares are the labels)."""
    path = Path(path)
    reader = "read_parquet" if path.suffix == ".parquet" else "read_csv"
    con.execute(f"""CREATE OR REPLACE TABLE __trips_raw AS
        SELECT PULocationID::INTEGER AS pickup_zone, DOLocationID::INTEGER AS dropoff_zone,
               tpep_pickup_datetime::TIMESTAMP AS pickup_time, tpep_dropoff_datetime::TIMESTAMP AS dropoff_time,
               trip_distance::DOUBLE AS distance, COALESCE(passenger_count, 1)::INTEGER AS passengers,
               fare_amount::DOUBLE AS fare
        FROM {reader}(?) WHERE fare_amount > 0 AND trip_distance > 0 ORDER BY pickup_time""", [str(path)])
    n = con.execute("SELECT count(*) FROM __trips_raw").fetchall()[0][0]
    cut = max(n - REQUESTS, 0)
    con.execute(f"CREATE OR REPLACE TABLE trips AS SELECT * FROM __trips_raw LIMIT {cut}")
    con.execute(f"""CREATE OR REPLACE TABLE trips_fare_requests AS SELECT pickup_zone, dropoff_zone, pickup_time,
        distance, passengers, fare AS label FROM __trips_raw OFFSET {cut}""")
    con.execute("DROP TABLE __trips_raw")


PIPELINE = BenchPipeline(
    name="trips_fare", task="regression", table="trips", by=("pickup_zone", "date_trunc('hour', pickup_time)"), order=("pickup_zone", "pickup_time"),
    generate=generate, load=load, file_format="NYC TLC trip records (Parquet or CSV)",
    make_model=lambda: GradientBoostingRegressor(n_estimators=150, max_depth=3, learning_rate=0.1, random_state=0),
    rows_per_request="pickups of one zone in one hour: ~2e4 (median zone) to ~8e4 at scale 1, x scale",
    description=__doc__.splitlines()[0])
